"""Repository for the conversation stages: the SQL that threading, staff replies and status mails need.

Kept apart from `db.repo` (the foundation's repository) so the conversation code owns its queries;
the same rules apply: functions may flush, never commit.
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from mail2ticket.db.models import Article, Attachment, OutboundMail, Participant, Ticket

THREAD_INDEX_CANDIDATES = 50


def ticket_by_number_ci(session: Session, number: str) -> Ticket | None:
    """A ticket by its public number, ignoring case (numbers travel in lower-cased addresses)."""
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
    return list(session.scalars(stmt))


def first_article(session: Session, ticket_id: int) -> Article | None:
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
    return session.scalar(select(func.count()).select_from(OutboundMail).where(OutboundMail.ticket_id == ticket_id)) or 0


def outbound_for_article(session: Session, article_id: int) -> list[OutboundMail]:
    return list(session.scalars(select(OutboundMail).where(OutboundMail.article_id == article_id)))


def outbound_rows(session: Session, ticket_id: int) -> list[OutboundMail]:
    return list(session.scalars(select(OutboundMail).where(OutboundMail.ticket_id == ticket_id).order_by(OutboundMail.id)))


def attachments_by_article(session: Session, article_ids: list[int]) -> dict[int, list[Attachment]]:
    out: dict[int, list[Attachment]] = {}
    if not article_ids:
        return out
    for row in session.scalars(select(Attachment).where(Attachment.article_id.in_(article_ids)).order_by(Attachment.id)):
        out.setdefault(row.article_id, []).append(row)
    return out
