"""Repository for the conversation stages: the SQL that threading, staff replies and status mails need.

Kept apart from `db.repo` (the foundation's repository) so the conversation code owns its queries;
the same rules apply: functions may flush, never commit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import event, func, select
from sqlalchemy.orm import Session, SessionTransaction

from mail2ticket.db.models import Article, Attachment, OutboundMail, Participant, Ticket

THREAD_INDEX_CANDIDATES = 50


# --- what this transaction already knows -------------------------------------------------------------
#
# Processing stores up to 64 messages in one transaction, one SAVEPOINT each, and every SQL statement costs
# ~0.1-0.3 ms of ORM overhead. Two things make many of them unnecessary:
#
# * A ticket created in the current savepoint ("fresh") has no rows anywhere but those this savepoint adds:
#   nobody else can see it before the commit. Its participants, outbound mails and first article are those
#   the processing code added, so `repo.add_participant`, `outbox.enqueue` and `conversation_for` answer from
#   memory. The record lives only as long as the savepoint that created the ticket (a later message of the
#   same batch may take paths that change a ticket's rows without these functions) and is dropped on any
#   rollback, so it is never stale: SQLite may even hand a rolled-back ticket's id to the next ticket. The
#   savepoint is the ORM's nested transaction or a message's `db.savepoint`, which forgets them at its end.
# * A query only needs the autoflush if a pending change could alter its answer: `flush_for` flushes only
#   when new, changed or deleted objects of the queried tables (or any deletion) are pending.


@dataclass(eq=False, slots=True)
class FreshTicket:
    """A ticket created in `transaction` (the savepoint of the message that created it)."""

    ticket_id: int
    transaction: SessionTransaction
    participants: set[str] = field(default_factory=set)  # addresses added (repo.add_participant)
    dedupe_keys: set[str] = field(default_factory=set)  # outbound mails enqueued for it
    outbound: int = 0  # outbound mails of the ticket
    first_article: Article | None = None  # the first article added (store)


_FRESH = "mail2ticket.fresh_tickets"


def _fresh_map(session: Session) -> dict[int, FreshTicket] | None:
    fresh: dict[int, FreshTicket] | None = session.info.get(_FRESH)
    return fresh


def register_fresh_ticket(session: Session, ticket: Ticket) -> FreshTicket:
    """Record that `ticket` (flushed, so it has its id) was just created in the current (sub)transaction."""
    fresh = _fresh_map(session)
    if fresh is None:
        fresh = session.info[_FRESH] = {}
        event.listen(session, "after_soft_rollback", _forget_all)
        event.listen(session, "after_transaction_end", _forget_ended)
    transaction = session.get_nested_transaction() or session.get_transaction()
    assert transaction is not None
    entry = fresh[ticket.id] = FreshTicket(ticket.id, transaction)
    return entry


def fresh_ticket(session: Session, ticket_id: int | None) -> FreshTicket | None:
    """The record of ticket `ticket_id` if it was created in the savepoint still running, else None."""
    fresh = _fresh_map(session)
    if not fresh or ticket_id is None:
        return None
    return fresh.get(ticket_id)


def note_enqueued(session: Session, ticket_id: int | None, dedupe_key: str) -> None:
    """An outbound mail for `ticket_id` with `dedupe_key` was added (outbox.enqueue)."""
    fresh = _fresh_map(session)
    if not fresh:
        return
    for entry in fresh.values():
        entry.dedupe_keys.add(dedupe_key)
        if entry.ticket_id == ticket_id:
            entry.outbound += 1


def forget_fresh_tickets(session: Session) -> None:
    """The message's savepoint has ended (`db.savepoint`): its fresh tickets are ordinary tickets from now on."""
    fresh = _fresh_map(session)
    if fresh:
        fresh.clear()


def _forget_all(session: Session, _previous: Any) -> None:
    forget_fresh_tickets(session)


def _forget_ended(session: Session, transaction: SessionTransaction) -> None:
    fresh = _fresh_map(session)
    if not fresh:
        return
    if transaction.parent is None:
        fresh.clear()
        return
    for ticket_id in [tid for tid, entry in fresh.items() if entry.transaction is transaction]:
        del fresh[ticket_id]


