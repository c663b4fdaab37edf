"""Quarantine service: what an admin can do with a parked message (used by `mail2ticket quarantine`).

A quarantined intake row keeps its exact raw bytes and the reason. From here it can be inspected, handed
back to processing (`retry`: after a rule fix or a raised limit), forced into a ticket (`release`), or
exported byte for byte. Functions take the caller's session and never commit.

`release_as_ticket` bypasses rules and routing, and raises the parse limits fourfold (still inside the parse
worker's CPU and memory budget, so a bomb stays harmless). If even that parse fails, the ticket gets a stub
article that says why, with the original attached as `original.eml`; nothing is answered automatically.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from collections.abc import Sequence
from email.header import decode_header, make_header

from sqlalchemy import select
from sqlalchemy.orm import Session

from mail2ticket.db import repo
from mail2ticket.db.models import InboundMessage, InboundState, RawMessage, Ticket
from mail2ticket.addresses import parse_address_list
from mail2ticket.safe_text import clean_text
from mail2ticket.intake import split_head
from mail2ticket.outcomes import Quarantine
from mail2ticket.parse import Limits, ParsedAttachment, ParsedMail
from mail2ticket.parse_guard import ParseGuard
from mail2ticket.pipeline import store
from mail2ticket.pipeline.conversation import arrival_queues
from mail2ticket.rules import Decision
from mail2ticket.runtime import Runtime

RELEASE_LIMIT_FACTOR = 4
_UNSAFE_TERMINAL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069]")


class QuarantineError(Exception):
    """The requested quarantine action is not possible (unknown id, wrong state)."""


def quarantined(session: Session, limit: int | None = None) -> list[InboundMessage]:
    stmt = select(InboundMessage).where(InboundMessage.state == InboundState.QUARANTINED).order_by(InboundMessage.id)
    if limit:
        stmt = stmt.limit(limit)
    return list(session.scalars(stmt))


def get(session: Session, inbound_id: int) -> InboundMessage:
    row = repo.get_inbound(session, inbound_id, with_raw=True)
    if row is None:
        raise QuarantineError(f"no stored message with id {inbound_id}")
    return row


def raw_bytes(session: Session, inbound_id: int) -> bytes:
    data = session.scalar(select(RawMessage.data).where(RawMessage.inbound_id == inbound_id))
    if data is None:
        raise QuarantineError(f"no raw bytes kept for message {inbound_id} (deleted by retention?)")
    return bytes(data)


def header_block(raw: bytes, max_bytes: int = 64 * 1024) -> str:
    """The raw header block as text that is safe to print on a terminal (control and bidi characters escaped)."""
    head, _ = split_head(raw[: max_bytes + 4])
    text = head[:max_bytes].decode("utf-8", errors="replace").replace("\r\n", "\n").replace("\r", "\n")
    return _UNSAFE_TERMINAL.sub(lambda m: f"\\x{{{ord(m.group(0)):x}}}", text)


def reset_for_retry(session: Session, ids: Sequence[int]) -> list[int]:
    """Put quarantined messages back to `new`; returns the ids that were reset."""
    reset: list[int] = []
    for inbound_id in ids:
        row = get(session, inbound_id)
        if row.state != InboundState.QUARANTINED:
            raise QuarantineError(f"message {inbound_id} is {InboundState(row.state).value}, not quarantined")
        row.state = InboundState.NEW
        row.not_before = None
        row.claimed_by = None
        row.claim_expires_at = None
        repo.add_event(session, "quarantine_retry", inbound_id=inbound_id, reason=row.reason)
        reset.append(inbound_id)
    return reset


def release_as_ticket(session: Session, runtime: Runtime, guard: ParseGuard, inbound_id: int, *,
                      queue: str | None, now: dt.datetime) -> Ticket:
    """Force a ticket for a quarantined (or ignored) message, bypassing rules; no mail is sent."""
    row = get(session, inbound_id)
    if row.state not in (InboundState.QUARANTINED, InboundState.IGNORED):
        raise QuarantineError(f"message {inbound_id} is {InboundState(row.state).value}; only quarantined or ignored mail is released")
    assert row.raw is not None
    raw = row.raw.data
    config = runtime.config
    limits = relaxed(runtime.limits, len(raw))
    guard.cpu_seconds = config.limits.parse_timeout
    try:
        parsed = guard.analyse(raw, limits, envelope_from=row.envelope_from, envelope_to=row.envelope_to,
                               noreply_patterns=config.loop_protection.noreply_patterns).parsed
        stub = False
    except Quarantine as outcome:
        reasons = dict.fromkeys(r for r in (row.reason, outcome.reason) if r)
        parsed = stub_mail(raw, "; ".join(reasons))
        stub = True
    if queue is not None:
        config.queue_by_name(queue)  # raises for an unknown queue name
        target = queue
    else:
        arrival = arrival_queues(runtime, row, parsed)
        target = arrival[0] if arrival else config.queue[0].name
    decision = Decision(rule=None, action="ticket", reason="released from quarantine", queue=target,
                        priority="normal", category=None, tags=("released",), reply=None, requester="from")
    queue_config = config.queue_by_name(target)
    ticket = store.create_ticket(session, number_format=config.daemon.ticket_number_format, parsed=parsed,
                                 decision=decision, requester=parsed.from_addr, requester_name=parsed.from_name,
                                 language=queue_config.language or config.daemon.language, now=now)
    store.add_inbound_article(session, ticket, parsed, row, kind="mail", now=now)
    if parsed.from_addr and parsed.from_addr not in config.own_addresses:
        repo.add_participant(session, ticket.id, parsed.from_addr, parsed.from_name, "requester")
    repo.add_event(session, "ticket_created", ticket_id=ticket.id, inbound_id=row.id, actor=parsed.from_addr,
                   queue=ticket.queue, classification=row.classification or "unknown")
    repo.add_event(session, "quarantine_released", ticket_id=ticket.id, inbound_id=row.id,
                   previous_state=InboundState(row.state).value, previous_reason=(row.reason or "")[:500], stub=stub)
    row.state = InboundState.DONE
    row.ticket_id = ticket.id
    row.reason = f"released as ticket (was: {row.reason or InboundState(row.state).value})"[:2000]
    row.processed_at = now
    return ticket


def relaxed(limits: Limits, size: int) -> Limits:
    factor = RELEASE_LIMIT_FACTOR
    return dataclasses.replace(
        limits,
        max_message_size=max(limits.max_message_size, size),
        max_parts=limits.max_parts * factor,
        max_depth=limits.max_depth * factor,
        max_header_bytes=limits.max_header_bytes * factor,
        max_header_count=limits.max_header_count * factor,
        max_line_length=limits.max_line_length * factor,
        max_attachment_size=max(limits.max_attachment_size, size),
        max_attachments_total=max(limits.max_attachments_total, size),
        max_recipients=limits.max_recipients * factor,
    )


def _decoded(value: str) -> str:
    try:
        return str(make_header(decode_header(value)))
    except Exception:  # noqa: BLE001 - broken encoded words: the raw text will do
        return value


def stub_mail(raw: bytes, reason: str) -> ParsedMail:
    """A placeholder for mail that cannot be parsed even with raised limits: headers read loosely, original attached."""
    head, _ = split_head(raw[: 256 * 1024])
    fields: dict[str, str] = {}
    for match in re.finditer(rb"^([A-Za-z0-9-]{1,76}):[ \t]*(.*(?:\r?\n[ \t].*)*)", head, re.MULTILINE):
        name = match.group(1).decode("ascii").lower()
        if name in ("subject", "from", "message-id") and name not in fields:
            fields[name] = " ".join(match.group(2).decode("utf-8", "replace").split())[:2000]
    senders = parse_address_list(fields.get("from"), limit=1)
    text = (f"Diese Nachricht konnte nicht verarbeitet werden ({clean_text(reason, max_len=300)}).\n"
            "Die Originalnachricht ist unverändert als original.eml angehängt.\n\n"
            f"This message could not be processed ({clean_text(reason, max_len=300)}).\n"
            "The original is attached unchanged as original.eml.\n")
    message_id = fields.get("message-id")
    return ParsedMail(
        msg=None, message_id=message_id if message_id and re.fullmatch(r"<[^<>\s]{1,900}>", message_id)
        else None, in_reply_to=(), references=(),
        subject=clean_text(_decoded(fields.get("subject", "")), max_len=998) or "(unlesbare Nachricht)",
        from_addr=senders[0][1] if senders else None, from_name=(senders[0][0] or None) if senders else None,
        reply_to=None, to=(), cc=(), date=None, text=text, html=None,
        attachments=(ParsedAttachment("original.eml", "message/rfc822", raw),),
        thread_index=None, defects=("ReleasedStub",), headers={},
    )
