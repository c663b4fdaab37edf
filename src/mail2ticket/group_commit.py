"""Group commit for SMTP/LMTP intake: one committer thread stores the messages of all sessions in shared
transactions, so concurrent sessions share one fsync instead of queueing on SQLite's write lock one by one.

A session hands over its message (`store`); hashing and the Message-ID are computed first (in the intake
thread pool for large messages), then the message waits in a queue. The committer takes whatever is queued
(up to `max_batch` messages or `max_batch_bytes`, never waiting for more: under light load a batch is one
message and costs what it did before), inserts each one with `intake.insert` in one transaction, commits,
and only then resolves the sessions' futures, so 250 still means "committed durably".

| situation                                              | effect for the sessions of the batch              |
|--------------------------------------------------------|---------------------------------------------------|
| the transaction commits                                | each gets its row id (new or duplicate) → 250     |
| a message duplicates one stored earlier in the batch   | it gets that row's id, duplicate=True (one row)   |
| IntegrityError for one message (another instance       | its savepoint is rolled back and it gets the other |
| stored it between our check and our insert)            | instance's row; the rest of the batch goes on     |
| DataError for one message (a value the server refuses) | savepoint rolled back; that session alone fails   |
| anything else (lock timeout, disk full, failed commit) | every session of the batch fails → 451, never 250 |
| committer closed (shutdown) or its thread gone         | `store` fails at once → 451                       |

IMAP and `import` store a fetched or read batch per transaction themselves; `ingest` uses `intake.store`.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field

import structlog
from sqlalchemy.exc import DataError
from sqlalchemy.orm import Session, sessionmaker

from mail2ticket.db.engine import unit_of_work
from mail2ticket.failpoints import failpoint
from mail2ticket.intake import Envelope, Prepared, Stored, insert_or_existing, prepare

log = structlog.get_logger("mail2ticket.intake")

MAX_BATCH = 64
MAX_BATCH_BYTES = 8 << 20
# Hashing a message this small costs less than the hand-off to a pool thread, so it is done on the loop.
INLINE_PREPARE_BYTES = 64 << 10

OnStored = Callable[[Envelope, Stored], None]


@dataclass
class _Item:
    prepared: Prepared
    future: Future[Stored] = field(default_factory=Future)


class GroupCommitter:
    """The single writer for SMTP intake; `store` is safe to call from any number of sessions at once."""

    def __init__(self, factory: sessionmaker[Session], executor: Executor, *, on_stored: OnStored | None = None,
                 max_batch: int = MAX_BATCH, max_batch_bytes: int = MAX_BATCH_BYTES) -> None:
        self._factory = factory
        self._executor = executor
        self._on_stored = on_stored
        self._max_batch = max_batch
        self._max_batch_bytes = max_batch_bytes
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="intake-commit", daemon=True)
        self.batches = 0  # committed transactions, for tests and the log

    def start(self) -> None:
        self._thread.start()

    def close(self, timeout: float | None = None) -> None:
        """Commit what is queued, then stop the thread; later `submit` calls fail."""
        self._closed = True
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout)

    async def store(self, parts: Sequence[bytes], envelope: Envelope) -> Stored:
        """Hash the message, queue it, and return once the transaction holding it has committed."""
        size = sum(len(p) for p in parts)
        if size <= INLINE_PREPARE_BYTES:
            prepared = prepare(parts, envelope)
        else:
            prepared = await asyncio.get_running_loop().run_in_executor(self._executor, prepare, parts, envelope)
        return await asyncio.wrap_future(self.submit(prepared))

    def submit(self, prepared: Prepared) -> Future[Stored]:
        """Queue one message; the future resolves after the commit (or fails, and nothing of it is promised).

        Messages queued before `start` make up its first batch."""
        if self._closed or (self._thread.ident is not None and not self._thread.is_alive()):
            raise RuntimeError("intake committer is not running")
        item = _Item(prepared)
        self._queue.put(item)
        return item.future

    # --- the committer thread --------------------------------------------------------------------------

    def _run(self) -> None:
        while self._round():
            pass
        # `submit` refuses after close; anything that slipped in between is failed, not left hanging.
        while True:
            try:
                left = self._queue.get_nowait()
            except queue.Empty:
                return
            if left is not None and left.future.set_running_or_notify_cancel():
                left.future.set_exception(RuntimeError("intake committer stopped"))

    def _round(self) -> bool:
        """Wait for work, commit one batch; False once closed. A method of its own so that the batch (and the
        messages' bytes) is released when it returns, not kept alive by loop variables while the thread idles."""
        first = self._queue.get()
        if first is None:
            return False
        batch: list[_Item] = []
        stopping = self._take(first, batch, more=False)
        if not batch:  # that session gave up before its turn
            return True
        try:
            with unit_of_work(self._factory) as session:
                # Take the write lock first (BEGIN IMMEDIATE), then the rest of the batch: whatever queued while
                # this thread waited for the lock is committed with this transaction, not one wait later.
                session.connection()
                stopping = stopping or self._take(None, batch)
                results = [self._insert_one(session, item.prepared) for item in batch]
                failpoint("intake.batch_before_commit")
        except Exception as exc:  # noqa: BLE001 - every session of the batch answers 451; none may get 250
            if not stopping:  # what queued meanwhile would wait for the same lock or fail the same way
                stopping = self._take(None, batch)
            log.error("intake_batch_failed", messages=len(batch), error=f"{type(exc).__name__}: {str(exc)[:200]}")
            for item in batch:
                item.future.set_exception(exc)
            return not stopping
        self.batches += 1
        for item, result in zip(batch, results, strict=True):
            if isinstance(result, Exception):
                item.future.set_exception(result)
                continue
            if self._on_stored is not None:
                with contextlib.suppress(Exception):  # counting and waking must never fail a stored message
                    self._on_stored(item.prepared.envelope, result)
            item.future.set_result(result)
        return not stopping

    def _take(self, item: _Item | None, batch: list[_Item], *, more: bool = True) -> bool:
        """Add `item` and (if `more`) whatever else is queued to `batch`, within the limits; True if close
        was requested. Items whose session gave up (future cancelled) are dropped; the others are marked
        running, so they can no longer be cancelled and each gets a result or an exception."""
        size = sum(i.prepared.size for i in batch)
        while True:
            if item is not None and item.future.set_running_or_notify_cancel():
                batch.append(item)
                size += item.prepared.size
            if not more or len(batch) >= self._max_batch or size >= self._max_batch_bytes:
                return False
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return False
            if item is None:
                return True

    @staticmethod
    def _insert_one(session: Session, prepared: Prepared) -> Stored | Exception:
        try:
            return insert_or_existing(session, prepared)
        except DataError as exc:  # a value the server refuses: only this session fails (its savepoint is gone)
            log.warning("intake_message_refused", size=prepared.size, error=str(exc)[:200])
            return exc
