"""Parse ahead: a helper thread feeds claimed messages through the parse worker while processing stores.

Parsing runs in the parse worker process (`parse_guard`), so it uses the second core while the processing
thread writes the previous messages to the database. The helper thread only reads (its own read-only
snapshot per message, no write lock) and waits on the worker's pipe, so it hardly competes for the GIL.

At most `depth` results wait in the queue, and a batch is bounded in bytes: a backlog of large mails cannot
pile up in memory. The depth lets a slow parse (a 2 MB attachment) overlap with storing the messages before it.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy.orm import Session, sessionmaker

from mail2ticket.db import repo, repo_raw
from mail2ticket.db.engine import read_only
from mail2ticket.outcomes import Quarantine
from mail2ticket.parse import Limits
from mail2ticket.parse_guard import Analysed, ParseGuard


@dataclass(frozen=True, slots=True)
class Prepared:
    """One claimed message after the parse worker: its analysis, or why there is none."""

    inbound_id: int
    analysed: Analysed | None = None
    error: Exception | None = None  # Quarantine, ParseWorkerUnavailable, a database error


class NotReady:
    """The next message is still being parsed."""


NOT_READY = NotReady()


class ParseAhead:
    """Iterates the parse results of `ids` in order; use as a context manager so the thread always ends."""

    def __init__(self, factory: sessionmaker[Session], guard: ParseGuard, ids: Sequence[int], *,
                 limits: Callable[[], tuple[Limits, float, tuple[str, ...]]], depth: int = 16) -> None:
        self._factory = factory
        self._guard = guard
        self._ids = list(ids)
        self._limits = limits
        self._queue: queue.Queue[Prepared | None] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._done = False
        self._thread = threading.Thread(target=self._run, name="parse-ahead", daemon=True)

    @property
    def ids(self) -> list[int]:
        return list(self._ids)

    def __enter__(self) -> ParseAhead:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        while self._thread.is_alive():  # unblock a put() waiting for room
            try:
                self._queue.get(timeout=0.05)
            except queue.Empty:
                pass
        self._thread.join()

    def next(self, timeout: float | None = None) -> Prepared | NotReady | None:
        """The next result; NOT_READY if none arrives within `timeout` (None waits); None when all are done."""
        if self._done:
            return None
        try:
            item = self._queue.get(timeout=timeout) if timeout is None or timeout > 0 else self._queue.get_nowait()
        except queue.Empty:
            return NOT_READY
        if item is None:
            self._done = True
        return item

    def _run(self) -> None:
        try:
            for inbound_id in self._ids:
                if self._stop.is_set():
                    return
                self._put(self._prepare(inbound_id))
        finally:
            self._put(None)

    def _put(self, item: Prepared | None) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _prepare(self, inbound_id: int) -> Prepared:
        try:
            with read_only(self._factory) as session:
                envelope = repo.inbound_envelope(session, inbound_id)
                if envelope is None:
                    return Prepared(inbound_id, error=Quarantine("internal error: stored message missing"))
                limits, cpu_seconds, noreply = self._limits()
                self._guard.cpu_seconds = cpu_seconds
                analysed = self._guard.analyse(lambda: repo_raw.read_raw(session, inbound_id), limits,
                                               envelope_from=envelope[0], envelope_to=envelope[1],
                                               noreply_patterns=noreply)
            return Prepared(inbound_id, analysed=analysed)
        except Exception as exc:  # noqa: BLE001 - handed to the processing thread, which decides the outcome
            return Prepared(inbound_id, error=exc)
