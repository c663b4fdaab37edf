"""Stage supervision: the units the daemon runs and watches, and how a failing one is retried.

A stage is anything with `name`, `async run(stop)` and `alive(now)`. `ThreadWorkerStage` runs a blocking
step in its own thread, backs off after failures and counts as dead when a step stalls or it fails too
often in a row; the daemon's watchdog stops pinging systemd as soon as any stage is not alive.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import structlog

from mail2ticket.failpoints import failpoint

log = structlog.get_logger("mail2ticket.daemon")

IDLE_POLL_SECONDS = 5.0
BACKOFF_INITIAL_SECONDS = 0.5


class Stage(Protocol):
    """A supervised worker: `run` returns when `stop` is set; `alive` says whether it still makes progress."""

    name: str

    async def run(self, stop: asyncio.Event) -> None: ...

    def alive(self, now: float) -> bool: ...


@runtime_checkable
class MailboxStage(Protocol):
    """A stage that holds mailbox connections (IMAP); reported in STATUS=, /healthz and a gauge."""

    def connections(self) -> Mapping[str, bool]: ...


@dataclass
class Heartbeat:
    """For stages with their own loop: `beat()` after every bit of progress; stale after `stall_after`."""

    last: float = field(default_factory=time.monotonic)
    stall_after: float = 120.0

    def beat(self) -> None:
        self.last = time.monotonic()

    def alive(self, now: float) -> bool:
        return now - self.last < self.stall_after


def backoff(failures: int, maximum: float) -> float:
    return float(min(maximum, BACKOFF_INITIAL_SECONDS * 2 ** max(0, failures - 1)))


class ThreadWorkerStage:
    """Runs a blocking `step()` repeatedly in a dedicated thread; sleeps until woken when there is no work.

    The failpoint `<name>.step` fires before every step (tests stall or crash a stage with it).
    """

    def __init__(self, name: str, step: Callable[[], bool], wake: asyncio.Event,
                 idle_wait: Callable[[], float] = lambda: IDLE_POLL_SECONDS, *, stall_after: float = 120.0,
                 max_failures: int = 8, backoff_max: float = 60.0,
                 on_failure: Callable[[str], None] | None = None) -> None:
        self.name = name
        self._step = step
        self._wake = wake
        self._idle_wait = idle_wait
        self.stall_after = stall_after
        self.max_failures = max_failures
        self.backoff_max = backoff_max
        self._on_failure = on_failure
        self.busy_since: float | None = None
        self.failures = 0

    def alive(self, now: float) -> bool:
        stalled = self.busy_since is not None and now - self.busy_since >= self.stall_after
        return not stalled and self.failures < self.max_failures

    def detail(self, now: float) -> dict[str, Any]:
        busy = round(now - self.busy_since, 1) if self.busy_since is not None else None
        return {"alive": self.alive(now), "failures": self.failures, "busy_seconds": busy,
                "stall_after": self.stall_after}

    def _guarded_step(self) -> bool:
        failpoint(f"{self.name}.step")
        return self._step()

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self.name)
        try:
            while not stop.is_set():
                self._wake.clear()
                self.busy_since = time.monotonic()
                try:
                    busy = await loop.run_in_executor(executor, self._guarded_step)
                    self.failures = 0
                except Exception as exc:
                    self.failures += 1
                    if self._on_failure is not None:
                        self._on_failure(self.name)
                    log.exception("stage_failed", stage=self.name, failures=self.failures,
                              error=f"{type(exc).__name__}: {str(exc)[:200]}")
                    busy = False
                    self.busy_since = None
                    await wait_any(stop, None, backoff(self.failures, self.backoff_max))
                    continue
                finally:
                    self.busy_since = None
                if not busy:
                    await wait_any(stop, self._wake, self._idle_wait())
        finally:
            executor.shutdown(wait=True)


async def wait_any(stop: asyncio.Event, wake: asyncio.Event | None, timeout: float) -> None:
    waiters = [asyncio.ensure_future(stop.wait())]
    if wake is not None:
        waiters.append(asyncio.ensure_future(wake.wait()))
    try:
        await asyncio.wait(waiters, timeout=max(0.05, timeout), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()
