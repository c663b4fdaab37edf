"""Outbox enqueue: render and store an outgoing mail in the caller's transaction (transactional outbox).

The row holds the final bytes and a pre-generated Message-ID, so the worker only sends, and a retry or a
crash-resend is byte-identical. A deterministic dedupe key (unique in the database) makes a second
enqueue of the same mail a no-op, whichever instance tries it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from mail2ticket.db import repo
from mail2ticket.db.models import OutboundMail, Ticket
from mail2ticket.headers import clean_text
from mail2ticket.outbox.compose import Addressing, compose, new_message_id
from mail2ticket.runtime import Runtime
from mail2ticket.thread import subject_tag


@dataclass(frozen=True, slots=True)
class MailRequest:
    template: str
    recipient: str
    recipient_name: str | None
    dedupe_key: str
    automatic: bool = True
    in_reply_to: str | None = None
    references: Sequence[str] = ()
    extra: dict[str, Any] | None = None


def template_context(runtime: Runtime, ticket: Ticket, recipient_name: str | None) -> dict[str, Any]:
    queue = runtime.config.queue_by_name(ticket.queue)
    tag = subject_tag(runtime.config.daemon.subject_tag_prefix, ticket.number)
    return {
        "tag": tag,
        "number": ticket.number,
        "subject": clean_text(ticket.subject, max_len=120) or "(ohne Betreff)",
        "queue_name": clean_text(queue.display_name or queue.name, max_len=78),
        "queue_address": queue.address,
        "requester_name": clean_text(recipient_name, max_len=60),
        "status": ticket.status,
        "priority": ticket.priority,
    }


def enqueue(session: Session, runtime: Runtime, ticket: Ticket, request: MailRequest, now: dt.datetime) -> OutboundMail | None:
    if repo.outbound_by_dedupe_key(session, request.dedupe_key) is not None:
        return None
    queue = runtime.config.queue_by_name(ticket.queue)
    language = ticket.language or queue.language or runtime.config.daemon.language
    context = template_context(runtime, ticket, request.recipient_name)
    if request.extra:
        context.update(request.extra)
    rendered = runtime.renderer.render(request.template, language, context, queue=queue.name)
    msg_id = new_message_id(runtime.config.daemon.domain, request.template.replace("_", "-"))
    raw = compose(
        rendered,
        Addressing(
            from_addr=queue.address,
            from_name=queue.display_name,
            to_addr=request.recipient,
            to_name=request.recipient_name,
            in_reply_to=request.in_reply_to,
            references=request.references,
        ),
        msg_id=msg_id,
        domain=runtime.config.daemon.domain,
        language=language,
        automatic=request.automatic,
        now=now,
    )
    row = OutboundMail(
        ticket_id=ticket.id,
        template=request.template,
        automatic=request.automatic,
        recipient=request.recipient,
        envelope_from="" if request.automatic else queue.address,
        message_id=msg_id,
        dedupe_key=request.dedupe_key,
        raw=raw,
        next_attempt_at=now,
        created_at=now,
    )
    session.add(row)
    session.flush()
    return row
