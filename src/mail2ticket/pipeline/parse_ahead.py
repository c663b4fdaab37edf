"""Parse ahead: helper threads feed claimed messages through the parse workers while processing stores.

Parsing runs in parse worker processes (`parse_guard`), so it uses the other core while the processing thread
writes the previous messages to the database. The helper threads only read (a read-only snapshot, no write lock)
and wait on the workers' pipes, so they hardly compete for the GIL.

One thread reads the next messages (envelope and, below PREFETCH_BYTES, the raw bytes; READ_CHUNK of them in one
query) while the workers parse, so no worker sits idle while its next job is fetched. Larger messages are read
piece by piece while they are sent and never held whole here. The messages are dealt to the workers in turn
("lanes", one thread each), and the results are handed out in the order of `ids` (a reply must be stored after
the mail it answers). A lane submits its next small mail while the worker parses the one before, so the worker
finds it in its pipe instead of waiting for the lane thread, which shares the interpreter lock with the
processing thread, to read the answer and write the next job. With two workers a slow parse (a 2 MB attachment)
does not stall the stream: the other worker keeps parsing the messages behind it, and because parsing then
outruns storing, a large mail is usually started well before it is needed.

At most `depth` results wait per lane, and the messages sent on to the lanes but not yet handed out hold at most
`max_bytes` of raw mail (or one message, however large; the chunk being read holds up to READ_CHUNK more): a
backlog of large mails cannot pile up in memory. The depth lets one
lane run well ahead while the other parses a large mail that processing waits for in order (a 2 MB attachment
takes ~50 ms here): with 8, the small-mail lane stalled after ~25 ms; 32 took processing from 0.47 to 0.52 of
its floor (docs/benchmarks.md, optimisation 30).

With `more`, the reader asks for the messages after the last one it read once it has read all it was given, so
the pipeline runs on without emptying between one batch of processing and the next (optimisation 33).
"""

from __future__ import annotations

import collections
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import structlog
from sqlalchemy.orm import Session, sessionmaker

from mail2ticket.db import repo_raw
from mail2ticket.db.engine import read_only
from mail2ticket.handoff import put_unless_stopped
from mail2ticket.outcomes import Quarantine
from mail2ticket.parse import Limits
from mail2ticket.parse_guard import Analysed, ParseGuard

log = structlog.get_logger("mail2ticket.parse_ahead")

PREFETCH_BYTES = 1 << 20
PREFETCH_DEPTH = 4  # small messages read ahead per lane: at most 4 MiB each
READ_CHUNK = repo_raw.READ_AHEAD_IDS  # messages read in one query (at most 8 MiB more held while they wait)


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
    size: int = 0


class NotReady:
    """The next message is still being parsed."""


NOT_READY = NotReady()


class _Lane:
    """One parse worker's share: the messages read for it, and its results in order."""

    def __init__(self, guard: ParseGuard, depth: int) -> None:
        self.guard = guard
        self.jobs: queue.Queue[_Loaded | None] = queue.Queue(maxsize=PREFETCH_DEPTH)
        self.results: queue.Queue[Prepared | None] = queue.Queue(maxsize=depth)


