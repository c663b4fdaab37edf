"""Processing orchestrator: one stored message → one transaction → exactly one outcome.

Only this module sequences the stages (parse → classify → thread → route → store → outbox) and turns
the control-flow vocabulary into row states:

| what happened                                   | inbound row     | effects in the same transaction              |
|-------------------------------------------------|-----------------|----------------------------------------------|
| new human mail                                  | done            | ticket, article, participants, ack (guarded) |
| follow-up (references, participant's tag)       | done            | article on the ticket, no second ack         |
| same Message-ID already an article              | ignored         | none (cross-channel duplicate)               |
| our own mail coming back                        | ignored         | none (loop)                                  |
| bounce / list mail without a rule               | ignored         | event (bounce matched to its outbound row)   |
| rule says ignore                                | ignored         | none                                         |
| rule says quarantine, or `Quarantine` raised    | quarantined     | none; raw bytes kept                         |
| database error (transient)                      | new, retried    | none; attempts+1 with backoff                |
| unexpected exception (a bug)                    | quarantined     | none; reason names the exception type        |
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass

import structlog
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from mail2ticket.classify import classify
from mail2ticket.db import repo
from mail2ticket.db.engine import unit_of_work
from mail2ticket.db.models import InboundMessage, InboundState
from mail2ticket.failpoints import failpoint
from mail2ticket.headers import strip_control_headers
from mail2ticket.outcomes import Ignore, Quarantine
from mail2ticket.parse import parse
from mail2ticket.pipeline import automated, conversation
from mail2ticket.runtime import Runtime, Services

log = structlog.get_logger("mail2ticket.process")

MAX_TRANSIENT_ATTEMPTS = 8
TRANSIENT_ERRORS = (OperationalError,)


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

    def process_next(self, only: int | None = None) -> Result | None:
        """Process the oldest waiting message (or just `only`); None when there is nothing to do."""
        claimed_id: int | None = None
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
        except Exception as exc:  # noqa: BLE001 - a bug must park the message, not stop the worker
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
            row = repo.get_inbound(session, inbound_id)
            assert row is not None
            row.state = state
            row.reason = reason[:2000]
            row.attempts += 1
            row.processed_at = self.services.clock()
            repo.add_event(session, f"message_{state.value}", inbound_id=inbound_id, reason=reason[:500])
        level = log.warning if state == InboundState.QUARANTINED else log.info
        level("message_" + state.value, inbound_id=inbound_id, reason=reason)
        return Result(inbound_id, state, reason=reason)

    def _defer(self, inbound_id: int, exc: Exception) -> Result:
        with unit_of_work(self.services.factory) as session:
            row = repo.get_inbound(session, inbound_id)
            assert row is not None
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
        parsed = parse(inbound.raw.data, runtime.limits)
        inbound.defects = list(parsed.defects)[:50]
        automated.reject_own_mail(parsed, config)
        strip_control_headers(parsed.msg)
        classification = classify(parsed.msg, inbound.envelope_from, inbound.envelope_to,
                                  config.loop_protection.noreply_patterns)
        inbound.classification = classification.kind
        if parsed.message_id and (dup := repo.article_with_message_id(session, parsed.message_id)) is not None:
            raise Ignore(f"duplicate of article {dup.id} (same Message-ID)")
        automated.handle_automated(session, runtime, inbound, parsed, classification, now)
        ticket, outcome = conversation.handle(session, runtime, inbound, parsed, classification, now)
        inbound.state = InboundState.DONE
        inbound.ticket_id = ticket.id
        inbound.processed_at = now
        inbound.attempts += 1
        failpoint("process.before_commit")
        bound.info("message_processed", outcome=outcome, ticket=ticket.number, queue=ticket.queue,
                   classification=classification.kind)
        return Result(inbound.id, InboundState.DONE, ticket.number)
