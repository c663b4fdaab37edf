"""Benchmark 1, SMTP ingest end to end: relay → listener → intake → processing → outbox → smarthost.

The daemon runs as `python -m mail2ticket run` with `smtp_out.delivery = "smtp"` to a capturing aiosmtpd
sink in its own process. K smtplib clients on persistent connections send N corpus mails.

- Throughput: time from the first DATA until every message is a ticket/article (inbound row finished) and
  every acknowledgement the daemon enqueued has arrived at the sink. Floor: the same clients against an
  aiosmtpd server that only commits the bytes to SQLite (WAL, synchronous=FULL), in the same run.
- Latency: a fresh daemon is fed at a steady 50 msg/s (open loop); DATA→250 per message, and 250→ack
  arrival at the sink matched by the ack's In-Reply-To.
- Intake alone: the same N mails to a fresh daemon whose processing stage is parked (failpoint
  `process.step:sleep`), so the listener and the intake group commit are measured without processing
  competing for the CPU and SQLite's write lock; accept rate, DATA→250 and CPU per message, and the ratio
  of the accept rate to the floor of the same round.
- Where the time goes: per end-to-end round, the share of it each kind of the daemon's threads held SQLite's
  write lock (its /metrics), the CPU per message of every process, and how long the daemon's threads and parse
  workers were ready to run but waited for a CPU (the kernel's run-queue delay; Linux PSI for the machine).
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any

from tests.support.http_get import get

from bench.clients import Sent, send_all, send_paced
from bench.corpus import CorpusMail, generate, mix
from bench.harness import (
    Check,
    Ctx,
    Outcome,
    StateProbe,
    cpu_pressure_seconds,
    cpu_seconds,
    free_port,
    make_app,
    median,
    percentile,
    read_records,
    rounded,
    run_delays,
    say,
    start_sink,
    start_spy,
    stop_process,
    stop_spy,
    tree_cpu_seconds,
)

NAME = "smtp"
RATE = 50.0


def _latency_ms(sent: list[Sent]) -> dict[str, float]:
    values = [s.latency * 1000 for s in sent if s.code == 250]
    return {"p50_ms": rounded(percentile(values, 50)), "p99_ms": rounded(percentile(values, 99)),
            "max_ms": rounded(max(values, default=float("nan")))}


def _floor_round(ctx: Ctx, mails: list[CorpusMail], k: int) -> dict[str, Any]:
    work = ctx.dir("smtp-floor")
    proc, port, _ = start_sink("floor-sqlite", work, db=work / "floor.db")
    try:
        start = time.monotonic()
        sent = send_all(port, mails, k)
        seconds = time.monotonic() - start
    finally:
        stop_process(proc)
    return {"seconds": seconds, "msg_per_s": len(mails) / seconds, **_latency_ms(sent)}


def _daemon(ctx: Ctx, work: Path, database_url: str, sink_port: int,
            env: dict[str, str] | None = None) -> tuple[Any, Any]:
    app = make_app(work, database_url)
    app.set("smtp_out", delivery="smtp", host="127.0.0.1", port=sink_port, security="none",
            retry_initial_seconds=1, retry_max_seconds=2)
    app.set("smtp_in", max_connections=200)
    app.set("operations", http_enabled=True, http_listen=f"127.0.0.1:{free_port()}")
    daemon = app.start(env=env)
    return app, daemon


_LOCK_HELD = re.compile(r'mail2ticket_sqlite_write_lock_held_seconds_total\{holder="([^"]*)"\} (\S+)')


def _write_lock_held(app: Any) -> dict[str, float]:
    """Seconds each kind of the daemon's threads has held SQLite's write lock so far (its /metrics; {} on
    PostgreSQL)."""
    _, text = get(f"http://{app.sections['operations']['http_listen']}/metrics")
    return {m.group(1): float(m.group(2)) for m in map(_LOCK_HELD.fullmatch, text.splitlines()) if m}


def _lock_shares(before: dict[str, float], after: dict[str, float], seconds: float) -> dict[str, float]:
    """The share of `seconds` each kind of thread held the write lock, and `busy`, their sum."""
    shares = {kind: rounded((held - before.get(kind, 0.0)) / seconds) for kind, held in after.items()
              if held > before.get(kind, 0.0)}
    return {**shares, "busy": rounded(sum(shares.values()))}


def _intake_round(ctx: Ctx, mails: list[CorpusMail], k: int) -> dict[str, Any]:
    """Listener + intake only: processing parked, so nothing else takes the CPU or the write lock."""
    work = ctx.dir("smtp-intake")
    with ctx.backend.database(work) as url:
        app, daemon = _daemon(ctx, work, url, 9, env={"M2T_FAILPOINT": "process.step:sleep=3600"})
        try:
            cpu0 = cpu_seconds(daemon.proc.pid)
            start = time.monotonic()
            sent = send_all(app.smtp_port, mails, k)
            seconds = time.monotonic() - start
            cpu = cpu_seconds(daemon.proc.pid) - cpu0
        finally:
            daemon.kill()
    return {"msg_per_s": len(mails) / seconds, "daemon_cpu_ms_per_msg": cpu * 1000 / len(mails),
            "refused": sum(1 for s in sent if s.code != 250), **_latency_ms(sent)}


def _wait_drained(probe: StateProbe, record: Path, n: int, timeout: float) -> tuple[float, dict[str, int]]:
    """Poll until every inbound row is finished and every enqueued ack reached the sink; returns (t, outbound)."""
    deadline = time.monotonic() + timeout
    while True:
        now = time.monotonic()
        if probe.finished() >= n:
            outbound = probe.outbound()
            pending = outbound.get("queued", 0) + outbound.get("sending", 0)
            sent = outbound.get("sent", 0)
            if pending == 0 and len(read_records(record)) >= sent:
                return now, outbound
        if now > deadline:
            raise TimeoutError(f"not drained after {timeout:.0f}s: inbound {probe.inbound()}, "
                               f"outbound {probe.outbound()}")
        time.sleep(0.05)


def _throughput_round(ctx: Ctx, mails: list[CorpusMail], k: int, profile: Path | None) -> dict[str, Any]:
    work = ctx.dir("smtp")
    sink, sink_port, record = start_sink("capture", work)
    spy = None
    try:
        with ctx.backend.database(work) as url:
            app, daemon = _daemon(ctx, work, url, sink_port)
            probe = StateProbe(url)
            try:
                spy = start_spy(daemon.proc.pid, profile)
                lock0 = _write_lock_held(app)
                cpu0, tree0 = cpu_seconds(daemon.proc.pid), tree_cpu_seconds(daemon.proc.pid)
                sink0, driver0 = tree_cpu_seconds(sink.pid), time.process_time()
                waits0 = _cpu_waits(daemon.proc.pid)
                start = time.monotonic()
                sent = send_all(app.smtp_port, mails, k)
                accepted_at = time.monotonic()
                done_at, outbound = _wait_drained(probe, record, len(mails), timeout=max(180, len(mails) / 5))
                waited = _cpu_waited(waits0, _cpu_waits(daemon.proc.pid), len(mails), daemon.proc.pid)
                write_lock = _lock_shares(lock0, _write_lock_held(app), done_at - start)
                cpu = cpu_seconds(daemon.proc.pid) - cpu0
                budget = _cpu_budget(len(mails), cpu, tree_cpu_seconds(daemon.proc.pid) - tree0,
                                     tree_cpu_seconds(sink.pid) - sink0, time.process_time() - driver0)
                inbound = probe.inbound()
            finally:
                probe.close()
                stop_spy(spy)
                daemon.stop(timeout=60)
    finally:
        stop_process(sink)
    seconds = done_at - start
    refused = sum(1 for s in sent if s.code != 250)
    return {
        "seconds": seconds, "msg_per_s": len(mails) / seconds,
        "accept_seconds": accepted_at - start, "accept_msg_per_s": len(mails) / (accepted_at - start),
        "daemon_cpu_ms_per_msg": cpu * 1000 / len(mails), "refused": refused, "cpu_budget": budget,
        "inbound": inbound, "outbound": outbound, "write_lock": write_lock,
        "cpu_wait": waited, **_latency_ms(sent),
    }


_Waits = tuple[float, dict[tuple[int, int], float], float | None]  # (monotonic time, run_delays, PSI seconds)


def _cpu_waits(daemon: int) -> _Waits:
    return time.monotonic(), run_delays(daemon), cpu_pressure_seconds()


def _cpu_waited(before: _Waits, after: _Waits, n: int, daemon: int) -> dict[str, float | None]:
    """How long the daemon's threads and its parse workers were ready to run but waited for a CPU, per message,
    and the share of the time between the samples in which any task of the machine waited for one (Linux PSI).
    A thread that holds SQLite's write lock while it waits keeps every other writer waiting too.

    Counted thread by thread, for the threads alive at the second sample: the wait of threads that ended during
    the round (a parse-ahead pipeline's threads, a replaced parse worker) is missing, so these are lower bounds,
    while the CPU figures of `_cpu_budget` count every thread. None where the kernel keeps no such statistics.
    """
    (start, delays0, pressure0), (end, delays1, pressure1) = before, after
    grown = {key: delay - delays0.get(key, 0.0) for key, delay in delays1.items()}
    kept = any(delays1.values())  # a kernel without schedstats shows zeros
    daemon_s = sum(delay for (pid, _), delay in grown.items() if pid == daemon)
    workers_s = sum(delay for (pid, _), delay in grown.items() if pid != daemon)
    pressure = None if pressure0 is None or pressure1 is None else rounded((pressure1 - pressure0) / (end - start))
    return {"daemon_ms": rounded(daemon_s * 1000 / n) if kept else None,
            "parse_workers_ms": rounded(workers_s * 1000 / n) if kept else None,
            "machine_pressure": pressure}


def _median_known(values: list[float | None]) -> float | None:
    known = [value for value in values if value is not None]
    return rounded(median(known)) if known else None


def _cpu_budget(n: int, daemon: float, daemon_tree: float, sink: float, clients: float) -> dict[str, float]:
    """CPU per message of every process of the run, and the rate two cores could carry at that cost at best.

    Everything in this benchmark shares the machine: the clients (threads of this driver), the daemon and its
    parse workers, and the sink that receives the acknowledgements. However well the daemon spreads its work,
    N messages need the sum of their CPU, so cores / (CPU per message) bounds the end-to-end rate.
    """
    per_msg = {"daemon_ms": daemon, "parse_workers_ms": daemon_tree - daemon, "sink_ms": sink, "clients_ms": clients}
    out = {key: rounded(value * 1000 / n) for key, value in per_msg.items()}
    total = sum(per_msg.values()) * 1000 / n
    out["total_ms"] = rounded(total)
    out["ceiling_msg_per_s"] = rounded((os.cpu_count() or 1) * 1000 / total)
    return out


def _paced_round(ctx: Ctx, mails: list[CorpusMail]) -> dict[str, Any]:
    work = ctx.dir("smtp-paced")
    sink, sink_port, record = start_sink("capture", work)
    try:
        with ctx.backend.database(work) as url:
            app, daemon = _daemon(ctx, work, url, sink_port)
            probe = StateProbe(url)
            try:
                start = time.monotonic()
                sent = send_paced(app.smtp_port, mails, RATE)
                send_seconds = time.monotonic() - start
                _wait_drained(probe, record, len(mails), timeout=max(120, len(mails) / 5))
            finally:
                probe.close()
                daemon.stop(timeout=60)
    finally:
        stop_process(sink)
    replied = {s.message_id: s.replied_at for s in sent if s.code == 250}
    to_ack = [(t - replied[irt]) * 1000 for t, irt, _ in read_records(record) if irt in replied]
    return {"offered_msg_per_s": len(mails) / send_seconds, **_latency_ms(sent), "acks": len(to_ack),
            "ack_p50_ms": rounded(percentile(to_ack, 50)), "ack_p99_ms": rounded(percentile(to_ack, 99)),
            "ack_max_ms": rounded(max(to_ack, default=float("nan")))}


def _paced_line(paced: dict[str, Any]) -> str:
    return (f"paced {RATE:.0f} msg/s: DATA→250 p50 {paced['p50_ms']} p99 {paced['p99_ms']} ms; 250→ack p50 "
            f"{paced['ack_p50_ms']} p99 {paced['ack_p99_ms']} ms ({paced['acks']:.0f} acks)")


def run(ctx: Ctx) -> Outcome:
    n = ctx.size("smtp", 5000, 300)
    paced_n = ctx.size("smtp_paced", 1500, 150)
    k = ctx.size("smtp_clients", 8, 4)
    rounds = ctx.rounds(3)
    mails = generate(n, ctx.seed)
    paced = generate(paced_n, ctx.seed + 1)
    out = Outcome(NAME, (
        f"{k} smtplib clients (persistent connections) send N={n} corpus mails {dict(mix(mails))} to the daemon "
        f"(`mail2ticket run`, SMTP delivery to an aiosmtpd sink in its own process). Time = first DATA until "
        f"every inbound row is finished and every enqueued ack arrived at the sink. Floor = same clients against "
        f"an aiosmtpd handler that only commits the bytes to SQLite (WAL, synchronous=FULL). Latency phase: "
        f"{paced_n} other mails at a steady {RATE:.0f} msg/s (open loop) to a fresh daemon in every round. "
        f"{rounds} round(s), medians (of the paced phase too: the median of the rounds' p50, p99 and max)."))
    for i in range(rounds):
        profile = ctx.profile_dir / f"pyspy-smtp-{ctx.backend.name}.txt" if ctx.profile_dir and i == 0 else None
        floor = _floor_round(ctx, mails, k)
        say(f"  round {i + 1}: floor {floor['msg_per_s']:.0f} msg/s (p99 DATA→250 {floor['p99_ms']} ms)")
        result = _throughput_round(ctx, mails, k, profile)
        say(f"  round {i + 1}: daemon {result['msg_per_s']:.1f} msg/s end to end, accepted at "
            f"{result['accept_msg_per_s']:.0f} msg/s, p99 DATA→250 {result['p99_ms']} ms, "
            f"{result['daemon_cpu_ms_per_msg']:.1f} ms CPU/msg, outbound {result['outbound']}")
        if ctx.backend.name == "sqlite":
            say(f"  round {i + 1}: SQLite write lock held {result['write_lock'].get('busy', 0):.0%} of the round "
                f"({', '.join(f'{k} {v:.0%}' for k, v in result['write_lock'].items() if k != 'busy')})")
        budget = result["cpu_budget"]
        say(f"  round {i + 1}: CPU per message: daemon {budget['daemon_ms']} ms, its parse workers "
            f"{budget['parse_workers_ms']} ms, ack sink {budget['sink_ms']} ms, clients {budget['clients_ms']} ms; "
            f"total {budget['total_ms']} ms → at most {budget['ceiling_msg_per_s']:.0f} msg/s on "
            f"{os.cpu_count()} cores")
        waited = result["cpu_wait"]
        pressure = "n/a" if waited["machine_pressure"] is None else f"{waited['machine_pressure']:.0%}"
        say(f"  round {i + 1}: ready but waiting for a CPU, per message (threads alive at the end): daemon "
            f"{waited['daemon_ms']} ms, its parse workers {waited['parse_workers_ms']} ms; some task of the "
            f"machine waited {pressure} of the round")
        intake = _intake_round(ctx, mails, k)
        intake["ratio_to_floor"] = intake["msg_per_s"] / floor["msg_per_s"]
        say(f"  round {i + 1}: intake alone (processing parked) {intake['msg_per_s']:.0f} msg/s "
            f"({intake['ratio_to_floor']:.2f} × floor), p99 DATA→250 {intake['p99_ms']} ms, "
            f"{intake['daemon_cpu_ms_per_msg']:.2f} ms CPU/msg")
        paced_round = _paced_round(ctx, paced)
        say(f"  round {i + 1}: {_paced_line(paced_round)}")
        out.rounds.append({"floor": floor, "daemon": result, "intake": intake, "paced": paced_round})
    paced_result = {key: median([r["paced"][key] for r in out.rounds]) for key in out.rounds[0]["paced"]}
    paced_result.update({key: rounded(value) for key, value in paced_result.items() if key.endswith("_ms")})
    say(f"  medians: {_paced_line(paced_result)}")
    msgs = median([r["daemon"]["msg_per_s"] for r in out.rounds])
    floor_msgs = median([r["floor"]["msg_per_s"] for r in out.rounds])
    out.figures = {
        "n": n, "clients": k, "rounds": rounds,
        "msg_per_s": rounded(msgs), "floor_msg_per_s": rounded(floor_msgs), "ratio_to_floor": rounded(msgs / floor_msgs),
        "accept_msg_per_s": rounded(median([r["daemon"]["accept_msg_per_s"] for r in out.rounds])),
        "data_250_p50_ms_at_full_load": rounded(median([r["daemon"]["p50_ms"] for r in out.rounds])),
        "data_250_p99_ms_at_full_load": rounded(median([r["daemon"]["p99_ms"] for r in out.rounds])),
        "floor_data_250_p99_ms": rounded(median([r["floor"]["p99_ms"] for r in out.rounds])),
        "daemon_cpu_ms_per_msg": rounded(median([r["daemon"]["daemon_cpu_ms_per_msg"] for r in out.rounds])),
        "cpu_total_ms_per_msg": rounded(median([r["daemon"]["cpu_budget"]["total_ms"] for r in out.rounds])),
        "cpu_ceiling_msg_per_s": rounded(median([r["daemon"]["cpu_budget"]["ceiling_msg_per_s"] for r in out.rounds])),
        "daemon_cpu_wait_ms_per_msg": _median_known([r["daemon"]["cpu_wait"]["daemon_ms"] for r in out.rounds]),
        "write_lock_busy": rounded(median([r["daemon"]["write_lock"]["busy"] for r in out.rounds]))
        if ctx.backend.name == "sqlite" else None,
        "paced": paced_result,
        "intake_alone_msg_per_s": rounded(median([r["intake"]["msg_per_s"] for r in out.rounds])),
        "intake_alone_ratio_to_floor": rounded(median([r["intake"]["ratio_to_floor"] for r in out.rounds])),
        "intake_alone_data_250_p99_ms": rounded(median([r["intake"]["p99_ms"] for r in out.rounds])),
        "intake_alone_cpu_ms_per_msg": rounded(median([r["intake"]["daemon_cpu_ms_per_msg"] for r in out.rounds])),
    }
    sqlite = ctx.backend.name == "sqlite"
    out.checks = [
        Check("SMTP ingest end to end ≥ 300 msg/s", f"{msgs:.1f} msg/s", msgs >= 300 if sqlite else None),
        Check("p99 DATA→250 < 50 ms at 50 msg/s", f"{paced_result['p99_ms']} ms",
              paced_result["p99_ms"] < 50 if sqlite else None),
        Check("p99 250→ack delivered < 1 s at 50 msg/s", f"{paced_result['ack_p99_ms']} ms",
              paced_result["ack_p99_ms"] < 1000 if sqlite else None),
    ]
    offered = min(r["paced"]["offered_msg_per_s"] for r in out.rounds)
    if offered < RATE * 0.9:
        out.notes.append(f"a paced round only reached {offered:.1f} msg/s offered load")
    return out
