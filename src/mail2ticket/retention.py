"""Retention (GDPR Art. 5(1)(e); BSI CON.6), used by `purge`; the data-subject requests of `person` are in
`erasure`, which shares the scrubbing helpers here.

Works on the database only, after the pipeline: nothing here runs in the daemon. Callers own the
transactions (one per ticket for `purge`, one for `person erase`) and call `compact` afterwards, because
deleted rows stay readable in free pages of an SQLite file until it is vacuumed.

| rule (per queue, counted from the ticket's closing) | effect                                                    |
|------------------------------------------------------|-----------------------------------------------------------|
| `delete_raw_after_days`                              | raw inbound mail, attachments, rendered outbound bytes go |
| `anonymise_after_days`                               | as above, plus requester and external participants are    |
|                                                      | replaced by "[anonymised]" in every field and the texts   |
| `[operations] delete_unticketed_after_days`          | ignored/quarantined intake rows without a ticket go       |
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import ColumnElement, Engine, String, cast, delete, exists, func, select, text, update
from sqlalchemy.orm import Session

from mail2ticket.config import Config
from mail2ticket.db.wal_checkpoint import truncate_wal
from mail2ticket.db.models import (
    Article,
    Attachment,
    AttachmentContent,
    Event,
    InboundMessage,
    InboundState,
    OutboundMail,
    OutboundState,
    Participant,
    RawMessage,
    Ticket,
)

ANONYMISED = "[anonymised]"
TERMINAL_OUTBOUND = (OutboundState.SENT, OutboundState.FAILED)
CHUNK = 500


def _chunks(ids: Sequence[int], size: int = CHUNK) -> Iterator[Sequence[int]]:
    for start in range(0, len(ids), size):
        yield ids[start:start + size]


def contains(column: Any, term: str) -> ColumnElement[bool]:
    """Case-insensitive substring test that treats % and _ in the term literally."""
    escaped = term.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return func.lower(cast(column, String)).like(f"%{escaped}%", escape="\\")


def scrub_text(value: str | None, terms: Sequence[str]) -> str | None:
    if not value:
        return value
    for term in terms:
        value = re.sub(re.escape(term), ANONYMISED, value, flags=re.IGNORECASE)
    return value


def scrub_json(value: Any, terms: Sequence[str]) -> Any:
    if isinstance(value, str):
        return scrub_text(value, terms)
    if isinstance(value, list):
        return [scrub_json(v, terms) for v in value]
    if isinstance(value, dict):
        return {k: scrub_json(v, terms) for k, v in value.items()}
    return value


def _mentions(blob: bytes | str | None, terms: Sequence[str]) -> bool:
    if not blob:
        return False
    low = blob.lower() if isinstance(blob, bytes) else blob.lower().encode("utf-8", "replace")
    return any(t.lower().encode() in low for t in terms)


# --- retention -------------------------------------------------------------------------------------


@dataclass
class TicketRetention:
    ticket_id: int
    number: str
    queue: str
    closed_at: dt.datetime
    delete_raw: bool = False
    anonymise: bool = False

    def as_json(self) -> dict[str, Any]:
        actions = [a for a, on in (("delete_raw", self.delete_raw), ("anonymise", self.anonymise)) if on]
        return {"ticket": self.number, "queue": self.queue, "closed_at": self.closed_at.isoformat(),
                "actions": actions}


@dataclass
class PurgePlan:
    tickets: list[TicketRetention] = field(default_factory=list)
    unticketed: list[int] = field(default_factory=list)


def _ids_with(session: Session, stmt: Any, candidates: Sequence[int]) -> set[int]:
    found: set[int] = set()
    for chunk in _chunks(candidates):
        found.update(i for i in session.scalars(stmt(chunk)) if i is not None)
    return found


def plan_purge(session: Session, config: Config, now: dt.datetime) -> PurgePlan:
    """What `purge` would do now; tickets already purged (nothing left to remove) are left out."""
    plan = PurgePlan()
    for queue in config.queue:
        days = [d for d in (queue.delete_raw_after_days, queue.anonymise_after_days) if d is not None]
        if not days:
            continue
        cutoff = now - dt.timedelta(days=min(days))
        rows = session.execute(
            select(Ticket.id, Ticket.number, Ticket.closed_at).where(
                Ticket.queue == queue.name, Ticket.closed_at.is_not(None), Ticket.closed_at <= cutoff)
            .order_by(Ticket.id)
        ).all()
        ids = [r[0] for r in rows]
        leftovers = (
            _ids_with(session, lambda c: select(InboundMessage.ticket_id).join(
                RawMessage, RawMessage.inbound_id == InboundMessage.id).where(InboundMessage.ticket_id.in_(c)), ids)
            | _ids_with(session, lambda c: select(Article.ticket_id).join(
                Attachment, Attachment.article_id == Article.id).where(Article.ticket_id.in_(c)), ids)
            | _ids_with(session, lambda c: select(OutboundMail.ticket_id).where(
                OutboundMail.ticket_id.in_(c), OutboundMail.state.in_(TERMINAL_OUTBOUND),
                func.length(OutboundMail.raw) > 0), ids)
        )
        anonymised = _ids_with(session, lambda c: select(Event.ticket_id).where(
            Event.ticket_id.in_(c), Event.type == "retention_anonymised"), ids)
        for ticket_id, number, closed_at in rows:
            assert closed_at is not None
            age = now - closed_at
            item = TicketRetention(ticket_id, number, queue.name, closed_at)
            anon_due = queue.anonymise_after_days is not None and age >= dt.timedelta(days=queue.anonymise_after_days)
            raw_due = queue.delete_raw_after_days is not None and age >= dt.timedelta(days=queue.delete_raw_after_days)
            item.anonymise = anon_due and ticket_id not in anonymised
            item.delete_raw = (raw_due or item.anonymise) and ticket_id in leftovers
            if item.anonymise or item.delete_raw:
                plan.tickets.append(item)
    unticketed_days = config.operations.delete_unticketed_after_days
    if unticketed_days is not None:
        plan.unticketed = list(session.scalars(
            select(InboundMessage.id).where(
                InboundMessage.ticket_id.is_(None),
                InboundMessage.state.in_((InboundState.IGNORED, InboundState.QUARANTINED)),
                InboundMessage.received_at <= now - dt.timedelta(days=unticketed_days),
            ).order_by(InboundMessage.id)))
    return plan


def rowcount(result: Any) -> int:
    """Rows hit by a bulk DELETE/UPDATE (a CursorResult; typed loosely by SQLAlchemy)."""
    return int(result.rowcount or 0)


def secure_delete(session: Session) -> None:
    """SQLite: overwrite deleted content with zeros in this connection (free pages keep no mail)."""
    if session.get_bind().dialect.name == "sqlite":
        session.execute(text("PRAGMA secure_delete=ON"))


def delete_orphan_contents(session: Session) -> None:
    session.execute(delete(AttachmentContent).where(
        ~exists().where(Attachment.sha256 == AttachmentContent.sha256)))


def delete_ticket_raw(session: Session, ticket_id: int) -> dict[str, int]:
    """Raw inbound mail, attachments and rendered outbound bytes of one ticket; the texts stay."""
    inbound_ids = select(InboundMessage.id).where(InboundMessage.ticket_id == ticket_id).scalar_subquery()
    raw = rowcount(session.execute(delete(RawMessage).where(RawMessage.inbound_id.in_(inbound_ids))))
    article_ids = select(Article.id).where(Article.ticket_id == ticket_id).scalar_subquery()
    attachments = rowcount(session.execute(delete(Attachment).where(Attachment.article_id.in_(article_ids))))
    delete_orphan_contents(session)
    outbound = rowcount(session.execute(update(OutboundMail).where(
        OutboundMail.ticket_id == ticket_id, OutboundMail.state.in_(TERMINAL_OUTBOUND),
        func.length(OutboundMail.raw) > 0).values(raw=b"")))
    return {"raw_messages": raw or 0, "attachments": attachments or 0, "outbound_bytes": outbound or 0}


def _ticket_people(session: Session, ticket: Ticket) -> list[str]:
    """Addresses and names of the requester and the external participants (not staff) of a ticket."""
    terms: set[str] = {t for t in (ticket.requester, ticket.requester_name) if t}
    for address, name, role in session.execute(
            select(Participant.address, Participant.name, Participant.role).where(Participant.ticket_id == ticket.id)):
        if role != "staff":
            terms.update(t for t in (address, name) if t)
    return sorted((t for t in terms if len(t) >= 3), key=len, reverse=True)


def scrub_ticket(session: Session, ticket: Ticket, terms: Sequence[str], *, addresses: Iterable[str]) -> None:
    """Replace `terms` everywhere in one ticket's rows; `addresses` lose their participant rows."""
    if not terms:
        return
    addresses = {a.lower() for a in addresses}
    ticket.subject = scrub_text(ticket.subject, terms) or ""
    if ticket.requester in addresses:
        ticket.requester, ticket.requester_name = None, None
    session.execute(delete(Participant).where(Participant.ticket_id == ticket.id, Participant.address.in_(addresses)))
    for article in session.scalars(select(Article).where(Article.ticket_id == ticket.id)):
        if article.sender in addresses:
            article.sender, article.sender_name = ANONYMISED, None
        article.sender_name = scrub_text(article.sender_name, terms)
        article.recipients = [ANONYMISED if r.lower() in addresses else r for r in article.recipients]
        article.subject = scrub_text(article.subject, terms) or ""
        article.text = scrub_text(article.text, terms) or ""
        article.new_text = scrub_text(article.new_text, terms) or ""
        article.html = None if article.html and _mentions(article.html, terms) else article.html
        for attachment in session.scalars(select(Attachment).where(Attachment.article_id == article.id)):
            attachment.filename = scrub_text(attachment.filename, terms) or ""
    for event in session.scalars(select(Event).where(Event.ticket_id == ticket.id)):
        if event.actor and event.actor.lower() in addresses:
            event.actor = ANONYMISED
        event.detail = scrub_json(event.detail, terms)
    for outbound in session.scalars(select(OutboundMail).where(OutboundMail.ticket_id == ticket.id)):
        if outbound.recipient.lower() in addresses:
            outbound.recipient = ANONYMISED
    for inbound in session.scalars(select(InboundMessage).where(InboundMessage.ticket_id == ticket.id)):
        inbound.envelope_from = None if inbound.envelope_from in addresses else inbound.envelope_from
        inbound.envelope_to = [ANONYMISED if a.lower() in addresses else a for a in inbound.envelope_to]
        inbound.reason = scrub_text(inbound.reason, terms)


