"""Parse ahead: a helper thread feeds claimed messages through the parse worker while processing stores.

Parsing runs in the parse worker process (`parse_guard`), so it uses the second core while the processing
thread writes the previous messages to the database. The helper thread only reads (its own read-only
snapshot per message, no write lock) and waits on the worker's pipe, so it hardly competes for the GIL.

At most `depth` results wait in the queue, and a batch is bounded in bytes: a backlog of large mails cannot
pile up in memory. The depth lets a slow parse (a 2 MB attachment) overlap with storing the messages before it.

A second thread reads the next messages (envelope and, below PREFETCH_BYTES, the raw bytes) while the worker
parses the current one, so the worker does not sit idle while its next job is fetched from the database.
Larger messages are read piece by piece while they are sent, as before, and never held whole here.
"""


from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy.orm import Session, sessionmaker

from mail2ticket.db import repo, repo_raw
from mail2ticket.db.engine import read_only
from mail2ticket.outcomes import Quarantine
from mail2ticket.parse import Limits
from mail2ticket.parse_guard import Analysed, ParseGuard

PREFETCH_BYTES = 1 << 20
PREFETCH_DEPTH = 4  # at most this many small messages read ahead: ≤ 4 MiB


@dataclass(frozen=True, slots=True)
class Prepared:
    """One claimed message after the parse worker: its analysis, or why there is none."""

    inbound_id: int
    analysed: Analysed | None = None
    error: Exception | None = None  # Quarantine, ParseWorkerUnavailable, a database error


@dataclass(frozen=True, slots=True)
class _Loaded:
    """A message read ahead for the worker: its envelope and its bytes (None: read them while sending)."""

    inbound_id: int
    envelope: tuple[str | None, list[str]] | None = None
    raw: bytes | None = None
    error: Exception | None = None


class NotReady:
    """The next message is still being parsed."""


NOT_READY = NotReady()
T = TypeVar("T")


class ParseAhead:
    """Iterates the parse results of `ids` in order; use as a context manager so the thread always ends."""

    def __init__(self, factory: sessionmaker[Session], guard: ParseGuard, ids: Sequence[int], *,
                 limits: Callable[[], tuple[Limits, float, tuple[str, ...]]], depth: int = 16) -> None:
        self._factory = factory
        self._guard = guard
        self._ids = list(ids)
        self._limits = limits
        self._queue: queue.Queue[Prepared | None] = queue.Queue(maxsize=depth)
        self._loaded: queue.Queue[_Loaded | None] = queue.Queue(maxsize=PREFETCH_DEPTH)
        self._stop = threading.Event()
        self._done = False
        self._threads = (threading.Thread(target=self._load_all, name="parse-ahead-read", daemon=True),
                         threading.Thread(target=self._run, name="parse-ahead", daemon=True))

    @property
    def ids(self) -> list[int]:
        return list(self._ids)

    def __enter__(self) -> ParseAhead:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()

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

    def _load_all(self) -> None:
        try:
            for inbound_id in self._ids:
                if self._stop.is_set():
                    return
                _put(self._loaded, self._load(inbound_id), self._stop)
        finally:
            _put(self._loaded, None, self._stop)

    def _load(self, inbound_id: int) -> _Loaded:
        try:
            with read_only(self._factory) as session:
                envelope = repo.inbound_envelope(session, inbound_id)
                if envelope is None:
                    return _Loaded(inbound_id)
                size, pieces = repo_raw.read_raw(session, inbound_id)
                if size >= PREFETCH_BYTES:
                    return _Loaded(inbound_id, envelope)
                return _Loaded(inbound_id, envelope, b"".join(pieces))
        except Exception as exc:  # noqa: BLE001 - handed on, see _prepare
            return _Loaded(inbound_id, error=exc)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    loaded = self._loaded.get(timeout=0.1)
                except queue.Empty:
                    continue
                if loaded is None:
                    return
                _put(self._queue, self._prepare(loaded), self._stop)
        finally:
            _put(self._queue, None, self._stop)

    def _prepare(self, loaded: _Loaded) -> Prepared:
        inbound_id = loaded.inbound_id
        if loaded.error is not None:
            return Prepared(inbound_id, error=loaded.error)
        if loaded.envelope is None:
            return Prepared(inbound_id, error=Quarantine("internal error: stored message missing"))
        envelope_from, envelope_to = loaded.envelope
        try:
            limits, cpu_seconds, noreply = self._limits()
            self._guard.cpu_seconds = cpu_seconds
            if loaded.raw is not None:
                analysed = self._guard.analyse(loaded.raw, limits, envelope_from=envelope_from,
                                               envelope_to=envelope_to, noreply_patterns=noreply)
            else:
                with read_only(self._factory) as session:
                    analysed = self._guard.analyse(lambda: repo_raw.read_raw(session, inbound_id), limits,
                                                   envelope_from=envelope_from, envelope_to=envelope_to,
                                                   noreply_patterns=noreply)
            return Prepared(inbound_id, analysed=analysed)
        except Exception as exc:  # noqa: BLE001 - handed to the processing thread, which decides the outcome
            return Prepared(inbound_id, error=exc)


def _put(into: queue.Queue[T], item: T, stop: threading.Event) -> None:
    """Put, unless the consumer has stopped (a full queue then stays full: nobody waits for the item)."""
    while not stop.is_set():
        try:
            into.put(item, timeout=0.1)
            return
        except queue.Full:
            continue