class ParseAhead:
    """Iterates the parse results of `ids` in order; use as a context manager so the thread always ends.

    `more(after)`, called on the reader thread, gives the ids of further messages after id `after` (ascending;
    [] ends the stream); their results follow those of `ids`.
    """

    def __init__(self, factory: sessionmaker[Session], guards: Sequence[ParseGuard], ids: Sequence[int], *,
                 limits: Callable[[], tuple[Limits, float, tuple[str, ...]]], depth: int = 32,
                 max_bytes: int = 32 << 20, more: Callable[[int], Sequence[int]] | None = None) -> None:
        self._factory = factory
        self._ids = list(ids)
        self._position = {inbound_id: i for i, inbound_id in enumerate(self._ids)}
        self._limits = limits
        self._more = more
        lanes = guards if more is not None else guards[:max(1, len(self._ids))]
        self._lanes = [_Lane(guard, depth) for guard in lanes]
        self._stop = threading.Event()
        self._handed = 0
        self._done = False
        self._max_bytes = max_bytes
        self._held = threading.Condition()
        self._held_bytes = 0  # raw size of the messages dealt and not yet handed out (guarded by _held)
        self._sizes: collections.deque[int] = collections.deque()  # theirs, in the order dealt and handed out
        self._threads = [threading.Thread(target=self._load_all, name="parse-ahead-read", daemon=True)] + [
            threading.Thread(target=self._run, args=(lane,), name=f"parse-ahead-{i}", daemon=True)
            for i, lane in enumerate(self._lanes)]

    def following(self, inbound_id: int, count: int) -> list[int]:
        """`inbound_id` (one of the ids handed out) and up to `count - 1` ids after it, in order."""
        start = self._position[inbound_id]
        return self._ids[start:start + count]

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
        results = self._lanes[self._handed % len(self._lanes)].results
        try:
            item = results.get(timeout=timeout) if timeout is None or timeout > 0 else results.get_nowait()
        except queue.Empty:
            return NOT_READY
        if item is None:
            self._done = True
            return None
        self._handed += 1
        with self._held:
            self._held_bytes -= self._sizes.popleft()
            self._held.notify()
        return item

    def _load_all(self) -> None:
        dealt = 0
        try:
            batch = list(self._ids)
            while batch:
                for start in range(0, len(batch), READ_CHUNK):
                    for loaded in self._load(batch[start:start + READ_CHUNK]):
                        if not self._hold(loaded):
                            return
                        put_unless_stopped(self._lanes[dealt % len(self._lanes)].jobs, loaded, self._stop)
                        dealt += 1
                batch = self._next_ids(batch[-1])
        finally:
            for lane in self._lanes:
                put_unless_stopped(lane.jobs, None, self._stop)

    def _next_ids(self, after: int) -> list[int]:
        """The further messages `more` gives (recorded before they are read, for `following`); [] ends it."""
        if self._more is None or self._stop.is_set():
            return []
        try:
            batch = [inbound_id for inbound_id in self._more(after) if inbound_id not in self._position]
        except Exception:  # noqa: BLE001 - the stream just ends; the next batch asks the database again
            log.warning("parse_ahead_refill_failed", exc_info=True)
            return []
        for inbound_id in batch:
            self._position[inbound_id] = len(self._ids)
            self._ids.append(inbound_id)
        return batch

    def _hold(self, loaded: _Loaded) -> bool:
        """Wait until `loaded` fits into `max_bytes` with the messages not yet handed out (one always fits);
        False when stopped meanwhile."""
        with self._held:
            while self._held_bytes and self._held_bytes + loaded.size > self._max_bytes:
                if self._stop.is_set():
                    return False
                self._held.wait(0.1)
            self._held_bytes += loaded.size
            self._sizes.append(loaded.size)
        return not self._stop.is_set()

    def _load(self, chunk: Sequence[int]) -> list[_Loaded]:
        """The next messages, read in one snapshot (closed before they are handed on: no long read transaction)."""
        try:
            with read_only(self._factory) as session:
                found = repo_raw.read_ahead(session, chunk, below=PREFETCH_BYTES)
        except Exception as exc:  # noqa: BLE001 - handed on, see _prepare
            return [_Loaded(inbound_id, error=exc) for inbound_id in chunk]
        loaded = []
        for inbound_id in chunk:
            if (row := found.get(inbound_id)) is None:
                loaded.append(_Loaded(inbound_id))
                continue
            envelope, size, raw = row
            if size is None:
                error = LookupError(f"raw bytes of inbound message {inbound_id} are missing")
                loaded.append(_Loaded(inbound_id, error=error))
            else:  # a large message (raw None) is read piece by piece while it is sent to the worker
                loaded.append(_Loaded(inbound_id, envelope, raw, size=size))
        return loaded

    def _run(self, lane: _Lane) -> None:
        waiting: collections.deque[_Loaded] = collections.deque()  # in order; the small ones submitted to the worker
        more = True
        try:
            while not self._stop.is_set():
                # The next small mail is submitted while the worker parses the oldest, so it waits in the worker's
                # pipe (`ParseGuard.submit`); a large one is streamed when it is the oldest, so none is taken past it.
                if more and len(waiting) < 2 and not (waiting and _streamed(waiting[-1])):
                    try:
                        loaded = lane.jobs.get_nowait() if waiting else lane.jobs.get(timeout=0.1)
                    except queue.Empty:
                        pass
                    else:
                        if loaded is None:
                            more = False
                        else:
                            waiting.append(self._submit(lane.guard, loaded))
                            continue
                if waiting:
                    put_unless_stopped(lane.results, self._prepare(lane.guard, waiting.popleft()), self._stop)
                elif not more:
                    return
        finally:
            try:
                lane.guard.discard()  # a batch ended early: no answer of it may reach the next batch
            finally:
                put_unless_stopped(lane.results, None, self._stop)

    def _submit(self, guard: ParseGuard, loaded: _Loaded) -> _Loaded:
        """Hand a small mail to the worker now; the loaded mail, or what went wrong in its place."""
        if loaded.error is not None or loaded.envelope is None or loaded.raw is None:
            return loaded
        try:
            limits, cpu_seconds, noreply = self._limits()
            guard.cpu_seconds = cpu_seconds
            guard.submit(loaded.raw, limits, envelope_from=loaded.envelope[0], envelope_to=loaded.envelope[1],
                         noreply_patterns=noreply)
            return loaded
        except Exception as exc:  # noqa: BLE001 - handed to the processing thread, which decides the outcome
            return _Loaded(loaded.inbound_id, error=exc)

    def _prepare(self, guard: ParseGuard, loaded: _Loaded) -> Prepared:
        inbound_id = loaded.inbound_id
        if loaded.error is not None:
            return Prepared(inbound_id, error=loaded.error)
        if loaded.envelope is None:
            return Prepared(inbound_id, error=Quarantine("internal error: stored message missing"))
        envelope_from, envelope_to = loaded.envelope
        try:
            if loaded.raw is not None:  # submitted (see _submit)
                return Prepared(inbound_id, analysed=guard.collect())
            limits, cpu_seconds, noreply = self._limits()
            guard.cpu_seconds = cpu_seconds
            with read_only(self._factory) as session:
                analysed = guard.analyse(lambda: repo_raw.read_raw(session, inbound_id), limits,
                                         envelope_from=envelope_from, envelope_to=envelope_to,
                                         noreply_patterns=noreply)
            return Prepared(inbound_id, analysed=analysed)
        except Exception as exc:  # noqa: BLE001 - handed to the processing thread, which decides the outcome
            return Prepared(inbound_id, error=exc)


def _streamed(loaded: _Loaded) -> bool:
    """A large mail: its bytes are read from the database while they are sent to the worker."""
    return loaded.error is None and loaded.envelope is not None and loaded.raw is None
