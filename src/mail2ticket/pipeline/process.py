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
can hang or crash processing. `Ignore`/`Quarantine` raised by a stage roll the transaction back; the row's
outcome is then written in a second short transaction. Outcomes that carry effects (bounces) are returned
instead, so their effects commit together with the row.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass

import structlog
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from mail2ticket.db import repo
from mail2ticket.db.engine import unit_of_work
from mail2ticket.db.models import InboundMessage, InboundState
from mail2ticket.failpoints import failpoint
from mail2ticket.outcomes import Ignore, Quarantine
from mail2ticket.parse_guard import ParseGuard, ParseWorkerUnavailable
from mail2ticket.pipeline import automated, conversation
from mail2ticket.runtime import Runtime, Services

log = structlog.get_logger("mail2ticket.process")

MAX_TRANSIENT_ATTEMPTS = 8
# IntegrityError: another instance won a race on a unique key (participant, dedupe key); a retry sees its row.
TRANSIENT_ERRORS = (OperationalError, IntegrityError, ParseWorkerUnavailable)


@dataclass(frozen=True, slots=True)
class Result:
    inbound_id: int
    state: InboundState
    ticket_number: str | None = None
    reason: str | None = None


class Processor:
    """Claims stored messages one at a time and processes each in its own transaction."""

    def __init__(self, services: Services, runtime: Callable[[], Runtime]) -> None:
        self.services = services
        self.runtime = runtime
        self.guard = ParseGuard()
        # What the failed transaction learnt (rolled back with it), kept for the outcome row.
        self._defects: list[str] | None = None
        self._kind: str | None = None

    def close(self) -> None:
        """Stop the parse worker (it also exits on its own when this process ends)."""
        self.guard.close()

    def process_next(self, only: int | None = None) -> Result | None:
        """Process the oldest waiting message (or just `only`); None when there is nothing to do."""
        claimed_id: int | None = None
        self._defects, self._kind = None, None
        try:
            with unit_of_work(self.services.factory) as session:
                inbound = repo.claim_next_inbound(session, self.services.clock(), only=only)
                if inbound is None:
                    return None
                claimed_id = inbound.id
                return self._process(session, inbound)
        except Quarantine as outcome:
            assert claimed_id is not None
            return self._finish(claimed_id, InboundState.QUARANTINED, outcome.reason)
        except Ignore as outcome:
            assert claimed_id is not None
            return self._finish(claimed_id, InboundState.IGNORED, outcome.reason)
        except TRANSIENT_ERRORS as exc:
            if claimed_id is None:
                raise
            return self._defer(claimed_id, exc)
        except Exception as exc:
            if claimed_id is None:
                raise
            log.exception("processing_failed", inbound_id=claimed_id)
            return self._finish(claimed_id, InboundState.QUARANTINED, f"internal error: {type(exc).__name__}")

    def drain(self, limit: int | None = None) -> int:
        count = 0
        while limit is None or count < limit:
            if self.process_next() is None:
                break
            count += 1
        return count

    # --- outcomes ---------------------------------------------------------------------------------

    def _finish(self, inbound_id: int, state: InboundState, reason: str) -> Result:
        with unit_of_work(self.services.factory) as session:
            row = repo.lock_waiting_inbound(session, inbound_id)
            if row is None:  # another instance finished it after our transaction rolled back: keep its result
                return Result(inbound_id, InboundState.DONE, reason="finished elsewhere")
            row.state = state
            row.reason = reason[:2000]
            row.attempts += 1
            row.processed_at = self.services.clock()
            if self._defects is not None:
                row.defects = self._defects
            if self._kind is not None:
                row.classification = self._kind
            repo.add_event(session, f"message_{state.value}", inbound_id=inbound_id, reason=reason[:500])
        level = log.warning if state == InboundState.QUARANTINED else log.info
        level("message_" + state.value, inbound_id=inbound_id, reason=reason)
        return Result(inbound_id, state, reason=reason)

    def _defer(self, inbound_id: int, exc: Exception) -> Result:
        with unit_of_work(self.services.factory) as session:
            row = repo.lock_waiting_inbound(session, inbound_id)
            if row is None:
                return Result(inbound_id, InboundState.DONE, reason="finished elsewhere")
            row.attempts += 1
            if row.attempts >= MAX_TRANSIENT_ATTEMPTS:
                row.state = InboundState.QUARANTINED
                row.reason = f"gave up after {row.attempts} transient errors: {type(exc).__name__}"
            else:
                row.not_before = self.services.clock() + dt.timedelta(seconds=min(300, 2**row.attempts))
        log.warning("processing_deferred", inbound_id=inbound_id, error=type(exc).__name__)
        return Result(inbound_id, InboundState.NEW, reason=f"deferred: {type(exc).__name__}")

    # --- the stages ---------------------------------------------------------------------------------

    def _process(self, session: Session, inbound: InboundMessage) -> Result:
        runtime = self.runtime()
        config = runtime.config
        now = self.services.clock()
        bound = log.bind(inbound_id=inbound.id, message_id=inbound.message_id, mailbox=inbound.mailbox)
        assert inbound.raw is not None
        self.guard.cpu_seconds = config.limits.parse_timeout
        analysed = self.guard.analyse(inbound.raw.data, runtime.limits, envelope_from=inbound.envelope_from,
                                      envelope_to=inbound.envelope_to,
                                      noreply_patterns=config.loop_protection.noreply_patterns)
        parsed, classification = analysed.parsed, analysed.classification
        inbound.defects = list(parsed.defects)[:50]
        inbound.classification = classification.kind
        self._defects, self._kind = list(inbound.defects), classification.kind
        automated.reject_own_mail(parsed, config)
        if parsed.message_id and (dup := repo.article_with_message_id(session, parsed.message_id)) is not None:
            raise Ignore(f"duplicate of article {dup.id} (same Message-ID)")
        handled = automated.handle_automated(session, runtime, inbound, parsed, classification, now)
        if handled is not None:
            inbound.state = InboundState.IGNORED
            inbound.reason = handled.reason[:2000]
            inbound.ticket_id = handled.ticket_id
            inbound.processed_at = now
            inbound.attempts += 1
            repo.add_event(session, "message_ignored", inbound_id=inbound.id, reason=handled.reason[:500])
            bound.info("message_ignored", reason=handled.reason, classification=classification.kind)
            return Result(inbound.id, InboundState.IGNORED, reason=handled.reason)
        ticket, outcome = conversation.handle(session, runtime, inbound, parsed, classification, now)
        inbound.state = InboundState.DONE
        inbound.ticket_id = ticket.id
        inbound.processed_at = now
        inbound.attempts += 1
        failpoint("process.before_commit")
        bound.info("message_processed", outcome=outcome, ticket=ticket.number, queue=ticket.queue,
                   classification=classification.kind)
        return Result(inbound.id, InboundState.DONE, ticket.number)
