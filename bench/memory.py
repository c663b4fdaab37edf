"""Benchmark 4, memory: the daemon's peak RSS while it ingests mails with a 25 MB attachment over SMTP.

One mail with a 25,000,000-byte attachment (≈ 34 MB on the wire, base64), then more of them in a row
(100 in the full run), each different (random bytes, so attachment dedupe cannot help). After each mail is
processed, VmHWM (peak) and VmRSS of the daemon are read from /proc/<pid>/status. Floor: the daemon's RSS
after start-up, before any mail. "Flat" means the peak after the last mail is within 10 % of the peak
after the first.

The parse worker (the daemon's child running `-m mail2ticket.parse_worker`) is a separate process with its
own peak, reported as a separate figure and not added to the daemon's: a sampler thread reads the VmHWM of
every such child every 50 ms and keeps the highest per pid. A worker that is replaced (budget exceeded,
timeout) between two samples can have peaked higher than its last sample; the workers started after the first
sample are counted as replacements, so such restarts are visible (the daemon starts two, one per parse lane).

The default `smtp_in.max_message_size` (25 MiB) refuses such a mail at MAIL/DATA, so the benchmark raises
it to 48 MiB; the attachment stays within the default `limits.max_attachment_size` (25 MiB).
"""

from __future__ import annotations

import base64
import datetime as dt
import random
import threading
import time
from email.utils import format_datetime
from functools import partial
from pathlib import Path

from bench.harness import (
    Check,
    Ctx,
    Outcome,
    StateProbe,
    make_app,
    proc_status_kb,
    rounded,
    say,
    start_spy,
    stop_spy,
)
from tests.support.app import wait_until

NAME = "memory"
ATTACHMENT_BYTES = 25_000_000


def big_mail(index: int, seed: int) -> bytes:
    rng = random.Random(seed * 1000 + index)
    payload = base64.encodebytes(b"%PDF-1.4\n" + rng.randbytes(ATTACHMENT_BYTES - 9)).replace(b"\n", b"\r\n")
    head = (
        f"From: =?utf-8?q?J=C3=BCrgen_M=C3=BCller?= <juergen.mueller{index}@web.de>\r\n"
        f"To: bauamt@stadt.example\r\n"
        f"Subject: =?utf-8?q?Bauantrag_mit_Pl=C3=A4nen_Nr=2E_{index}?=\r\n"
        f"Date: {format_datetime(dt.datetime(2026, 1, 5, 8, 0, tzinfo=dt.UTC))}\r\n"
        f"Message-ID: <big.{seed}.{index}@web.de>\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/mixed; boundary="=_big"\r\n\r\n'
        "--=_big\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        "Sehr geehrte Damen und Herren,\r\n\r\nanbei die vollständigen Bauzeichnungen.\r\n\r\n"
        "Mit freundlichen Grüßen\r\nJürgen Müller\r\n"
        "--=_big\r\nContent-Type: application/pdf\r\n"
        "Content-Disposition: attachment; filename*=utf-8''Bauzeichnungen_Gro%C3%9F.pdf\r\n"
        "Content-Transfer-Encoding: base64\r\n\r\n"
    ).encode()
    return head + payload + b"--=_big--\r\n"


class ChildPeaks:
    """Highest VmHWM seen per parse-worker child of `parent`, sampled in a background thread."""

    def __init__(self, parent: int, interval: float = 0.05) -> None:
        self.parent = parent
        self.interval = interval
        self.peak_kb: dict[int, int] = {}
        self.initial: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="child-peaks", daemon=True)

    def __enter__(self) -> ChildPeaks:
        self.initial = set(self.workers())
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def workers(self) -> list[int]:
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) != self.parent:
                    continue
                if b"mail2ticket.parse_worker" in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except (OSError, ValueError, IndexError):
                continue
        return found

    def sample(self) -> None:
        for pid in self.workers():
            kb = proc_status_kb(pid, "VmHWM")
            if kb > self.peak_kb.get(pid, 0):
                self.peak_kb[pid] = kb

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    @property
    def peak_mb(self) -> float:
        return max(self.peak_kb.values(), default=0) / 1024

    @property
    def replaced(self) -> int:
        """Workers seen that were not there when sampling began."""
        return len(self.peak_kb.keys() - self.initial)


