"""Outbox worker: claims due mails, delivers them outside any transaction, records the result.

| delivery result            | row becomes                                   |
|----------------------------|-----------------------------------------------|
| accepted                   | sent                                          |
| transient error            | queued again, next attempt after backoff      |
| transient past give-up     | failed (event on the ticket)                  |
| permanent error            | failed (event on the ticket)                  |
| instance dies mid-send     | stays `sending` until the lease expires, then |
|                            | another worker resends with the same bytes    |

A claimed batch is sent row by row through the one deliverer, so with SMTP it shares one smarthost session
(see `outbox.deliver.SmtpDeliverer`), and each row's result is recorded durably right after its own send: a
crash between send and record can double at most that one mail (T20). A sent mail is recorded in the database
in its own commit, or, on SQLite, in the delivery journal (`outbox.journal`), which is folded into the database
once per batch (by the next batch's claim, after a full one), so that the outbox does not wait for the single
write lock once per mail. The daemon wakes this worker after every processed message; otherwise it sleeps until
the next row is due.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import random
from collections.abc import Callable

import structlog
from sqlalchemy.orm import Session, sessionmaker

from mail2ticket.config.model import SmtpOutConfig
from mail2ticket.db import repo
from mail2ticket.db.engine import read_only, unit_of_work
from mail2ticket.db.models import OutboundState
from mail2ticket.failpoints import failpoint
from mail2ticket.outbox.deliver import Deliverer, PermanentDeliveryError, TransientDeliveryError
from mail2ticket.outbox.journal import DeliveryJournal, Sent

log = structlog.get_logger("mail2ticket.outbox")


def backoff(attempt: int, initial: float, maximum: float, rng: random.Random) -> dt.timedelta:
    """Exponential backoff with ±20 % jitter, so many failed mails do not retry in lockstep."""
    base = min(maximum, initial * (2 ** max(0, attempt - 1)))
    return dt.timedelta(seconds=base * rng.uniform(0.8, 1.2))


class OutboxWorker:
    def __init__(
        self,
        factory: sessionmaker[Session],
        deliverer: Deliverer,
        config: SmtpOutConfig,
        owner: str,
        clock: Callable[[], dt.datetime],
        journal: DeliveryJournal | None = None,
    ) -> None:
        self.factory = factory
        self.journal = journal
        self.deliverer = deliverer
        self.config = config
        self.owner = owner
        self.clock = clock
        self.lease = dt.timedelta(seconds=config.timeout * 3 + 60)
        self._rng = random.Random()

    def run_once(self, limit: int = 10) -> int:
        """Send up to `limit` due mails; returns how many were claimed (call again at once when it is `limit`)."""
        # Looking costs no write lock: the daemon wakes this worker after every processing run, and a write
        # transaction that finds nothing would still end the processing run that holds the lock.
        journal = self.journal
        journaled = self.journal_pending()
        if not journaled:
            with read_only(self.factory) as session:
                if not repo.outbound_due(session, self.clock()):
                    return 0
        with unit_of_work(self.factory) as session:
            if journal is not None and journaled:
                # left by a full batch, a crash or a failed fold: recorded before anything is claimed, so none of
                # it is sent again
                record_journaled(session, journal.entries())
            claimed = [
                (row.id, row.envelope_from, row.recipient, row.raw, row.message_id)
                for row in repo.claim_due_outbound(session, self.owner, self.clock(), self.lease, limit)
            ]
        if journal is not None and journaled:
            journal.clear()
        try:
            for outbound_id, envelope_from, recipient, raw, message_id in claimed:
                self._send(outbound_id, envelope_from, recipient, raw, message_id)
        except BaseException:
            with contextlib.suppress(Exception):  # else the next claim folds them; the first error is the one to see
                self.fold_journal()
            raise
        # After a full batch the caller comes back at once, and its claim folds these lines: one wait for the
        # write lock per batch instead of two (each wait may last a processing run, >= 25 ms).
        if len(claimed) < limit:
            self.fold_journal()
        return len(claimed)

    def journal_pending(self) -> bool:
        """Whether mails recorded as sent in the journal wait to be recorded in the database."""
        return self.journal is not None and self.journal.pending()

    def fold_journal(self) -> None:
        """Record in the database what the journal names as sent, then empty it."""
        if self.journal is None or not self.journal.pending():
            return
        with unit_of_work(self.factory) as session:
            record_journaled(session, self.journal.entries())
        self.journal.clear()

    def next_due(self) -> dt.datetime | None:
        with read_only(self.factory) as session:
            return repo.next_outbound_due(session)

    def _send(self, outbound_id: int, envelope_from: str, recipient: str, raw: bytes, message_id: str) -> None:
        bound = log.bind(outbound_id=outbound_id, message_id=message_id)
        error: Exception | None = None
        try:
            self.deliverer.deliver(envelope_from, recipient, raw, message_id)
        except (TransientDeliveryError, PermanentDeliveryError) as exc:
            error = exc
        failpoint("outbox.after_send_before_commit")
        if error is None:
            self._record_sent(outbound_id)
            return
        with unit_of_work(self.factory) as session:
            row = repo.get_outbound(session, outbound_id)
            if row is None or row.claimed_by != self.owner or row.state != OutboundState.SENDING:
                return
            now = self.clock()
            row.claimed_by = None
            row.claim_expires_at = None
            row.last_error = str(error)[:1000]
            give_up = row.created_at + dt.timedelta(hours=self.config.give_up_after_hours)
            if isinstance(error, PermanentDeliveryError) or now >= give_up:
                row.state = OutboundState.FAILED
                repo.add_event(session, "mail_failed", ticket_id=row.ticket_id, template=row.template,
                               recipient=row.recipient, error=row.last_error)
                bound.warning("outbound_failed", error=row.last_error, attempts=row.attempts)
            else:
                row.state = OutboundState.QUEUED
                row.next_attempt_at = now + backoff(
                    row.attempts, self.config.retry_initial_seconds, self.config.retry_max_seconds, self._rng
                )
                bound.info("outbound_deferred", error=row.last_error, attempts=row.attempts,
                           next_attempt_at=row.next_attempt_at.isoformat())

    def _record_sent(self, outbound_id: int) -> None:
        """The common outcome, durable before the next mail is sent (T20): in the journal, or in one commit."""
        if self.journal is not None:
            self.journal.record(Sent(outbound_id, self.owner, self.clock()))
            failpoint("outbox.after_record_before_fold")
            return
        with unit_of_work(self.factory) as session:
            _mark_sent(session, Sent(outbound_id, self.owner, self.clock()))


def record_journaled(session: Session, entries: list[Sent]) -> None:
    """Record in the session's transaction the mails the journal names as sent (the journal is emptied only once
    that has committed); idempotent, so the CLI may fold the lines the daemon will fold again."""
    for sent in entries:
        _mark_sent(session, sent)


def _mark_sent(session: Session, sent: Sent) -> None:
    """One statement (plus its event); nothing if the owner no longer holds the mail (the lease ran out and
    another worker took it over, or the journal line was folded before)."""
    row = repo.mark_outbound_sent(session, sent.outbound_id, sent.owner, sent.sent_at)
    if row is None:
        return
    ticket_id, template, recipient, message_id, attempts = row
    repo.add_event(session, "mail_sent", ticket_id=ticket_id, template=template, recipient=recipient,
                   message_id=message_id)
    log.info("outbound_sent", outbound_id=sent.outbound_id, message_id=message_id, template=template,
             attempts=attempts)
