"""Data-subject requests (GDPR Art. 15, 17), used by `person`: where a person appears, and erasing them.

`person erase` deletes the tickets a person requested, deletes what they wrote and what was sent to them
elsewhere, and scrubs their address and names from everything that stays (texts, events, raw bytes). It runs
in one transaction that the caller owns; the caller calls `retention.compact` afterwards, because deleted rows
stay readable in free pages of an SQLite file until it is vacuumed.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import delete, or_, select
from sqlalchemy.orm import Session

from mail2ticket.db.models import (
    Article,
    Attachment,
    AttachmentContent,
    Event,
    InboundMessage,
    OutboundMail,
    Participant,
    RawMessage,
    Ticket,
)
from mail2ticket.retention import (
    ANONYMISED,
    TERMINAL_OUTBOUND,
    contains,
    delete_orphan_contents,
    rowcount,
    scrub_json,
    scrub_text,
    scrub_ticket,
    secure_delete,
)


@dataclass
class Footprint:
    """Where one person appears: tickets they requested, other tickets, outbound mails, intake rows."""

    address: str
    names: list[str] = field(default_factory=list)
    requested: list[int] = field(default_factory=list)
    involved: list[int] = field(default_factory=list)
    outbound: list[int] = field(default_factory=list)
    inbound: list[int] = field(default_factory=list)
    attachments: list[str] = field(default_factory=list)

    @property
    def terms(self) -> list[str]:
        return sorted({self.address, *(n for n in self.names if len(n) >= 3)}, key=len, reverse=True)


def _scan_bytes(session: Session, stmt: Any, address: str) -> list[Any]:
    """Keys of rows whose bytes mention the address (streamed in batches; raw mail is never loaded at once)."""
    needle = address.lower().encode()
    return [key for key, data in session.execute(stmt.execution_options(yield_per=200))
            if data and needle in bytes(data).lower()]


def find_person(session: Session, address: str) -> Footprint:
    addr = address.strip().lower()
    fp = Footprint(addr)
    names = set(session.scalars(select(Ticket.requester_name).where(Ticket.requester == addr)))
    names |= set(session.scalars(select(Participant.name).where(Participant.address == addr)))
    names |= set(session.scalars(select(Article.sender_name).where(Article.sender == addr)))
    fp.names = sorted(n for n in names if n)
    fp.requested = list(session.scalars(select(Ticket.id).where(Ticket.requester == addr).order_by(Ticket.id)))
    fp.inbound = sorted(set(session.scalars(select(InboundMessage.id).where(or_(
        InboundMessage.envelope_from == addr, contains(InboundMessage.envelope_to, addr),
        contains(InboundMessage.reason, addr))))) | set(_scan_bytes(
            session, select(RawMessage.inbound_id, RawMessage.data), addr)))
    fp.outbound = sorted(set(session.scalars(select(OutboundMail.id).where(OutboundMail.recipient == addr)))
                         | set(_scan_bytes(session, select(OutboundMail.id, OutboundMail.raw), addr)))
    fp.attachments = _scan_bytes(session, select(AttachmentContent.sha256, AttachmentContent.data), addr)
    involved: set[int] = set()
    for stmt in (
        select(Participant.ticket_id).where(Participant.address == addr),
        select(Ticket.id).where(contains(Ticket.subject, addr)),
        select(Article.ticket_id).where(or_(Article.sender == addr, contains(Article.recipients, addr),
                                            contains(Article.text, addr), contains(Article.subject, addr),
                                            contains(Article.html, addr))),
        select(Event.ticket_id).where(or_(Event.actor == addr, contains(Event.detail, addr))),
        select(OutboundMail.ticket_id).where(OutboundMail.id.in_(fp.outbound or [-1])),
        select(InboundMessage.ticket_id).where(InboundMessage.id.in_(fp.inbound or [-1])),
        select(Article.ticket_id).join(Attachment, Attachment.article_id == Article.id).where(
            Attachment.sha256.in_(fp.attachments or [""])),
    ):
        involved.update(i for i in session.scalars(stmt) if i is not None)
    fp.involved = sorted(involved - set(fp.requested))
    return fp


@dataclass
class Erased:
    tickets_deleted: int = 0
    tickets_scrubbed: int = 0
    articles_deleted: int = 0
    outbound_deleted: int = 0
    outbound_bytes_cleared: int = 0
    intake_rows_deleted: int = 0
    raw_messages_deleted: int = 0
    attachments_deleted: int = 0
    outbound_message_ids: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, int]:
        return {k: v for k, v in self.__dict__.items() if isinstance(v, int)}


def erase_person(session: Session, fp: Footprint, now: dt.datetime) -> Erased:
    """Art. 17 within one transaction: delete what is theirs, scrub them from what stays."""
    secure_delete(session)
    out = Erased()
    terms, addr = fp.terms, fp.address
    requested = list(fp.requested)
    # Outbound mails: to them, about their tickets, or mentioning them (a queued one would still be sent).
    gone_outbound = set(fp.outbound) | set(session.scalars(
        select(OutboundMail.id).where(OutboundMail.ticket_id.in_(requested or [-1]))))
    for ob in session.scalars(select(OutboundMail).where(OutboundMail.id.in_(sorted(gone_outbound) or [-1]))):
        out.outbound_message_ids.append(ob.message_id)
        if ob.recipient == addr or ob.ticket_id in requested or ob.state not in TERMINAL_OUTBOUND:
            session.delete(ob)
            out.outbound_deleted += 1
        else:
            ob.raw = b""
            out.outbound_bytes_cleared += 1
    # Intake rows: whole rows when they belong to no surviving ticket, else only the raw bytes.
    survivors = set(fp.involved)
    for row in session.scalars(select(InboundMessage).where(or_(
            InboundMessage.id.in_(fp.inbound or [-1]), InboundMessage.ticket_id.in_(requested or [-1])))):
        if row.ticket_id in survivors:
            out.raw_messages_deleted += rowcount(session.execute(
                delete(RawMessage).where(RawMessage.inbound_id == row.id)))
            row.envelope_from = None if row.envelope_from == addr else row.envelope_from
            row.envelope_to = [ANONYMISED if a.lower() == addr else a for a in row.envelope_to]
            row.reason = scrub_text(row.reason, terms)
        else:
            session.delete(row)
            out.intake_rows_deleted += 1
    session.flush()
    # Attachments whose bytes name them, wherever they hang.
    if fp.attachments:
        out.attachments_deleted = rowcount(session.execute(
            delete(Attachment).where(Attachment.sha256.in_(fp.attachments))))
    # Their own tickets go completely (articles, attachments, participants, events cascade).
    if requested:
        out.tickets_deleted = rowcount(session.execute(delete(Ticket).where(Ticket.id.in_(requested))))
    # What they wrote into other tickets goes; everything else there is scrubbed.
    if survivors:
        out.articles_deleted = rowcount(session.execute(delete(Article).where(
            Article.ticket_id.in_(sorted(survivors)), Article.sender == addr)))
    for ticket in session.scalars(select(Ticket).where(Ticket.id.in_(sorted(survivors) or [-1]))):
        scrub_ticket(session, ticket, terms, addresses=[addr])
        out.tickets_scrubbed += 1
    for event in session.scalars(select(Event).where(Event.ticket_id.is_(None), or_(
            Event.actor == addr, contains(Event.detail, addr)))):
        event.actor = ANONYMISED if event.actor == addr else event.actor
        event.detail = scrub_json(event.detail, terms)
    delete_orphan_contents(session)
    # The record of the erasure names no one: counts only.
    session.add(Event(type="person_erased", actor="cli", created_at=now, detail=out.as_json()))
    return out
