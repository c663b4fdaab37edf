"""Repositories: every SQL statement of mail2ticket. Functions may flush, never commit.

Work claiming differs per backend: PostgreSQL uses `FOR UPDATE SKIP LOCKED` so several instances take
different rows; SQLite has one writer at a time (BEGIN IMMEDIATE), so processing picks its candidates in a
read snapshot and re-checks each row's state under the write lock (`waiting_inbound`, `inbound_rows`).

| work            | claim                                  | a dead or stuck claimant's work is taken over   |
|-----------------|----------------------------------------|-------------------------------------------------|
| inbound message | row lock for the one processing        | when its session ends: at once on kill -9,      |
|                 | transaction of a batch (nothing is     | keepalive (~1 min) on a lost host, idle-in-     |
|                 | sent or acknowledged inside it)        | transaction timeout (5 min) on a hung process   |
| outbound mail   | lease columns (claimed_by, expires),   | when claim_expires_at has passed (delivery runs |
|                 | committed before the SMTP send         | outside any transaction, so a row lock can't)   |
| IMAP mailbox    | `lease` row (db.leases)                | when the lease row expires                      |
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any, TypeVar

from sqlalchemy import Select, bindparam, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from mail2ticket.db import conversation_repo
from mail2ticket.db.direct import Direct
from mail2ticket.db.models import (
    Article,
    Event,
    InboundMessage,
    InboundState,
    OutboundMail,
    OutboundState,
    Participant,
    Ticket,
    TicketCounter,
    utcnow,
)

_S = TypeVar("_S", bound=Select[Any])


def _skip_locked(session: Session, stmt: _S) -> _S:
    if session.get_bind().dialect.name == "postgresql":
        return stmt.with_for_update(skip_locked=True)
    return stmt


# --- intake -----------------------------------------------------------------------------------------


def find_inbound_duplicate(session: Session, source_key: str | None, scope: str, content_hash: str) -> int | None:
    conversation_repo.flush_for(session, InboundMessage)
    params = {"scope": scope, "content_hash": content_hash, "source_key": source_key}
    statement = _DUPLICATE_BY_CONTENT if source_key is None else _DUPLICATE
    found = statement.scalar(session, params)
    return None if found is None else int(found)


_SAME_CONTENT = (InboundMessage.dedupe_scope == bindparam("scope")) & (
    InboundMessage.content_hash == bindparam("content_hash"))
_DUPLICATE_BY_CONTENT = Direct(select(InboundMessage.id).where(_SAME_CONTENT).limit(1))
_DUPLICATE = Direct(select(InboundMessage.id).where(
    or_(_SAME_CONTENT, InboundMessage.source_key == bindparam("source_key"))).limit(1))


def waiting_inbound(session: Session, now: dt.datetime, *, limit: int, max_bytes: int,
                    only: Sequence[int] = (), claim: bool = False, after: int | None = None) -> list[int]:
    """Ids of the oldest messages waiting (of `only`; after id `after`), at most `limit` and about `max_bytes`.

    With `claim` (PostgreSQL) the rows are locked for this transaction and rows another instance holds are
    skipped; without it they are only candidates, which the processing transaction locks and re-checks.
    """
    stmt = (
        select(InboundMessage.id, InboundMessage.size)
        .where(InboundMessage.state == InboundState.NEW)
        .where(or_(InboundMessage.not_before.is_(None), InboundMessage.not_before <= now))
        .order_by(InboundMessage.id)
        .limit(limit)
    )
    if only:
        stmt = stmt.where(InboundMessage.id.in_(list(only)))
    if after is not None:
        stmt = stmt.where(InboundMessage.id > after)
    if claim:
        stmt = stmt.with_for_update(skip_locked=True, of=InboundMessage)
    ids: list[int] = []
    total = 0
    for inbound_id, size in session.execute(stmt):
        if ids and total + size > max_bytes:
            break
        ids.append(inbound_id)
        total += size
    return ids


def inbound_rows(session: Session, ids: Sequence[int]) -> dict[int, InboundMessage]:
    """The intake rows `ids` (without their raw bytes), loaded in one query."""
    if not ids:
        return {}
    return {row.id: row for row in session.scalars(select(InboundMessage).where(InboundMessage.id.in_(list(ids))))}


def lock_waiting_inbound(session: Session, inbound_id: int) -> InboundMessage | None:
    """Message `inbound_id`, row-locked, if it still waits for processing (state new); else None.

    For outcomes written after a processing transaction failed and rolled back: its claim (the row lock) is
    gone by then, so another instance may have claimed the row meanwhile. Waiting for that instance's lock and
    re-checking the state keeps its result instead of overwriting a `done` row with our failure.
    """
    # populate_existing: a rolled-back savepoint may have left values in the object that the row no longer has
    # (the processing writes its outcome with `rows.update_now`, which the session does not track).
    stmt = (select(InboundMessage).where(InboundMessage.id == inbound_id, InboundMessage.state == InboundState.NEW)
            .execution_options(populate_existing=True))
    if session.get_bind().dialect.name == "postgresql":
        stmt = stmt.with_for_update()
    return session.scalar(stmt)


def get_inbound(session: Session, inbound_id: int, *, with_raw: bool = False) -> InboundMessage | None:
    stmt = select(InboundMessage).where(InboundMessage.id == inbound_id)
    if with_raw:
        stmt = stmt.options(selectinload(InboundMessage.raw))
    return session.scalar(stmt)


# --- tickets ----------------------------------------------------------------------------------------


def next_ticket_seq(session: Session, year: int) -> int:
    """Increment the per-year counter under its row lock; gaps are possible (rolled-back transactions).

    A `Direct` statement on the session's connection: no ORM bulk-update machinery and no autoflush, which the
    counter row does not need (it is never a pending object: it is only created, and flushed, below).
    """
    for _ in range(3):
        seq = _NEXT_SEQ.scalar(session, {"counter_year": year})
        if seq is not None:
            return int(seq)
        session.flush()  # pending rows of the caller must not fail inside the savepoint below
        try:
            with session.begin_nested():
                session.add(TicketCounter(year=year, last_seq=0))
        except IntegrityError:
            pass
    raise RuntimeError(f"could not allocate a ticket number for {year}")


_NEXT_SEQ = Direct(
    update(TicketCounter)
    .where(TicketCounter.year == bindparam("counter_year"))
    .values(last_seq=TicketCounter.last_seq + 1)
    .returning(TicketCounter.last_seq)
)


def ticket_by_number(session: Session, number: str) -> Ticket | None:
    return session.scalar(select(Ticket).where(Ticket.number == number))


def ticket_by_id(session: Session, ticket_id: int) -> Ticket | None:
    return session.get(Ticket, ticket_id)


def ticket_by_message_ids(session: Session, message_ids: Sequence[str]) -> Ticket | None:
    """The ticket that has an article or an outbound mail with one of these Message-IDs (newest reference wins)."""
    if not message_ids:
        return None
    ids = list(dict.fromkeys(message_ids))
    found: dict[str, int] = {}
    conversation_repo.flush_for(session, Article, OutboundMail)
    for start in range(0, len(ids), _IDS_PER_QUERY):
        chunk = ids[start:start + _IDS_PER_QUERY]
        params = {f"mid{i}": mid for i, mid in enumerate(chunk)}
        by_article, by_outbound = _tickets_by_message_ids(len(chunk))
        for mid, tid in by_article.execute(session, params).fetchall():
            if mid is not None:
                found.setdefault(mid, tid)
        for out_mid, out_tid in by_outbound.execute(session, params).fetchall():
            if out_tid is not None:
                found.setdefault(out_mid, out_tid)
    for mid in reversed(ids):
        if mid in found:
            return session.get(Ticket, found[mid])
    return None


_IDS_PER_QUERY = 8
_BY_MESSAGE_IDS: dict[int, tuple[Direct, Direct]] = {}


def _tickets_by_message_ids(count: int) -> tuple[Direct, Direct]:
    """(Message-ID, ticket id) of articles and of outbound mails, for `count` Message-IDs `mid0`, `mid1`, …"""
    if (found := _BY_MESSAGE_IDS.get(count)) is None:
        mids = [bindparam(f"mid{i}", type_=Article.message_id.type) for i in range(count)]
        found = _BY_MESSAGE_IDS[count] = (
            Direct(select(Article.message_id, Article.ticket_id).where(Article.message_id.in_(mids))),
            Direct(select(OutboundMail.message_id, OutboundMail.ticket_id).where(
                OutboundMail.message_id.in_(mids), OutboundMail.ticket_id.is_not(None))))
    return found


def article_with_message_id(session: Session, message_id: str) -> Article | None:
    conversation_repo.flush_for(session, Article)
    found = _ARTICLE_BY_MESSAGE_ID.scalar(session, {"message_id": message_id})
    return None if found is None else session.get(Article, found)


_ARTICLE_BY_MESSAGE_ID = Direct(
    select(Article.id).where(Article.message_id == bindparam("message_id"), Article.direction == "in").limit(1)
)


def is_participant(session: Session, ticket_id: int, address: str) -> bool:
    if (fresh := conversation_repo.fresh_ticket(session, ticket_id)) is not None:
        return address in fresh.participants  # all its participants were added by add_participant, below
    conversation_repo.flush_for(session, Participant)
    return _PARTICIPANT.scalar(session, {"ticket_id": ticket_id, "address": address}) is not None


_PARTICIPANT = Direct(select(Participant.id).where(
    Participant.ticket_id == bindparam("ticket_id"), Participant.address == bindparam("address")).limit(1))


def add_participant(session: Session, ticket_id: int, address: str, name: str | None, role: str) -> bool:
    if is_participant(session, ticket_id, address):
        return False
    # Written at once (nothing of the processing holds the row as an object): no ORM flush for it.
    _INSERT_PARTICIPANT.execute(session, {"ticket_id": ticket_id, "address": address, "name": name, "role": role})
    if (fresh := conversation_repo.fresh_ticket(session, ticket_id)) is not None:
        fresh.participants.add(address)
    return True


_INSERT_PARTICIPANT = Direct(insert(Participant).values(
    {name: bindparam(name) for name in ("ticket_id", "address", "name", "role")}))


def participants(session: Session, ticket_id: int) -> list[Participant]:
    return list(session.scalars(select(Participant).where(Participant.ticket_id == ticket_id).order_by(Participant.id)))


def add_event(
    session: Session,
    type_: str,
    *,
    ticket_id: int | None = None,
    inbound_id: int | None = None,
    actor: str | None = None,
    **detail: Any,
) -> None:
    """Append to the audit trail. Written at once through the session's connection (same transaction): nothing
    reads an event back while processing, and an INSERT costs a fraction of an ORM object plus its flush."""
    _INSERT_EVENT.execute(session, {"ticket_id": ticket_id, "inbound_id": inbound_id, "type": type_, "actor": actor,
                                    "detail": detail, "created_at": utcnow()})


_INSERT_EVENT = Direct(insert(Event).values(
    {name: bindparam(name) for name in ("ticket_id", "inbound_id", "type", "actor", "detail", "created_at")}))


def list_tickets(
    session: Session,
    *,
    status: str | None = None,
    queue: str | None = None,
    since: dt.datetime | None = None,
    requester: str | None = None,
    limit: int | None = None,
) -> list[tuple[Ticket, int]]:
    counts = select(Article.ticket_id, func.count().label("n")).group_by(Article.ticket_id).subquery()
    stmt = select(Ticket, func.coalesce(counts.c.n, 0)).outerjoin(counts, counts.c.ticket_id == Ticket.id)
    if status:
        stmt = stmt.where(Ticket.status == status)
    if queue:
        stmt = stmt.where(Ticket.queue == queue)
    if since:
        stmt = stmt.where(Ticket.created_at >= since)
    if requester:
        stmt = stmt.where(Ticket.requester == requester.lower())
    stmt = stmt.order_by(Ticket.id)
    if limit:
        stmt = stmt.limit(limit)
    return [(t, int(n)) for t, n in session.execute(stmt)]


def articles(session: Session, ticket_id: int) -> list[Article]:
    return list(session.scalars(select(Article).where(Article.ticket_id == ticket_id).order_by(Article.id)))


def events(session: Session, ticket_id: int) -> list[Event]:
    return list(session.scalars(select(Event).where(Event.ticket_id == ticket_id).order_by(Event.id)))


# --- outbox -----------------------------------------------------------------------------------------


def outbound_by_dedupe_key(session: Session, key: str) -> OutboundMail | None:
    conversation_repo.flush_for(session, OutboundMail)
    found = _OUTBOUND_BY_KEY.scalar(session, {"key": key})
    return None if found is None else session.get(OutboundMail, found)


_OUTBOUND_BY_KEY = Direct(select(OutboundMail.id).where(OutboundMail.dedupe_key == bindparam("key")))


def automatic_mails_since(session: Session, *, recipient: str | None = None, ticket_id: int | None = None,
                          since: dt.datetime) -> int:
    """How many automatic mails went (or are queued) to `recipient` / for `ticket_id` since `since`.

    The outbox rows are the rate-limit counters. On PostgreSQL, counting for a recipient first takes a
    transaction-scoped advisory lock on that address, so two instances answering the same sender at the same
    moment check and enqueue one after the other instead of both passing the limit.
    """
    if recipient is not None and session.get_bind().dialect.name == "postgresql":
        session.execute(select(func.pg_advisory_xact_lock(func.hashtextextended("m2t-recipient:" + recipient, 0))))
    stmt = select(func.count()).select_from(OutboundMail).where(
        OutboundMail.automatic.is_(True), OutboundMail.created_at >= since
    )
    if recipient is not None:
        stmt = stmt.where(OutboundMail.recipient == recipient)
    if ticket_id is not None:
        stmt = stmt.where(OutboundMail.ticket_id == ticket_id)
    return session.scalar(stmt) or 0


_DUE = or_(
    (OutboundMail.state == OutboundState.QUEUED) & (OutboundMail.next_attempt_at <= bindparam("now")),
    (OutboundMail.state == OutboundState.SENDING) & (OutboundMail.claim_expires_at < bindparam("now")),
)


def claim_due_outbound(session: Session, owner: str, now: dt.datetime, lease: dt.timedelta,
                       limit: int = 10) -> list[OutboundMail]:
    """Queued mails that are due, and mails whose sender died mid-send (lease expired), leased to `owner`."""
    stmt = (
        select(OutboundMail)
        .where(_DUE)
        .params(now=now)
        .order_by(OutboundMail.next_attempt_at, OutboundMail.id)
        .limit(limit)
    )
    rows = list(session.scalars(_skip_locked(session, stmt)))
    for row in rows:
        row.state = OutboundState.SENDING
        row.claimed_by = owner
        row.claim_expires_at = now + lease
        row.attempts += 1
    session.flush()
    return rows


def outbound_due(session: Session, now: dt.datetime) -> bool:
    """Whether `claim_due_outbound` would find anything (a read: no lock taken)."""
    return session.execute(select(OutboundMail.id).where(_DUE).limit(1), {"now": now}).first() is not None


def mark_outbound_sent(session: Session, outbound_id: int, owner: str,
                       now: dt.datetime) -> tuple[int | None, str, str, str, int] | None:
    """Record the delivery of a mail `owner` holds; its (ticket_id, template, recipient, message_id, attempts),
    or None if `owner` no longer holds it."""
    row = _MARK_SENT.first(session, {"outbound_id": outbound_id, "owner": owner, "now": now})
    return None if row is None else (row[0], row[1], row[2], row[3], row[4])


_MARK_SENT = Direct(
    update(OutboundMail)
    .where(OutboundMail.id == bindparam("outbound_id"), OutboundMail.claimed_by == bindparam("owner"),
           OutboundMail.state == OutboundState.SENDING)
    .values(state=OutboundState.SENT, sent_at=bindparam("now"), claimed_by=None, claim_expires_at=None,
            last_error=None)
    .returning(OutboundMail.ticket_id, OutboundMail.template, OutboundMail.recipient, OutboundMail.message_id,
               OutboundMail.attempts)
)


def next_outbound_due(session: Session) -> dt.datetime | None:
    return session.scalar(
        select(func.min(OutboundMail.next_attempt_at)).where(OutboundMail.state == OutboundState.QUEUED)
    )


def outbound_by_message_id(session: Session, message_id: str) -> OutboundMail | None:
    return session.scalar(select(OutboundMail).where(OutboundMail.message_id == message_id))


def get_outbound(session: Session, outbound_id: int) -> OutboundMail | None:
    return session.get(OutboundMail, outbound_id)

