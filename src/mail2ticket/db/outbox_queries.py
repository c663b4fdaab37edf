"""Queries of the outbox guards (outbox.guards): every count a loop/rate-limit decision needs, in one statement.

The guards used to ask four to six separate counts per automatic mail; this reads them in one round trip,
one aggregate per index: tickets by requester (`ix_ticket_requester`), outbound mail by recipient
(`ix_outbound_mail_recipient_created`) and by ticket (`ix_outbound_mail_ticket_id`). The rows are the
counters, exactly as in `repo.tickets_from`/`repo.automatic_mails_since`.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import Select, String, bindparam, case, func, select, true
from sqlalchemy.orm import Session

from mail2ticket.db.conversation_repo import flush_for
from mail2ticket.db.direct import Direct
from mail2ticket.db.models import OutboundMail, Ticket


@dataclass(frozen=True, slots=True)
class GuardCounts:
    tickets_hour: int  # tickets this address opened since `hour`
    tickets_recent: int  # ... since `recent`
    mails_recent: int  # automatic mails to this address since `recent`
    mails_hour: int  # ... since `hour`
    mails_day: int  # ... since `day`
    ticket_mails_recent: int  # automatic mails on the ticket since `recent` (0 without a ticket)


def guard_counts(session: Session, *, recipient: str, ticket_id: int | None, recent: dt.datetime,
                 hour: dt.datetime, day: dt.datetime) -> GuardCounts:
    """All counts for one recipient (lower-cased) and ticket, `recent` >= `hour` >= `day` being window starts.

    On PostgreSQL it first takes the transaction-scoped advisory lock on the recipient that
    `repo.automatic_mails_since` takes, so two instances answering the same sender check and enqueue one after
    the other instead of both passing the limit.
    """
    connection = session.connection()
    if connection.dialect.name == "postgresql":
        connection.execute(_ADVISORY_LOCK, {"key": "m2t-recipient:" + recipient})
    # Direct execution on the session's connection (same transaction) skips the ORM layer, which adds nothing to
    # a count but its autoflush: done here, so rows added and not yet flushed (a new ticket, an earlier mail)
    # are counted; only when such rows are pending (participants and events, say, wait for the next flush).
    flush_for(session, Ticket, OutboundMail)
    params = {"recipient": recipient, "ticket_id": ticket_id, "recent": recent, "hour": hour, "day": day}
    row = _GUARD_COUNTS.execute(session, params).fetchone()
    return GuardCounts(*(int(value or 0) for value in row))


def _guard_counts_statement() -> Select[tuple[int, int, int, int, int, int]]:
    """Built once (building it per call cost more than running it); a NULL ticket_id counts nothing."""
    recipient = bindparam("recipient", type_=OutboundMail.recipient.type)
    recent = bindparam("recent", type_=OutboundMail.created_at.type)
    hour = bindparam("hour", type_=OutboundMail.created_at.type)
    day = bindparam("day", type_=OutboundMail.created_at.type)
    tickets = (
        select(func.count().label("hour"), func.count(case((Ticket.created_at >= recent, 1))).label("recent"))
        .where(Ticket.requester == recipient, Ticket.created_at >= hour)
        .subquery()
    )
    mails = (
        select(
            func.count(case((OutboundMail.created_at >= recent, 1))).label("recent"),
            func.count(case((OutboundMail.created_at >= hour, 1))).label("hour"),
            func.count().label("day"),
        )
        .where(OutboundMail.automatic.is_(True), OutboundMail.recipient == recipient, OutboundMail.created_at >= day)
        .subquery()
    )
    on_ticket = (
        select(func.count().label("recent"))
        .where(OutboundMail.automatic.is_(True),
               OutboundMail.ticket_id == bindparam("ticket_id", type_=OutboundMail.ticket_id.type),
               OutboundMail.created_at >= recent)
        .subquery()
    )
    return (
        select(tickets.c.hour, tickets.c.recent, mails.c.recent, mails.c.hour, mails.c.day, on_ticket.c.recent)
        .select_from(tickets)
        .join(mails, true())
        .join(on_ticket, true())
    )


_GUARD_COUNTS = Direct(_guard_counts_statement())
_ADVISORY_LOCK = select(func.pg_advisory_xact_lock(func.hashtextextended(bindparam("key", type_=String()), 0)))
