"""Progress bar for long admin commands (import, purge): count, rate and ETA on a TTY, silent otherwise.

Drawn on stderr with a carriage return, at most ten times a second, so it neither slows the work nor
mixes with `--json` output on stdout. When stderr is not a terminal (a pipe, cron, systemd-run --pipe)
nothing is drawn at all.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from types import TracebackType
from typing import Self, TextIO

REDRAW_SECONDS = 0.1
BAR_WIDTH = 28


def format_duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


class Progress:
    """`with Progress(total, "importing") as bar: ... bar.advance()`; `total=None` when unknown."""

    def __init__(self, total: int | None, label: str, *, stream: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic, enabled: bool | None = None) -> None:
        self.total = total
        self.label = label
        self.stream = stream or sys.stderr
        self.clock = clock
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.done = 0
        self.started = clock()
        self._last_draw = float("-inf")
        self._drawn = False

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def advance(self, n: int = 1) -> None:
        self.done += n
        now = self.clock()
        if self.enabled and (now - self._last_draw >= REDRAW_SECONDS or self.done == self.total):
            self._last_draw = now
            self._draw(now)

    def line(self, now: float) -> str:
        elapsed = max(now - self.started, 1e-9)
        rate = self.done / elapsed
        if self.total:
            fraction = min(1.0, self.done / self.total)
            filled = int(fraction * BAR_WIDTH)
            bar = "#" * filled + "-" * (BAR_WIDTH - filled)
            remaining = (self.total - self.done) / rate if rate > 0 else 0.0
            return (f"{self.label} [{bar}] {self.done}/{self.total} {fraction:4.0%} "
                    f"{rate:.1f}/s ETA {format_duration(remaining)}")
        return f"{self.label} {self.done} {rate:.1f}/s elapsed {format_duration(elapsed)}"

    def _draw(self, now: float) -> None:
        self.stream.write("\r\x1b[2K" + self.line(now))
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        if self.enabled and self._drawn:
            self._draw(self.clock())
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False
