"""Loop and amplification guards: may we send an automatic mail to this address now?

Checked inside the processing transaction, against the outbox and the tickets themselves (the rows are the
counters), so limits hold across restarts and across several instances. In order, first hit wins:

| check                                                                  | reason code                 |
|------------------------------------------------------------------------|-----------------------------|
| no recipient; one of our own addresses (queue, plus-tag, VERP)         | no_recipient, own_address   |
| matches a no-reply pattern (configurable)                              | noreply_address             |
| more new tickets from this address in the last hour than the hourly    | sender_flood                |
|   limit: someone (or something) is flooding us under this address      |                             |
| a second new ticket from this address within 10 minutes, and it        | sender_burst                |
|   already got an automatic mail in that time                           |                             |
| automatic mails to this address: per hour / per day                    | rate_limit_recipient_hour/  |
|                                                                        |   _day                      |
| automatic mails on this ticket in 10 minutes                           | rate_limit_ticket           |

The two sender checks are what keeps a forged-sender flood (T28: 1,000 mails "from" a victim) down to one
acknowledgement, and stop a naive auto-responder answering each acknowledgement with a fresh mail (T25)
after the first round; the rate limits alone would still allow 5 an hour. Every refusal for a limit is
logged (`automatic_mail_refused`), so an admin sees the circuit breaker trip. The counts behind the last four
checks are read in one statement (`db.outbox_queries.guard_counts`).
"""

from __future__ import annotations

import datetime as dt
import fnmatch
from collections.abc import Iterable

import structlog
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from mail2ticket.config.model import LoopProtectionConfig
from mail2ticket.db.outbox_queries import guard_counts
from mail2ticket.db.models import Ticket

log = structlog.get_logger("mail2ticket.guards")

_LOGGED_REASONS = frozenset({"sender_flood", "sender_burst", "rate_limit_recipient_hour", "rate_limit_recipient_day",
                             "rate_limit_ticket"})


def is_noreply(address: str, patterns: Iterable[str]) -> bool:
    lowered = address.lower()
    return any(fnmatch.fnmatchcase(lowered, p.lower()) for p in patterns)


def refuse_automatic_mail(
    session: Session,
    *,
    recipient: str | None,
    ticket_id: int | None,
    own_addresses: frozenset[str],
    own_domain: str,
    loop: LoopProtectionConfig,
    now: dt.datetime,
) -> str | None:
    """None if an automatic mail may go out, else the reason (a stable snake_case code)."""
    reason = _refusal(session, recipient, ticket_id, own_addresses, own_domain, loop, now)
    if reason in _LOGGED_REASONS:
        log.warning("automatic_mail_refused", reason=reason, recipient_domain=(recipient or "").rpartition("@")[2],
                    ticket_id=ticket_id)
    return reason


def _refusal(session: Session, recipient: str | None, ticket_id: int | None, own_addresses: frozenset[str],
             own_domain: str, loop: LoopProtectionConfig, now: dt.datetime) -> str | None:
    if not recipient:
        return "no_recipient"
    recipient = recipient.lower()
    local, _, domain = recipient.rpartition("@")
    if recipient in own_addresses or f"{local.split('+', 1)[0]}@{domain}" in own_addresses:
        return "own_address"
    if domain == own_domain and local.startswith("bounces"):
        return "own_address"
    if is_noreply(recipient, loop.noreply_patterns):
        return "noreply_address"
    recent = now - dt.timedelta(minutes=10)
    counts = guard_counts(session, recipient=recipient, ticket_id=ticket_id, recent=recent,
                          hour=now - dt.timedelta(hours=1), day=now - dt.timedelta(days=1))
    if counts.tickets_hour > loop.per_recipient_per_hour:
        return "sender_flood"
    if counts.tickets_recent >= 2 and counts.mails_recent:
        return "sender_burst"
    if counts.mails_hour >= loop.per_recipient_per_hour:
        return "rate_limit_recipient_hour"
    if counts.mails_day >= loop.per_recipient_per_day:
        return "rate_limit_recipient_day"
    if ticket_id is not None and counts.ticket_mails_recent >= loop.per_ticket_per_10_minutes:
        return "rate_limit_ticket"
    return None


def tickets_from(session: Session, requester: str, *, since: dt.datetime) -> int:
    """Tickets this address opened since then (the one being created now included, it is flushed).

    Belongs in db.repo (ask its owner to move it); uses the index on ticket.requester.
    """
    stmt = select(func.count()).select_from(Ticket).where(Ticket.requester == requester, Ticket.created_at >= since)
    return int(session.scalar(stmt) or 0)
