"""Benchmark: SMTP ingest end to end with one and with three daemon instances sharing one PostgreSQL database.

Method (per backend, fresh database per configuration, all processes on this machine):
- N corpus mails (the shared corpus, same seed) are sent by K smtplib clients on persistent connections;
  with three instances the mails and the clients are split evenly across the three listeners (K/3 each),
  so the offered concurrency is the same as with one instance.
- Time = first DATA until every inbound row is finished and every enqueued acknowledgement arrived at the
  capturing sink (SMTP delivery, one sink process for all instances). msg/s = N / time.
- Scaling ratio = msg/s with three instances / msg/s with one instance (PostgreSQL). SQLite runs one
  instance only: it is single-writer by design and several instances on one SQLite file are not supported.
- The daemons' CPU time per message and the machine's CPU count are reported, because on a small machine the
  ratio is bounded by the cores, not by coordination in the database.

Run alone:  python -m bench.multi_instance [--postgres URL] [--n 2000] [--clients 9] [--rounds 1]
or in the suite: python -m bench --only multi --postgres URL
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.clients import Sent, run_threads, send_all
from bench.corpus import CorpusMail, generate, mix
from bench.harness import (
    Backend,
    Check,
    Ctx,
    Outcome,
    StateProbe,
    cpu_seconds,
    make_app,
    median,
    read_records,
    rounded,
    say,
    start_sink,
    stop_process,
)

NAME = "multi"


def _send_split(ports: list[int], mails: list[CorpusMail], clients: int) -> list[Sent]:
    """Mail i goes to listener i mod P; each listener gets clients/P connections of its own."""
    per_port = max(1, clients // len(ports))
    results: list[list[Sent]] = [[] for _ in ports]
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            results[index] = send_all(ports[index], mails[index::len(ports)], per_port)
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)

    run_threads([functools.partial(run, i) for i in range(len(ports))], errors)
    return [s for r in results for s in r]


def _drained(probe: StateProbe, record: Path, n: int) -> bool:
    if probe.finished() < n:
        return False
    outbound = probe.outbound()
    return outbound.get("queued", 0) + outbound.get("sending", 0) == 0 and \
        len(read_records(record)) >= outbound.get("sent", 0)


def _round(ctx: Ctx, mails: list[CorpusMail], instances: int, clients: int) -> dict[str, Any]:
    work = ctx.dir(f"multi-{instances}")
    sink, sink_port, record = start_sink("capture", work)
    daemons: list[Any] = []
    try:
        with ctx.backend.database(work) as url:
            apps = []
            for i in range(instances):
                app = make_app(work / f"instance{i}", url)
                app.set("smtp_out", delivery="smtp", host="127.0.0.1", port=sink_port, security="none",
                        retry_initial_seconds=1, retry_max_seconds=2)
                app.set("smtp_in", max_connections=200)
                apps.append(app)
            daemons = [app.start(wait=False) for app in apps]
            for daemon in daemons:
                daemon.wait_listening(timeout=60)
            probe = StateProbe(url)
            try:
                cpu0 = [cpu_seconds(d.proc.pid) for d in daemons]
                start = time.monotonic()
                sent = _send_split([a.smtp_port for a in apps], mails, clients)
                accepted_at = time.monotonic()
                deadline = start + max(300, len(mails) / 3)
                while not _drained(probe, record, len(mails)):
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"not drained: inbound {probe.inbound()}, outbound {probe.outbound()}")
                    time.sleep(0.05)
                done_at = time.monotonic()
                cpu = [cpu_seconds(d.proc.pid) - c for d, c in zip(daemons, cpu0, strict=True)]
                inbound, outbound = probe.inbound(), probe.outbound()
                per_instance = [sum(1 for e in d.events() if e.get("event") == "message_processed")
                                for d in daemons]
            finally:
                probe.close()
                for daemon in daemons:
                    daemon.stop(timeout=60)
    finally:
        stop_process(sink)
    seconds = done_at - start
    return {
        "instances": instances, "seconds": round(seconds, 2), "msg_per_s": len(mails) / seconds,
        "accept_msg_per_s": len(mails) / (accepted_at - start), "refused": sum(1 for s in sent if s.code != 250),
        "daemon_cpu_ms_per_msg": sum(cpu) * 1000 / len(mails), "processed_per_instance": per_instance,
        "loadavg_1min_after": round(os.getloadavg()[0], 2),
        "inbound": inbound, "outbound": outbound,
    }


def run(ctx: Ctx) -> Outcome:
    n = ctx.size("multi", 2000, 300)
    clients = ctx.size("multi_clients", 9, 6)
    rounds = ctx.rounds(2)
    mails = generate(n, ctx.seed)
    configs = [1, 3] if ctx.backend.name == "postgresql" else [1]
    out = Outcome(NAME, (
        f"N={n} corpus mails {dict(mix(mails))}, {clients} smtplib clients in total, split evenly over the "
        f"listeners of {' and '.join(map(str, configs))} daemon instance(s) on one {ctx.backend.name} database; "
        f"time = first DATA until all inbound rows are finished and all acks arrived at one SMTP sink; "
        f"{rounds} round(s) per configuration, medians; {os.cpu_count()} CPUs"))
    figures: dict[str, Any] = {"n": n, "clients": clients, "rounds": rounds, "cpus": os.cpu_count(),
                               "loadavg_1min_before": round(os.getloadavg()[0], 2)}
    for instances in configs:
        results = []
        for i in range(rounds):
            result = _round(ctx, mails, instances, clients)
            say(f"  {instances} instance(s), round {i + 1}: {result['msg_per_s']:.1f} msg/s end to end, accepted "
                f"at {result['accept_msg_per_s']:.0f} msg/s, {result['daemon_cpu_ms_per_msg']:.1f} ms daemon "
                f"CPU/msg, processed per instance {result['processed_per_instance']}")
            results.append(result)
            out.rounds.append(result)
        figures[f"msg_per_s_{instances}"] = rounded(median([r["msg_per_s"] for r in results]))
        figures[f"accept_msg_per_s_{instances}"] = rounded(median([r["accept_msg_per_s"] for r in results]))
        figures[f"cpu_ms_per_msg_{instances}"] = rounded(median([r["daemon_cpu_ms_per_msg"] for r in results]))
    if 3 in configs:
        ratio = figures["msg_per_s_3"] / figures["msg_per_s_1"]
        figures["scaling_ratio_3_to_1"] = rounded(ratio)
        out.checks.append(Check("scaling ratio 3 instances / 1 instance (reported, bounded by CPUs)",
                                f"{ratio:.2f} on {os.cpu_count()} CPUs", None))
    exact = all(r["inbound"].get("done", 0) + r["inbound"].get("ignored", 0) == n for r in out.rounds)
    out.checks.append(Check("every mail finished exactly once", "yes" if exact else f"no: {out.rounds}", exact))
    out.figures = figures
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.multi_instance", description=__doc__.splitlines()[0])
    parser.add_argument("--postgres", metavar="URL", help="PostgreSQL server for throw-away databases")
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=9)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--no-sqlite", action="store_true")
    args = parser.parse_args(argv)
    backends = ([] if args.no_sqlite else [Backend("sqlite")]) + \
        ([Backend("postgresql", args.postgres)] if args.postgres else [])
    workdir = Path(tempfile.mkdtemp(prefix="m2t-bench-multi-", dir="/tmp"))
    for backend in backends:
        ctx = Ctx(backend=backend, quick=False, workdir=workdir, seed=20260108,
                  sizes={"multi": args.n, "multi_clients": args.clients}, rounds_override=args.rounds)
        say(f"== multi [{backend.name}] ==")
        outcome = run(ctx)
        say(f"  method: {outcome.method}")
        say(f"  figures: {outcome.figures}")
        for check in outcome.checks:
            say(f"  {check.target}: {check.measured}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
