"""Outbox enqueue: render and store an outgoing mail in the caller's transaction (transactional outbox).

The row holds the final bytes and a pre-generated Message-ID, so the worker only sends, and a retry or a
crash-resend is byte-identical. A deterministic dedupe key (unique in the database) makes a second
enqueue of the same mail a no-op, whichever instance tries it.

Every mail of a ticket is written so that the answer finds its way back: the ticket tag is in the
subject (templates), Reply-To is the ticket's reply-token address (unless the queue turned tokens off),
In-Reply-To/References point into the conversation, and an Outlook `Thread-Index` continues the
ticket's conversation. The envelope sender is a VERP address naming the row, so a bounce names its mail.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from mail2ticket import tokens
from mail2ticket.db import conversation_repo, repo
from mail2ticket.db.rows import insert_now, update_now
from mail2ticket.db.models import OutboundMail, Ticket
from mail2ticket.safe_text import clean_text
from mail2ticket.outbox.compose import Addressing, compose, new_message_id
from mail2ticket.runtime import Runtime
from mail2ticket.thread import subject_tag
from mail2ticket.verp import verp_address


@dataclass(frozen=True, slots=True)
class MailRequest:
    template: str
    recipient: str
    recipient_name: str | None
    dedupe_key: str
    automatic: bool = True  # machine-written: RFC 3834 headers, counted by the rate limits
    in_reply_to: str | None = None
    references: Sequence[str] = ()
    extra: dict[str, Any] | None = None
    auto_submitted: str = "auto-replied"
    counted: bool | None = None  # counted by the automatic-mail rate limits; None: same as `automatic`
    reply_token: bool = True
    from_name: str | None = None  # instead of the queue's display name
    article_id: int | None = None
    to_staff: bool = False  # written for staff: in the queue's language, not the citizen's


def template_context(runtime: Runtime, ticket: Ticket, recipient_name: str | None,
                     language: str | None = None) -> dict[str, Any]:
    """The variables every template may use. Values from mail are data only and already single-line."""
    queue = runtime.config.queue_by_name(ticket.queue)
    tag = subject_tag(runtime.config.daemon.subject_tag_prefix, ticket.number)
    status = runtime.config.conversation.status(ticket.status)
    language = ticket.language if language is None else language
    return {
        "tag": tag,
        "number": ticket.number,
        # Tags in the stored subject (ours or a refused one) are dropped: the mail carries its own tag.
        "subject": clean_text(runtime.tag_pattern.sub(" ", ticket.subject), max_len=120) or "(ohne Betreff)",
        "queue_name": clean_text(queue.display_name or queue.name, max_len=78),
        "queue_address": queue.address,
        "requester_name": clean_text(recipient_name, max_len=60),
        "status": ticket.status,
        "status_label": status.label(language) if status is not None else ticket.status,
        "priority": ticket.priority,
    }


def conversation_for(session: Session, runtime: Runtime, ticket: Ticket) -> bytes:
    """The 22-byte Outlook conversation of the ticket: the citizen's own, or a synthetic one naming the ticket."""
    first = conversation_repo.first_article(session, ticket.id)
    key = tokens.conversation_key(first.thread_index) if first is not None else None
    return key or tokens.synthetic_conversation(ticket.id, runtime.secret, ticket.created_at)


def _names_ticket(key: str, ticket_id: int) -> bool:
    """Whether a dedupe key is one of a ticket's own (`ack:<id>`, `notify:<id>:…`, `status:<id>:…`)."""
    parts = key.split(":", 2)
    return len(parts) > 1 and parts[1] == str(ticket_id)


def enqueue(session: Session, runtime: Runtime, ticket: Ticket, request: MailRequest,
            now: dt.datetime) -> OutboundMail | None:
    fresh = conversation_repo.fresh_ticket(session, ticket.id)
    if fresh is not None and _names_ticket(request.dedupe_key, ticket.id):
        # A key naming a ticket that did not exist before this savepoint can only be one enqueued in it (a row
        # left by an earlier ticket with a reused id went with that ticket: ON DELETE CASCADE).
        if request.dedupe_key in fresh.dedupe_keys:
            return None
    elif repo.outbound_by_dedupe_key(session, request.dedupe_key) is not None:
        return None
    config = runtime.config
    queue = config.queue_by_name(ticket.queue)
    language: str
    if request.to_staff:
        language = queue.language or config.daemon.language
    else:
        language = ticket.language or queue.language or config.daemon.language
    context = template_context(runtime, ticket, request.recipient_name, language)
    if request.extra:
        context.update(request.extra)
    rendered = runtime.renderer.render(request.template, language, context, queue=queue.name)
    msg_id = new_message_id(config.daemon.domain, request.template.replace("_", "-"))
    reply_to = None
    if request.reply_token and queue.reply_token:
        reply_to = tokens.reply_address(queue.address, ticket.number, ticket.id, runtime.secret)
    sequence = conversation_repo.outbound_count(session, ticket.id) + 1
    raw = compose(
        rendered,
        Addressing(
            from_addr=queue.address,
            from_name=request.from_name or queue.display_name,
            to_addr=request.recipient,
            to_name=request.recipient_name,
            reply_to=reply_to,
            in_reply_to=request.in_reply_to,
            references=request.references,
            thread_index=tokens.child_thread_index(conversation_for(session, runtime, ticket), sequence),
        ),
        msg_id=msg_id,
        domain=config.daemon.domain,
        language=language,
        automatic=request.automatic,
        auto_submitted=request.auto_submitted,
        now=now,
    )
    row = insert_now(session, OutboundMail(
        ticket_id=ticket.id,
        article_id=request.article_id,
        template=request.template,
        automatic=request.automatic if request.counted is None else request.counted,
        recipient=request.recipient,
        envelope_from="",
        message_id=msg_id,
        dedupe_key=request.dedupe_key,
        raw=raw,
        next_attempt_at=now,
        created_at=now,
    ))
    # The VERP address names the row, so it needs the id the INSERT gave it: a second statement.
    update_now(session, row, envelope_from=verp_address(row.id, runtime.secret, config.daemon.domain))
    conversation_repo.note_enqueued(session, ticket.id, request.dedupe_key)
    return row

