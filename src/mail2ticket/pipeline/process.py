"""Processing orchestrator: one stored message → one transaction → exactly one outcome.

Only this module sequences the stages (parse → classify → thread → route → store → outbox) and turns
the control-flow vocabulary into row states:

| what happened                                   | inbound row     | effects in the same transaction              |
|-------------------------------------------------|-----------------|----------------------------------------------|
| new human mail                                  | done            | ticket, article, participants, ack (guarded) |
| follow-up (references, participant's tag)       | done            | article on the ticket, no second ack         |
| auto-reply to our mail (threads to a ticket)    | done            | internal note (kind auto-reply); no status   |
|                                                 |                 | change, no mail                              |
| auto-reply that threads nowhere                 | done            | ticket without ack                           |
| same Message-ID already an article              | ignored         | none (cross-channel duplicate)               |
| our own mail coming back                        | ignored         | none (loop; logged)                          |
| bounce of our mail (VERP, else DSN Message-ID)  | ignored         | outbound row failed, event on the ticket,    |
|                                                 |                 | notice to the queue's staff (guarded)        |
| bounce we cannot match                          | ignored         | none                                         |
| list mail without a rule                        | ignored         | none                                         |
| rule says ignore                                | ignored         | none                                         |
| rule says quarantine                            | quarantined     | none; raw bytes kept                         |
| parse budget breached, parser failure (guarded  | quarantined     | none; raw bytes kept, reason names the limit |
| worker: CPU, memory, wall clock)                |                 |                                              |
| parse worker cannot start, database error       | new, retried    | none; attempts+1 with backoff                |
| unexpected exception (a bug)                    | quarantined     | none; reason names the exception type        |

Parse and classify run once, in the parse worker (`parse_guard`), never on this thread's stack, so no input
can hang or crash processing. `Ignore`/`Quarantine` raised by a stage roll the message's savepoint back; the
row's outcome is then written in its place. Outcomes that carry effects (bounces) are returned instead, so
their effects commit together with the row.

Batches. A commit costs an fsync, and on SQLite the write lock is the whole database, so messages are
processed in batches: a batch of waiting ids is chosen, a helper thread parses them ahead in the parse worker
(`parse_ahead`, the second core), and this thread stores every parsed message in a savepoint of one
transaction. On SQLite the batch is chosen without the write lock, each row is re-checked under it, and the
transaction commits as soon as the next parse is not ready, so the lock is never held while waiting for the
parser. There the parse-ahead pipeline also outlives the batch (`stream`), so the next batch finds its first
messages parsed; a lost transaction or any error ends it (the messages before the culprit come next, in order).
On PostgreSQL the batch is claimed with `FOR UPDATE SKIP LOCKED` (other instances take other rows) and kept
small, because the ticket-number counter stays row-locked until the commit. Nothing leaves the machine inside a
transaction: acknowledgements are outbox rows, sent after the commit.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from mail2ticket.db import repo
from mail2ticket.db.engine import read_only, unit_of_work, writers_waiting
from mail2ticket.db.models import InboundMessage, InboundState
from mail2ticket.db.rows import update_now
from mail2ticket.db.savepoint import TransactionLost, savepoint
from mail2ticket.failpoints import failpoint
from mail2ticket.outcomes import Ignore, Quarantine
from mail2ticket.parse import Limits
from mail2ticket.parse_guard import Analysed, ParseGuard, ParseWorkerUnavailable
from mail2ticket.pipeline import automated, conversation
from mail2ticket.pipeline.outcome_lines import OutcomeLines
from mail2ticket.pipeline.parse_ahead import NOT_READY, NotReady, ParseAhead, Prepared
from mail2ticket.pipeline.stream import Stream
from mail2ticket.runtime import Runtime, Services

log = structlog.get_logger("mail2ticket.process")

MAX_TRANSIENT_ATTEMPTS = 8
# IntegrityError: another instance won a race on a unique key (participant, dedupe key); a retry sees its row.
TRANSIENT_ERRORS = (OperationalError, IntegrityError, ParseWorkerUnavailable)
SQLITE_BATCH = 256  # messages per batch (the daemon wakes the outbox and counts its metrics between batches)
RUN_MESSAGES = 64  # messages per transaction at most
ROWS_PER_QUERY = 16  # intake rows loaded at a time: a run ended early by another writer wastes few
PARSE_WORKERS = 2 if (os.cpu_count() or 1) >= 2 else 1
POSTGRES_BATCH = 8  # small: the ticket counter row stays locked until the commit, other instances wait for it
BATCH_BYTES = 32 << 20  # raw bytes per batch (a batch always takes at least one message)
RUN_WAIT_SECONDS = 0.005  # how long a transaction waits for the next parse before it commits
MAX_RUN_SECONDS = 0.5  # how long one transaction may hold the SQLite write lock at most
# How long a transaction keeps the lock although another writer waits. Under an SMTP burst the group committer
# and the outbox queue for the lock all the time; yielding at once left processing one message per transaction
# and half its time waiting for the lock. 25 ms: SMTP end to end 141-149 -> 166 msg/s, p99 DATA->250 at
# 50 msg/s 33 ms (budget 50 ms; at that rate a run rarely lasts 25 ms).
MIN_RUN_SECONDS = 0.025


@dataclass(frozen=True, slots=True)
class Result:
    inbound_id: int
    state: InboundState
    ticket_number: str | None = None
    reason: str | None = None


class Processor:
    """Claims stored messages in batches and stores each in its own savepoint of one transaction per run."""

    def __init__(self, services: Services, runtime: Callable[[], Runtime]) -> None:
        self.services = services
        self.runtime = runtime
        # Two parse workers where there are two cores: one slow parse then never stalls the stream (parse_ahead).
        self.guards = tuple(ParseGuard() for _ in range(PARSE_WORKERS))
        self.guard = self.guards[0]
        # What the failed savepoint learnt (rolled back with it), kept for the outcome row.
        self._defects: list[str] | None = None
        self._kind: str | None = None
        self._stream = Stream(services.factory, services.clock, self._parse_ahead, max_bytes=BATCH_BYTES)
        self._lines = OutcomeLines()

    def start_workers(self, *, wait: bool = False) -> None:
        """Start the parse workers side by side (the daemon and the bulk commands, before the first mail); `wait`:
        until they are ready."""
        for guard in self.guards:
            guard.start(self.runtime().limits)
        if wait:
            for guard in self.guards:
                guard.start(self.runtime().limits, wait=True)

    def close(self) -> None:
        """Stop the parse-ahead stream and the parse workers (they also exit on their own when this process ends)."""
        self._stream.end()
        for guard in self.guards:
            guard.close()

    def process_next(self, only: int | None = None) -> Result | None:
        """Process the oldest waiting message (or just `only`); None when there is nothing to do."""
        results = self.process_batch(limit=1, only=() if only is None else (only,))
        return results[0] if results else None

    def process_batch(self, limit: int | None = None, only: Sequence[int] = ()) -> list[Result]:
        """Process up to `limit` waiting messages (or those of `only` that wait); [] when there is nothing to do."""
        factory, now = self.services.factory, self.services.clock()
        if self.services.engine.dialect.name == "sqlite":
            if limit is None and not only:
                return self._stream_batch()
            self._stream.end()  # its results must not pass the messages asked for here
            with read_only(factory) as session:
                ids = repo.waiting_inbound(session, now, limit=limit or SQLITE_BATCH, max_bytes=BATCH_BYTES,
                                           only=only)
            if not ids:
                return []
            results: list[Result] = []
            with self._parse_ahead(ids) as ahead:
                self._store_results(ahead, NOT_READY, results)
            return results
        return self._claimed_batch(limit or POSTGRES_BATCH, only, now)

    def drain(self, limit: int | None = None) -> int:
        count = 0
        while limit is None or count < limit:
            results = self.process_batch(limit=None if limit is None else min(SQLITE_BATCH, limit - count))
            if not results:
                break
            count += len(results)
        return count

    # --- runs and batches -----------------------------------------------------------------------------

    def _stream_batch(self) -> list[Result]:
        """Up to SQLITE_BATCH of the waiting messages, from the stream (started if none runs)."""
        resumed = self._stream.resume(SQLITE_BATCH)
        if resumed is None:
            return []
        ahead, first = resumed
        results: list[Result] = []
        try:
            rest = self._store_results(ahead, first, results, most=SQLITE_BATCH)
        except BaseException:
            self._stream.end()
            raise
        if rest is None:  # exhausted, or a lost transaction: the next batch starts from the oldest due message
            self._stream.end()
        return results

    def _store_results(self, ahead: ParseAhead, item: Prepared | NotReady, results: list[Result],
                       most: int | None = None) -> NotReady | None:
        """Store the results of `ahead` from `item` on (NOT_READY: from its next one), run after run, until they
        are exhausted or `results` holds `most`; NOT_READY if more may follow."""
        following: Prepared | NotReady | None = item
        while following is not None and (most is None or len(results) < most):
            if isinstance(following, NotReady):
                following = ahead.next()
            else:
                room = RUN_MESSAGES if most is None else most - len(results)
                following = self._store_run(ahead, following, results, most=room)
        assert not isinstance(following, Prepared)  # a result taken is always stored: the batch has room for it
        return following

    def _parse_ahead(self, ids: Sequence[int], more: Callable[[int], list[int]] | None = None) -> ParseAhead:
        def limits() -> tuple[Limits, float, tuple[str, ...]]:
            runtime = self.runtime()
            config = runtime.config
            return runtime.limits, config.limits.parse_timeout, tuple(config.loop_protection.noreply_patterns)

        return ParseAhead(self.services.factory, self.guards, ids, limits=limits, max_bytes=BATCH_BYTES, more=more)

    def _store_run(self, ahead: ParseAhead, first: Prepared, results: list[Result],
                   most: int = RUN_MESSAGES) -> NotReady | None:
        """Store `first` and every further result that is ready (`most` in all) in one transaction; NOT_READY
        when more may follow (not taken yet, so a full batch returns without waiting for a parse), None when
        the results are exhausted or the transaction was lost.

        The transaction commits when the next parse is not ready within RUN_WAIT_SECONDS, so the SQLite write
        lock is held for storing only, never while the parser works; and when another thread (SMTP intake, the
        outbox) waits for the lock, once the run has had MIN_RUN_SECONDS: a relay's 250 never waits for a
        whole batch, and a stream of short writers cannot hold processing to one message per transaction.
        """
        run: list[int] = []
        stored: list[Result] = []
        following: Prepared | NotReady | None = None
        try:
            with self._transaction() as session:
                started = time.monotonic()  # once the write lock is ours
                rows: dict[int, InboundMessage] = {}
                item = first
                while True:
                    run.append(item.inbound_id)
                    if item.inbound_id not in rows:  # the rows of the next few messages, in one query
                        rows = repo.inbound_rows(session, ahead.following(item.inbound_id, ROWS_PER_QUERY))
                    if (result := self._one(session, item, rows.get(item.inbound_id))) is not None:
                        stored.append(result)
                    held = time.monotonic() - started
                    if (len(run) >= min(most, RUN_MESSAGES) or held > MAX_RUN_SECONDS
                            or (held >= MIN_RUN_SECONDS and writers_waiting(self.services.engine))):
                        following = NOT_READY
                        break
                    following = ahead.next(RUN_WAIT_SECONDS)
                    if not isinstance(following, Prepared):
                        break
                    item = following
        except TRANSIENT_ERRORS as exc:  # the commit failed: nothing of this run is stored
            stored = [self._defer(inbound_id, exc) for inbound_id in run]
            if isinstance(following, Prepared):  # taken into the run that failed: it waits with the others
                following = NOT_READY
        except TransactionLost as lost:
            results.extend(self._lost(run, lost))
            return None  # the batch ends: the messages before the culprit come next, in their order
        results.extend(stored)
        return None if following is None else NOT_READY

    def _claimed_batch(self, limit: int, only: Sequence[int], now: dt.datetime) -> list[Result]:
        run: list[int] = []
        started: list[int] = []
        results: list[Result] = []
        try:
            with self._transaction() as session:
                run = repo.waiting_inbound(session, now, limit=limit, max_bytes=BATCH_BYTES, only=only, claim=True)
                if not run:
                    return []
                rows = repo.inbound_rows(session, run)
                keep_open = len(run) <= POSTGRES_BATCH  # a savepoint RELEASE per message saved (db/savepoint.py)
                with self._parse_ahead(run) as ahead:
                    while isinstance(item := ahead.next(), Prepared):
                        started.append(item.inbound_id)
                        if (result := self._one(session, item, rows.get(item.inbound_id), keep_open)) is not None:
                            results.append(result)
        except TRANSIENT_ERRORS as exc:
            if not run:
                raise
            return [self._defer(inbound_id, exc) for inbound_id in run]
        except TransactionLost as lost:
            return self._lost(started, lost)
        return results

    def _lost(self, run: list[int], lost: TransactionLost) -> list[Result]:
        """The transaction ended inside the savepoint of the run's last message (a failed flush ends it all).

        Nothing of the run is stored. That message is tried again later (a transient cause) or quarantined (a
        bug); the messages before it were fine and simply wait again, with no attempt counted against them.
        """
        *waiting, culprit = run
        results = [Result(inbound_id, InboundState.NEW, reason="deferred: transaction lost") for inbound_id in waiting]
        cause = lost.__cause__ if isinstance(lost.__cause__, Exception) else lost
        if isinstance(cause, TRANSIENT_ERRORS):
            results.append(self._defer(culprit, cause))
            return results
        log.error("processing_failed", inbound_id=culprit, exc_info=cause)
        with self._transaction() as session:
            result = self._finish(session, culprit, InboundState.QUARANTINED, f"internal error: {type(cause).__name__}")
        results.append(result or Result(culprit, InboundState.DONE, reason="finished elsewhere"))
        return results

    def _one(self, session: Session, item: Prepared, inbound: InboundMessage | None,
             keep_open: bool = False) -> Result | None:
        """One message in its own savepoint; None if it no longer waits (processed meanwhile by another process).

        `inbound` was loaded in this transaction: under SQLite's write lock, or claimed (PostgreSQL).
        """
        self._defects, self._kind = None, None
        try:
            with self._lines.rolled_back_with(), savepoint(session, keep_open=keep_open):
                if inbound is None or inbound.state != InboundState.NEW:
                    return None
                if item.error is not None:
                    raise item.error
                assert item.analysed is not None
                return self._process(session, inbound, item.analysed)
        except Quarantine as outcome:
            return self._finish(session, item.inbound_id, InboundState.QUARANTINED, outcome.reason)
        except Ignore as outcome:
            return self._finish(session, item.inbound_id, InboundState.IGNORED, outcome.reason)
        except TRANSIENT_ERRORS as exc:
            return self._postpone(session, item.inbound_id, exc)
        except TransactionLost:
            raise
        except Exception as exc:
            log.exception("processing_failed", inbound_id=item.inbound_id)
            return self._finish(session, item.inbound_id, InboundState.QUARANTINED,
                                f"internal error: {type(exc).__name__}")

    # --- outcomes ---------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[Session]:
        """A unit of work whose outcome lines (`self._lines`) are written after its commit (`processing_failed`,
        with its traceback, at once)."""
        with self._lines.after_commit(), unit_of_work(self.services.factory) as session:
            yield session

    def _finish(self, session: Session, inbound_id: int, state: InboundState, reason: str) -> Result | None:
        row = repo.lock_waiting_inbound(session, inbound_id)
        if row is None:
            return None
        row.state = state
        row.reason = reason[:2000]
        row.attempts += 1
        row.processed_at = self.services.clock()
        if self._defects is not None:
            row.defects = self._defects
        if self._kind is not None:
            row.classification = self._kind
        repo.add_event(session, f"message_{state.value}", inbound_id=inbound_id, reason=reason[:500])
        self._lines.add(log.warning if state == InboundState.QUARANTINED else log.info, "message_" + state.value,
                        inbound_id=inbound_id, reason=reason)
        return Result(inbound_id, state, reason=reason)

    def _postpone(self, session: Session, inbound_id: int, exc: Exception) -> Result | None:
        """A transient failure: try again later with backoff; quarantine after MAX_TRANSIENT_ATTEMPTS."""
        row = repo.lock_waiting_inbound(session, inbound_id)
        if row is None:
            return None
        row.attempts += 1
        if row.attempts >= MAX_TRANSIENT_ATTEMPTS:
            row.state = InboundState.QUARANTINED
            row.reason = f"gave up after {row.attempts} transient errors: {type(exc).__name__}"
        else:
            row.not_before = self.services.clock() + dt.timedelta(seconds=min(300, 2**row.attempts))
        self._lines.add(log.warning, "processing_deferred", inbound_id=inbound_id, error=type(exc).__name__)
        return Result(inbound_id, InboundState.NEW, reason=f"deferred: {type(exc).__name__}")

    def _defer(self, inbound_id: int, exc: Exception) -> Result:
        """`_postpone` in a transaction of its own, after the run's transaction failed."""
        with self._transaction() as session:
            result = self._postpone(session, inbound_id, exc)
        return result or Result(inbound_id, InboundState.DONE, reason="finished elsewhere")

    # --- the stages ---------------------------------------------------------------------------------

    def _process(self, session: Session, inbound: InboundMessage, analysed: Analysed) -> Result:
        runtime = self.runtime()
        config = runtime.config
        now = self.services.clock()
        bound = log.bind(inbound_id=inbound.id, message_id=inbound.message_id, mailbox=inbound.mailbox)
        parsed, classification = analysed.parsed, analysed.classification
        self._defects, self._kind = list(parsed.defects)[:50], classification.kind
        automated.reject_own_mail(parsed, config)
        if parsed.message_id and (dup := repo.article_with_message_id(session, parsed.message_id)) is not None:
            raise Ignore(f"duplicate of article {dup.id} (same Message-ID)")
        handled = automated.handle_automated(session, runtime, inbound, parsed, classification, now)
        if handled is not None:
            self._record(session, inbound, InboundState.IGNORED, now, reason=handled.reason[:2000],
                         ticket_id=handled.ticket_id)
            repo.add_event(session, "message_ignored", inbound_id=inbound.id, reason=handled.reason[:500])
            self._lines.add(bound.info, "message_ignored", reason=handled.reason, classification=classification.kind)
            return Result(inbound.id, InboundState.IGNORED, reason=handled.reason)
        ticket, outcome = conversation.handle(session, runtime, inbound, parsed, classification, now)
        self._record(session, inbound, InboundState.DONE, now, ticket_id=ticket.id)
        failpoint("process.before_commit")
        self._lines.add(bound.info, "message_processed", outcome=outcome, ticket=ticket.number, queue=ticket.queue,
                        classification=classification.kind)
        return Result(inbound.id, InboundState.DONE, ticket.number)

    def _record(self, session: Session, inbound: InboundMessage, state: InboundState, now: dt.datetime,
                **more: Any) -> None:
        """The message's outcome, written at once in one UPDATE (the last write of its savepoint)."""
        update_now(session, inbound, state=state, processed_at=now, attempts=inbound.attempts + 1,
                   defects=self._defects, classification=self._kind, **more)
