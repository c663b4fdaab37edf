"""Benchmark 6, idle: the daemon's CPU use with three idle IMAP mailboxes and no traffic.

A real Dovecot (tests/support/dovecot.py) serves three empty accounts; the daemon is configured with one
`[[mailbox]]` per account. After a warm-up, CPU time (utime+stime of all threads, /proc/<pid>/stat) is
read over the window (60 s; 10 s with --quick). Floor: an idle aiosmtpd listener process (bench.sink)
measured over the same window. When the daemon's ready line lists no IMAP stage, the figure is for SMTP
and the worker stages only, and a note says so.
"""

from __future__ import annotations

import time

from bench.harness import (
    Check,
    Ctx,
    Outcome,
    cpu_seconds,
    make_app,
    rounded,
    say,
    start_sink,
    start_spy,
    stop_process,
    stop_spy,
)

NAME = "idle"
WARM_UP = 5.0


def run(ctx: Ctx) -> Outcome:
    from tests.support.dovecot import Dovecot, binaries_available

    window = float(ctx.size("idle_seconds", 60, 10))
    work = ctx.dir("idle")
    notes = []
    dovecot: Dovecot | None = None
    mailboxes = []
    if binaries_available():
        dovecot = Dovecot(pool_size=5)
        dovecot.start()
        for i in range(3):
            user = dovecot.user()
            secret = work / f"imap-{i}.secret"
            secret.write_text(user.password)
            secret.chmod(0o600)
            mailboxes.append(
                f'\n[[mailbox]]\nname = "box{i}"\nhost = "127.0.0.1"\nport = {dovecot.port}\nsecurity = "none"\n'
                f'username = "{user.name}"\npassword_file = "{secret}"\nqueue = "{["buergerbuero", "bauamt", "ordnungsamt"][i]}"\n')
    else:
        notes.append("dovecot not installed: measured without IMAP mailboxes")
    sink, _, _ = start_sink("capture", work)
    try:
        with ctx.backend.database(work) as url:
            app = make_app(work, url)
            app.extra_toml = "".join(mailboxes)
            daemon = app.start()
            try:
                time.sleep(WARM_UP)
                ready = [e for e in daemon.events() if e.get("event") == "daemon_ready"]
                stages = ready[-1].get("stages", []) if ready else []
                if mailboxes and not any("imap" in str(s).lower() or "mailbox" in str(s).lower() or "box" in str(s)
                                         for s in stages):
                    notes.append(f"no IMAP stage in the daemon yet (stages {stages}): [[mailbox]] is configured "
                                 f"but not polled, so this is SMTP listener + worker stages only")
                pid = daemon.proc.pid
                spy = start_spy(pid, ctx.profile_dir / f"pyspy-idle-{ctx.backend.name}.txt" if ctx.profile_dir else None)
                cpu0, sink0, t0 = cpu_seconds(pid), cpu_seconds(sink.pid), time.monotonic()
                time.sleep(window)
                cpu1, sink1, t1 = cpu_seconds(pid), cpu_seconds(sink.pid), time.monotonic()
                stop_spy(spy)
            finally:
                daemon.stop(timeout=60)
    finally:
        stop_process(sink)
        if dovecot is not None:
            dovecot.stop()
    share = (cpu1 - cpu0) / (t1 - t0) * 100
    floor = (sink1 - sink0) / (t1 - t0) * 100
    say(f"  daemon {share:.2f}% of a core over {t1 - t0:.0f} s (floor: idle aiosmtpd {floor:.2f}%)")
    out = Outcome(NAME, (
        f"daemon with {len(mailboxes)} idle IMAP mailboxes on a local Dovecot and no traffic; CPU time over "
        f"{window:.0f} s after {WARM_UP:.0f} s warm-up. Floor = idle aiosmtpd process over the same window."))
    out.figures = {"window_s": rounded(t1 - t0), "cpu_percent_of_core": rounded(share),
                   "floor_cpu_percent": rounded(floor), "daemon_cpu_seconds": rounded(cpu1 - cpu0),
                   "mailboxes": len(mailboxes), "stages": stages}
    out.notes = notes
    out.checks = [Check("idle CPU < 1 % of a core", f"{share:.2f} %", share < 1.0 if ctx.backend.name == "sqlite" else None)]
    return out