def purge_ticket(session: Session, item: TicketRetention, now: dt.datetime) -> tuple[dict[str, int], list[str]]:
    """Apply one ticket's retention and record it as an event; also the Message-IDs of its outbound mails."""
    secure_delete(session)
    ticket = session.get(Ticket, item.ticket_id)
    if ticket is None:
        return {}, []
    message_ids = list(session.scalars(select(OutboundMail.message_id).where(
        OutboundMail.ticket_id == ticket.id, OutboundMail.state.in_(TERMINAL_OUTBOUND))))
    counts = delete_ticket_raw(session, ticket.id) if item.delete_raw else {}
    if item.anonymise:
        people = _ticket_people(session, ticket)
        addresses = [t for t in people if "@" in t]
        scrub_ticket(session, ticket, people, addresses=addresses)
        counts["terms_scrubbed"] = len(people)
        session.add(Event(ticket_id=ticket.id, type="retention_anonymised", actor="purge", created_at=now,
                          detail={"closed_at": item.closed_at.isoformat()}))
    if item.delete_raw:
        session.add(Event(ticket_id=ticket.id, type="retention_raw_deleted", actor="purge", created_at=now,
                          detail=dict(counts)))
    return counts, message_ids


def purge_unticketed(session: Session, inbound_ids: Sequence[int]) -> int:
    secure_delete(session)
    return rowcount(session.execute(delete(InboundMessage).where(InboundMessage.id.in_(inbound_ids))))


