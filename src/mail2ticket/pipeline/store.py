"""Store stage: write tickets, articles, attachments and participants for one parsed mail.

Runs inside the orchestrator's transaction and never commits. Attachment bytes are stored once per
sha256; file names are neutralised for display.
"""

from __future__ import annotations

import datetime as dt
import hashlib

from sqlalchemy.orm import Session

from mail2ticket.db import repo
from mail2ticket.db.models import Article, Attachment, AttachmentContent, InboundMessage, Ticket
from mail2ticket.parse import ParsedMail
from mail2ticket.rules import Decision
from mail2ticket.text.filenames import display_filename
from mail2ticket.text.html import html_to_text, sanitize_html
from mail2ticket.text.quotes import new_text


def create_ticket(
    session: Session,
    *,
    number_format: str,
    parsed: ParsedMail,
    decision: Decision,
    requester: str | None,
    requester_name: str | None,
    language: str,
    now: dt.datetime,
) -> Ticket:
    seq = repo.next_ticket_seq(session, now.year)
    ticket = Ticket(
        number=number_format.format(year=now.year, seq=seq),
        queue=decision.queue,
        status="new",
        priority=decision.priority,
        category=decision.category,
        tags=list(decision.tags),
        subject=parsed.subject[:1000],
        requester=requester,
        requester_name=requester_name,
        language=language,
        created_at=now,
        updated_at=now,
    )
    session.add(ticket)
    session.flush()
    return ticket


def body_text(parsed: ParsedMail) -> str:
    if parsed.text.strip():
        return parsed.text
    if parsed.html:
        return html_to_text(parsed.html)
    return ""


def add_inbound_article(
    session: Session,
    ticket: Ticket,
    parsed: ParsedMail,
    inbound: InboundMessage,
    *,
    kind: str = "mail",
    internal: bool = False,
    now: dt.datetime,
) -> Article:
    text = body_text(parsed)
    article = Article(
        ticket_id=ticket.id,
        inbound_id=inbound.id,
        direction="in",
        kind=kind,
        internal=internal,
        sender=parsed.from_addr,
        sender_name=parsed.from_name,
        recipients=list(dict.fromkeys([*parsed.to, *parsed.cc]))[:100],
        message_id=parsed.message_id,
        in_reply_to=parsed.in_reply_to[0] if parsed.in_reply_to else None,
        thread_index=parsed.thread_index,
        subject=parsed.subject[:1000],
        text=text,
        new_text=new_text(text) if text else "",
        html=sanitize_html(parsed.html) if parsed.html else None,
        created_at=now,
    )
    session.add(article)
    session.flush()
    for attachment in parsed.attachments:
        digest = hashlib.sha256(attachment.data).hexdigest()
        if session.get(AttachmentContent, digest) is None:
            session.add(AttachmentContent(sha256=digest, size=len(attachment.data), data=attachment.data))
            session.flush()
        session.add(
            Attachment(
                article_id=article.id,
                filename=display_filename(attachment.filename)[:255],
                content_type=attachment.content_type[:255],
                size=len(attachment.data),
                sha256=digest,
                inline=attachment.inline,
            )
        )
    ticket.updated_at = now
    return article
