"""First come, first served: the write transactions of one process on one SQLite database, one at a time.

SQLite has one write lock. A thread that finds it taken sleeps in SQLite's busy handler (naps of 1, 2, 5 …
100 ms) and is never told when it comes free; a thread that commits and begins again at once (processing
working off a backlog) takes the lock again before the napping thread wakes. The SMTP intake committer,
whose clients wait for their 250, then waited hundreds of milliseconds. With this gate the writers of this
process queue in arrival order and the gate is handed to the next one on commit; SQLite's busy handler is
left for other processes (the CLI, a second instance).

A long writer (a processing run) asks `waiting()` between messages and commits early when someone queues.
A writer that waits longer than the timeout goes on without the gate: a bug can slow writers, never stop them.
The gate is reentrant per thread, so a unit of work opened inside another one does not wait for itself.

It also counts, per kind of thread, how long writers waited for it and held it (`usage`, exported as
`mail2ticket_sqlite_write_lock_{held,wait}_seconds_total`): SQLite has one write lock, and when it is held nearly
all the time the daemon can go no faster whatever the CPU does. Held is from getting the gate to the end of the
transaction, so it includes SQLite's own wait for another process at BEGIN IMMEDIATE; a writer that timed out
counts its wait and then its transaction as held. A thread's kind is its name without the pool's number
("process_0" -> "process").
"""

from __future__ import annotations

import collections
import contextlib
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

_POOL_NUMBER = re.compile(r"[_-]\d+$")


@dataclass(frozen=True, slots=True)
class LockUsage:
    waited: float  # seconds, summed over the transactions of this kind of thread
    held: float
    transactions: int


def thread_kind(name: str) -> str:
    """The thread's name without its number in a pool: "process_0" -> "process", "intake-commit" stays."""
    return _POOL_NUMBER.sub("", name)


class WriteGate:
    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._mutex = threading.Lock()
        self._owner: int | None = None
        self._depth = 0
        self._waiters: collections.deque[tuple[int, threading.Lock]] = collections.deque()
        self._usage: dict[str, LockUsage] = {}  # by kind of thread
        self._nesting = threading.local()  # units of work this thread has open (only the outermost is counted)

    def waiting(self) -> bool:
        """Whether another thread waits for the gate right now."""
        return bool(self._waiters)

    def usage(self) -> dict[str, LockUsage]:
        """Waiting and holding time so far, per kind of thread."""
        with self._mutex:
            return dict(self._usage)

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        asked = time.monotonic()
        acquired = self._acquire()
        got = time.monotonic()
        depth = getattr(self._nesting, "depth", 0)
        self._nesting.depth = depth + 1
        try:
            yield
        finally:
            self._nesting.depth = depth
            try:
                if depth == 0:
                    self._count(asked, got, time.monotonic())
            finally:
                if acquired:
                    self._release()

    def _count(self, asked: float, got: float, done: float) -> None:
        kind = thread_kind(threading.current_thread().name)
        with self._mutex:
            so_far = self._usage.get(kind, LockUsage(0.0, 0.0, 0))
            self._usage[kind] = LockUsage(so_far.waited + got - asked, so_far.held + done - got,
                                          so_far.transactions + 1)

    def _acquire(self) -> bool:
        me = threading.get_ident()
        with self._mutex:
            if self._owner in (None, me):
                self._owner = me
                self._depth += 1
                return True
            ticket = threading.Lock()
            ticket.acquire()
            entry = (me, ticket)
            self._waiters.append(entry)
        if ticket.acquire(timeout=self.timeout):
            return True  # handed over by `_release`, which made us the owner
        with self._mutex:
            if entry in self._waiters:
                self._waiters.remove(entry)
                return False
        return True  # handed over between the timeout and the mutex

    def _release(self) -> None:
        with self._mutex:
            self._depth -= 1
            if self._depth:
                return
            self._owner = None
            if self._waiters:
                owner, ticket = self._waiters.popleft()
                self._owner, self._depth = owner, 1
                ticket.release()