def remove_outbox_files(folder: Path, message_ids: Iterable[str], address: str | None = None) -> int:
    """Delivered copies in the dev-mode outbox folder: by Message-ID, and (erase) any file naming the address."""
    if not folder.is_dir():
        return 0
    stems = {re.sub(r"[^A-Za-z0-9._-]", "_", m.strip("<>"))[:150] for m in message_ids}
    needle = address.lower().encode() if address else None
    removed = 0
    for path in folder.iterdir():
        if not path.is_file():
            continue
        stem = path.name[1:-4] if path.name.startswith(".") else path.stem
        if stem in stems or (needle is not None and needle in path.read_bytes().lower()):
            path.unlink()
            removed += 1
    return removed


def compact(engine: Engine) -> None:
    """Make deleted bytes unreadable on disk: SQLite VACUUM plus WAL truncation; PostgreSQL VACUUM."""
    raw = engine.raw_connection()
    try:
        if engine.dialect.name == "sqlite":
            cur = raw.cursor()
            cur.execute("VACUUM")
            truncate_wal(cur)
            cur.close()
        else:
            driver = raw.driver_connection
            assert driver is not None
            driver.autocommit = True
            try:
                for table in ("raw_message", "attachment_content", "outbound_mail", "article", "event"):
                    driver.execute(f"VACUUM {table}")
            finally:
                driver.autocommit = False
    finally:
        raw.close()