def flush_for(session: Session, *classes: type[Any]) -> None:
    """Flush what a query over the tables of `classes` could see differently: the autoflush, when it matters.

    Pending inserts or real changes of those classes, or any pending deletion (cascades), flush the whole
    session, exactly as the autoflush would; anything else (e.g. the inbound row's new state) waits for the
    next flush, which writes the same rows.
    """
    if not session.autoflush:
        return
    if session.deleted or any(isinstance(obj, classes) for obj in session.new) or any(
            isinstance(obj, classes) and session.is_modified(obj, include_collections=False)
            for obj in session.dirty):
        session.flush()


def ticket_by_number_ci(session: Session, number: str) -> Ticket | None:
    """A ticket by its public number, ignoring case (numbers travel in lower-cased addresses)."""
    flush_for(session, Ticket)
    with session.no_autoflush:
        exact = session.scalar(select(Ticket).where(Ticket.number == number))
        if exact is not None:
            return exact
        return session.scalar(select(Ticket).where(func.lower(Ticket.number) == number.lower()).limit(1))


def articles_with_thread_prefix(session: Session, prefix: str, sender: str) -> list[Article]:
    """Recent articles from `sender` whose stored Thread-Index starts with `prefix` (base64 text)."""
    stmt = (
        select(Article)
        .where(Article.sender == sender, Article.thread_index.like(prefix + "%"))
        .order_by(Article.id.desc())
        .limit(THREAD_INDEX_CANDIDATES)
    )
    flush_for(session, Article)
    with session.no_autoflush:
        return list(session.scalars(stmt))


def first_article(session: Session, ticket_id: int) -> Article | None:
    if (fresh := fresh_ticket(session, ticket_id)) is not None:
        return fresh.first_article
    return session.scalar(select(Article).where(Article.ticket_id == ticket_id).order_by(Article.id).limit(1))


def last_inbound_from(session: Session, ticket_id: int, senders: list[str]) -> Article | None:
    """The newest inbound article of the ticket written by one of `senders` (for In-Reply-To)."""
    if not senders:
        return None
    stmt = (
        select(Article)
        .where(Article.ticket_id == ticket_id, Article.direction == "in", Article.sender.in_(senders),
               Article.internal.is_(False))
        .order_by(Article.id.desc())
        .limit(1)
    )
    return session.scalar(stmt)


def thread_message_ids(session: Session, ticket_id: int, limit: int = 20) -> list[str]:
    """Message-IDs of the ticket's conversation, oldest first, for a References header."""
    ids = [m for m in session.scalars(
        select(Article.message_id).where(Article.ticket_id == ticket_id, Article.message_id.is_not(None),
                                         Article.internal.is_(False)).order_by(Article.id)
    ) if m]
    return ids[:1] + ids[1:][-(limit - 1):] if len(ids) > limit else ids


def participant_rows(session: Session, ticket_id: int, roles: tuple[str, ...]) -> list[Participant]:
    return list(session.scalars(
        select(Participant).where(Participant.ticket_id == ticket_id, Participant.role.in_(roles))
        .order_by(Participant.id)
    ))


def outbound_count(session: Session, ticket_id: int) -> int:
    if (fresh := fresh_ticket(session, ticket_id)) is not None:
        return fresh.outbound
    return session.scalar(select(func.count()).select_from(OutboundMail).where(OutboundMail.ticket_id == ticket_id)) or 0


def outbound_rows(session: Session, ticket_id: int) -> list[OutboundMail]:
    return list(session.scalars(select(OutboundMail).where(OutboundMail.ticket_id == ticket_id).order_by(OutboundMail.id)))


def attachments_by_article(session: Session, article_ids: list[int]) -> dict[int, list[Attachment]]:
    out: dict[int, list[Attachment]] = {}
    if not article_ids:
        return out
    for row in session.scalars(select(Attachment).where(Attachment.article_id.in_(article_ids)).order_by(Attachment.id)):
        out.setdefault(row.article_id, []).append(row)
    return out
