"""Outbox composition: rendered text → the exact bytes of one outgoing mail, safe by construction.

Every header value goes through `mail2ticket.headers`, so nothing from an inbound mail can add a header,
and the result is checked once more on the wire (`serialize_checked`). Automatic mails carry the RFC 3834
marks and our loop header, so no well-behaved responder answers them and we recognise them if they return.
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from email.policy import default as default_policy
from email.utils import format_datetime

from mail2ticket.headers import UnsafeValue, message_id, serialize_checked, set_address, set_header
from mail2ticket.outbox.render import Rendered

LOOP_HEADER = "X-Mail2Ticket-Loop"


@dataclass(frozen=True, slots=True)
class Addressing:
    from_addr: str
    from_name: str | None
    to_addr: str
    to_name: str | None
    reply_to: str | None = None
    in_reply_to: str | None = None
    references: Sequence[str] = ()
    thread_index: str | None = None


def new_message_id(domain: str, kind: str) -> str:
    """A fresh Message-ID in our domain; it is stored with the outbox row, so retries reuse it."""
    return message_id(domain, f"m2t.{kind}.{secrets.token_hex(10)}")


def compose(
    rendered: Rendered,
    addressing: Addressing,
    *,
    msg_id: str,
    domain: str,
    language: str,
    automatic: bool,
    now: dt.datetime,
    auto_submitted: str | None = "auto-replied",
) -> bytes:
    """The wire bytes. `automatic` marks machine mail (RFC 3834 headers); `auto_submitted` is its kind:
    "auto-replied" for answers to a citizen's mail, "auto-generated" for notifications."""
    msg = EmailMessage(policy=default_policy)
    set_address(msg, "From", addressing.from_name, addressing.from_addr)
    set_address(msg, "To", addressing.to_name, addressing.to_addr)
    if addressing.reply_to:
        set_address(msg, "Reply-To", addressing.from_name, addressing.reply_to)
    try:
        set_header(msg, "Subject", rendered.subject)
    except UnsafeValue:
        # A citizen's subject that cannot be folded safely must not stop the mail: send it in plain ASCII.
        set_header(msg, "Subject", " ".join(rendered.subject.encode("ascii", "replace").decode().split())[:200])
    set_header(msg, "Date", format_datetime(now))
    set_header(msg, "Message-ID", msg_id)
    if addressing.in_reply_to:
        set_header(msg, "In-Reply-To", addressing.in_reply_to)
    refs = list(dict.fromkeys([*addressing.references, *( [addressing.in_reply_to] if addressing.in_reply_to else [])]))
    if refs:
        set_header(msg, "References", " ".join(refs[-20:]))
    if addressing.thread_index:
        set_header(msg, "Thread-Index", addressing.thread_index)
    if automatic:
        set_header(msg, "Auto-Submitted", auto_submitted or "auto-replied")
        set_header(msg, "X-Auto-Response-Suppress", "All")
        set_header(msg, "Precedence", "bulk")
    set_header(msg, LOOP_HEADER, domain)
    msg.set_content(rendered.text, subtype="plain", charset="utf-8", cte="quoted-printable")
    if rendered.html is not None:
        msg.add_alternative(rendered.html, subtype="html", charset="utf-8", cte="quoted-printable")
    # After the body: set_content() drops every Content-* header set before it.
    set_header(msg, "Content-Language", language)
    return serialize_checked(msg)
