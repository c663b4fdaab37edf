"""Benchmark 2, processing only: stored messages → parse, classify, thread, route, store, enqueue ack.

N corpus mails are stored with `mail2ticket ingest --queue-only MBOX` (real CLI, untimed for this figure,
reported separately as the CLI intake rate), then the real `Processor` drains them in this process and is
timed from when its parse workers are up (the daemon starts them at start-up). Floor:
`email.message_from_bytes(raw, policy=email.policy.default)` of exactly the stored bytes, once before and once
after the drain of the same round, averaged. With --profile, the first round's drain is recorded with pyinstrument.
"""

from __future__ import annotations

import contextlib
import email
import email.policy
import mailbox
import time
from pathlib import Path
from typing import Any

from bench.corpus import generate, mix, write_mbox
from bench.harness import (
    Check,
    Ctx,
    Outcome,
    StateProbe,
    mail2ticket,
    make_app,
    median,
    rounded,
    run_child_rss,
    say,
)

NAME = "processing"


def stored_bytes(mbox: Path) -> list[bytes]:
    """The bytes `ingest` stores for each mbox entry (mailbox module: From_ line removed, >From unquoted)."""
    box = mailbox.mbox(mbox, factory=None, create=False)
    return [box.get_bytes(key) for key in box.iterkeys()]


def parse_floor(raws: list[bytes]) -> float:
    start = time.perf_counter()
    for raw in raws:
        email.message_from_bytes(raw, policy=email.policy.default)
    return time.perf_counter() - start


def drain_in_process(config_path: Path, log_path: Path, profile: Path | None) -> tuple[int, float, float]:
    """Drain every stored message; (count, wall seconds, CPU seconds of this process, parse worker excluded)."""
    from mail2ticket import log as logsetup
    from mail2ticket.cli.common import open_services
    from mail2ticket.config import load_config
    from mail2ticket.pipeline.process import Processor

    config = load_config(config_path)
    with log_path.open("a") as log_file, contextlib.redirect_stderr(log_file):
        logsetup.configure("json", "info")  # the daemon's logging, into a file
        runtime, services = open_services(config)
        try:
            processor = Processor(services, lambda: runtime)
            processor.start_workers(wait=True)  # as the daemon does at start-up: the clock measures processing
            profiler: Any = None
            if profile is not None:
                from pyinstrument import Profiler

                profiler = Profiler(interval=0.0005)
                profiler.start()
            start, cpu_start = time.perf_counter(), time.process_time()
            count = processor.drain()
            seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
            if profiler is not None and profile is not None:
                profiler.stop()
                profile.write_text(profiler.output_text(unicode=True, show_all=False), encoding="utf-8")
                profile.with_suffix(".html").write_text(profiler.output_html(), encoding="utf-8")
        finally:
            services.close()
    return count, seconds, cpu


def run(ctx: Ctx) -> Outcome:
    n = ctx.size("processing", 2000, 150)
    rounds = ctx.rounds(5)  # a round takes seconds; on a shared 2-core host one round's ratio spreads ±15 %
    mails = generate(n, ctx.seed)
    corpus_dir = ctx.dir("processing-corpus")
    mbox = corpus_dir / "corpus.mbox"
    write_mbox(mbox, mails)
    raws = stored_bytes(mbox)
    out = Outcome(NAME, (
        f"N={n} corpus mails {mix(mails)} stored with `mail2ticket ingest --queue-only` (CLI, its own process), "
        f"then `Processor.drain()` (parse, classify, thread, route, store, ack enqueue; one transaction each) "
        f"timed in-process with JSON logging to a file, from when its parse workers are up (the daemon starts "
        f"them at start-up). Floor = stdlib `message_from_bytes(policy=default)` of the same stored bytes, "
        f"the mean of one run before and one after the drain. {rounds} round(s), medians."))
    for i in range(rounds):
        floor_before = parse_floor(raws)
        work = ctx.dir("processing")
        with ctx.backend.database(work) as url:
            app = make_app(work, url)
            intake = run_child_rss(mail2ticket(app, "ingest", "--queue-only", str(mbox)),
                                   stdout_path=work / "ingest.out", timeout=3600)
            if intake.returncode != 0:
                raise RuntimeError(f"ingest exited {intake.returncode}: {intake.stderr[-2000:]}")
            profile = ctx.profile_dir / f"pyinstrument-processing-{ctx.backend.name}.txt" \
                if ctx.profile_dir and i == 0 else None
            count, seconds, cpu = drain_in_process(app.config_path, work / "process.log", profile)
            # The floor on both sides of the drain: a machine whose speed drifts (a shared host) moves both alike.
            floor_seconds = (floor_before + parse_floor(raws)) / 2
            probe = StateProbe(url)
            states, outbound = probe.inbound(), probe.outbound()
            tickets = probe.scalar("SELECT count(*) FROM ticket")
            probe.close()
        result = {"processed": count, "seconds": seconds, "msg_per_s": count / seconds,
                  "cpu_ms_per_msg": cpu * 1000 / max(1, count),
                  "floor_seconds": floor_seconds, "floor_msg_per_s": n / floor_seconds,
                  "ratio_to_floor": (count / seconds) / (n / floor_seconds),
                  "cli_intake_msg_per_s": n / intake.seconds, "states": states, "outbound": outbound,
                  "tickets": tickets}
        say(f"  round {i + 1}: {result['msg_per_s']:.1f} msg/s, floor {result['floor_msg_per_s']:.0f} msg/s "
            f"(ratio {result['ratio_to_floor']:.3f}); CLI intake {result['cli_intake_msg_per_s']:.0f} msg/s; "
            f"states {states}, tickets {tickets}")
        out.rounds.append(result)
    msgs = median([r["msg_per_s"] for r in out.rounds])
    floor = median([r["floor_msg_per_s"] for r in out.rounds])
    out.figures = {"n": n, "rounds": rounds, "msg_per_s": rounded(msgs), "floor_msg_per_s": rounded(floor),
                   "ratio_to_floor": rounded(msgs / floor),
                   "cpu_ms_per_msg": rounded(median([r["cpu_ms_per_msg"] for r in out.rounds])),
                   "cli_intake_msg_per_s": rounded(median([r["cli_intake_msg_per_s"] for r in out.rounds]))}
    out.checks = [Check("processing ≥ 50% of the stdlib parse floor", f"{100 * msgs / floor:.1f}% "
                        f"({msgs:.0f} of {floor:.0f} msg/s)", msgs / floor >= 0.5 if ctx.backend.name == "sqlite" else None)]
    return out
