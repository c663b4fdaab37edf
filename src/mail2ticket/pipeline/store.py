"""Store stage: write tickets, articles, attachments and participants for one parsed mail.

Runs inside the orchestrator's transaction and never commits. Each article keeps the full text and the
new text (quotes and signature removed); an HTML-only mail is converted to text first and its HTML is
stored sanitised. Attachment bytes are stored once per sha256; file names are neutralised for display.
A TNEF `winmail.dat` is replaced by the files it carries (the blob is kept when it cannot be read).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import mimetypes
from collections.abc import Iterator

from sqlalchemy import bindparam, insert
from sqlalchemy.orm import Session

from mail2ticket.db import conversation_repo, repo, repo_raw
from mail2ticket.db.direct import Direct
from mail2ticket.db.engine import carrying
from mail2ticket.db.rows import insert_now
from mail2ticket.db.models import Article, Attachment, InboundMessage, Ticket
from mail2ticket.parse import ParsedAttachment, ParsedMail
from mail2ticket.rules import Decision
from mail2ticket.text.filenames import display_filename
from mail2ticket.text.body import body_new_text, body_text
from mail2ticket.text.html import sanitize_html
from mail2ticket.text.tnef import extract_tnef

TNEF_TYPES = frozenset({"application/ms-tnef", "application/vnd.ms-tnef"})


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
    status: str = "new",
    subject: str | None = None,
) -> Ticket:
    seq = repo.next_ticket_seq(session, now.year)
    ticket = insert_now(session, Ticket(
        number=number_format.format(year=now.year, seq=seq),
        queue=decision.queue,
        status=status,
        priority=decision.priority,
        category=decision.category,
        tags=list(decision.tags),
        subject=(parsed.subject if subject is None else subject)[:1000],
        requester=requester,
        requester_name=requester_name,
        language=language,
        created_at=now,
        updated_at=now,
    ))
    # Nothing outside this savepoint can refer to the ticket yet: its participants, mails and articles are
    # the ones added from now on, so the processing functions answer questions about them from memory.
    conversation_repo.register_fresh_ticket(session, ticket)
    return ticket


def add_inbound_article(
    session: Session,
    ticket: Ticket,
    parsed: ParsedMail,
    inbound: InboundMessage,
    *,
    kind: str = "mail",
    internal: bool = False,
    now: dt.datetime,
    text: str | None = None,
) -> Article:
    """The mail as an article; `text` replaces the body (e.g. a staff reply without its command lines)."""
    full = body_text(parsed) if text is None else text
    new_text = body_new_text(parsed, full)
    html = sanitize_html(parsed.html) if parsed.html else None
    with carrying(session, len(full) + len(new_text) + len(html or "")):  # a large body, on PostgreSQL
        article = insert_now(session, Article(
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
            text=full,
            new_text=new_text,
            html=html,
            created_at=now,
        ))
    _added(session, ticket, article)
    for attachment in expand_attachments(parsed.attachments):
        add_attachment(session, article, attachment)
    _touch(ticket, now)
    return article


def add_outbound_article(
    session: Session,
    ticket: Ticket,
    *,
    sender: str,
    sender_name: str | None,
    recipients: list[str],
    subject: str,
    text: str,
    message_id: str | None,
    in_reply_to: str | None,
    now: dt.datetime,
    kind: str = "mail",
    inbound_id: int | None = None,
) -> Article:
    """A message we send for the ticket (a staff reply); its Message-ID threads the citizen's answer."""
    article = insert_now(session, Article(
        ticket_id=ticket.id,
        inbound_id=inbound_id,
        direction="out",
        kind=kind,
        internal=False,
        sender=sender,
        sender_name=sender_name,
        recipients=recipients[:100],
        message_id=message_id,
        in_reply_to=in_reply_to,
        subject=subject[:1000],
        text=text,
        new_text=text,
        created_at=now,
    ))
    _added(session, ticket, article)
    _touch(ticket, now)
    return article


def _added(session: Session, ticket: Ticket, article: Article) -> None:
    fresh = conversation_repo.fresh_ticket(session, ticket.id)
    if fresh is not None and fresh.first_article is None:
        fresh.first_article = article


def _touch(ticket: Ticket, now: dt.datetime) -> None:
    """Set `updated_at`, unless it already holds this very value (a new ticket's first article): an unchanged
    ticket does not need the flush before the guard counts (`conversation_repo.flush_for`)."""
    if ticket.__dict__.get("updated_at") is not now:  # loaded and the same object; never loads or compares
        ticket.updated_at = now


def expand_attachments(attachments: tuple[ParsedAttachment, ...]) -> Iterator[ParsedAttachment]:
    """The attachments as stored: TNEF containers are replaced by their files when they can be read."""
    for attachment in attachments:
        is_tnef = attachment.content_type.lower() in TNEF_TYPES or (
            (attachment.filename or "").lower() == "winmail.dat")
        if not is_tnef:
            yield attachment
            continue
        files, _error = extract_tnef(attachment.data, max_files=100, max_bytes=max(len(attachment.data) * 2, 1))
        if not files:
            yield attachment  # unreadable: keep the blob, so nothing is lost
            continue
        for found in files:
            ctype = mimetypes.guess_type(found.name or "")[0] or "application/octet-stream"
            yield ParsedAttachment(found.name or None, ctype, found.data, inline=False)


def add_attachment(session: Session, article: Article, attachment: ParsedAttachment) -> None:
    digest = hashlib.sha256(attachment.data).hexdigest()
    repo_raw.add_content(session, digest, attachment.data)
    _INSERT_ATTACHMENT.execute(session, {
        "article_id": article.id,
        "filename": display_filename(attachment.filename)[:255],
        "content_type": attachment.content_type[:255],
        "size": len(attachment.data),
        "sha256": digest,
        "inline": attachment.inline,
    })


# Nothing reads the row back while processing: no ORM object.
_INSERT_ATTACHMENT = Direct(insert(Attachment).values({name: bindparam(name) for name in (
    "article_id", "filename", "content_type", "size", "sha256", "inline")}))