def _processed(probe: StateProbe, at_least: int) -> bool:
    return probe.finished() >= at_least


def run(ctx: Ctx) -> Outcome:
    count = ctx.size("memory", 100, 5)
    work = ctx.dir("memory")
    samples: list[dict[str, float]] = []
    out = Outcome(NAME, (
        f"{count} mails with a {ATTACHMENT_BYTES:,}-byte attachment each (distinct random content) sent one after "
        f"another over SMTP to the daemon; after each is processed, VmHWM/VmRSS of the daemon from /proc. "
        f"Floor = RSS after start-up. smtp_in.max_message_size raised to 48 MiB."))
    with ctx.backend.database(work) as url:
        app = make_app(work, url)
        app.set("smtp_in", max_message_size=48 * 1024 * 1024)
        daemon = app.start()
        pid = daemon.proc.pid
        probe = StateProbe(url)
        try:
            time.sleep(1.0)
            spy = start_spy(pid, ctx.profile_dir / f"pyspy-memory-{ctx.backend.name}.txt" if ctx.profile_dir else None)
            baseline = proc_status_kb(pid, "VmRSS") / 1024
            start = time.monotonic()
            with ChildPeaks(pid) as children:
                for index in range(count):
                    raw = big_mail(index, ctx.seed)
                    daemon.send(raw, sender=f"juergen.mueller{index}@web.de", recipients=("bauamt@stadt.example",))
                    wait_until(partial(_processed, probe, index + 1), timeout=300, message=f"big mail {index} processed")
                    children.sample()
                    samples.append({"mail": index + 1, "hwm_mb": proc_status_kb(pid, "VmHWM") / 1024,
                                    "rss_mb": proc_status_kb(pid, "VmRSS") / 1024,
                                    "worker_hwm_mb": children.peak_mb})
                    if index == 0 or (index + 1) % 10 == 0 or index + 1 == count:
                        say(f"  after {index + 1:3d}: daemon peak {samples[-1]['hwm_mb']:.0f} MB, now "
                            f"{samples[-1]['rss_mb']:.0f} MB; parse worker peak {children.peak_mb:.0f} MB")
            seconds = time.monotonic() - start
            worker_pids, replaced = len(children.peak_kb), children.replaced
            states = probe.inbound()
            stop_spy(spy)
        finally:
            probe.close()
            daemon.stop(timeout=120)
    first, last = samples[0]["hwm_mb"], samples[-1]["hwm_mb"]
    out.rounds = samples
    out.figures = {"mails": count, "baseline_rss_mb": rounded(baseline), "peak_after_first_mb": rounded(first),
                   "peak_after_last_mb": rounded(last), "rss_after_last_mb": rounded(samples[-1]["rss_mb"]),
                   "ratio_to_floor": rounded(last / baseline), "growth_last_vs_first": rounded(last / first),
                   "seconds_per_mail": rounded(seconds / count), "states": states,
                   "parse_worker_peak_after_first_mb": rounded(samples[0]["worker_hwm_mb"]),
                   "parse_worker_peak_mb": rounded(samples[-1]["worker_hwm_mb"]),
                   "parse_worker_pids_seen": worker_pids, "parse_workers_replaced": replaced}
    sqlite = ctx.backend.name == "sqlite"
    out.checks = [
        Check("peak RSS < 150 MB with one 25 MB attachment", f"{first:.0f} MB (baseline {baseline:.0f} MB)",
              first < 150 if sqlite else None),
        Check(f"peak RSS flat over {count} such mails (≤ +10 %)", f"{first:.0f} → {last:.0f} MB",
              last <= first * 1.1 if sqlite else None),
        Check("parse worker (child process) peak RSS, reported separately",
              f"{samples[0]['worker_hwm_mb']:.0f} MB after the first mail, {samples[-1]['worker_hwm_mb']:.0f} MB "
              f"over {count} ({worker_pids} worker pid(s), {replaced} of them replacements)", None),
    ]
    if replaced:
        out.notes.append(f"a parse worker was replaced {replaced} time(s); a replaced worker's peak is "
                         f"only known up to its last 50 ms sample")
    return out
