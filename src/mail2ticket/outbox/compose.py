"""Outbox composition: rendered text → the exact bytes of one outgoing mail, safe by construction.

Every header value goes through `mail2ticket.headers`, so nothing from an inbound mail can add a header,
and the result is checked once more on the wire (`check_wire_message`). Automatic mails carry the RFC 3834
marks and our loop header, so no well-behaved responder answers them and we recognise them if they return.

A text-only mail (every acknowledgement) is written line by line: each header's wire form comes from
`headers.header_line`/`address_line` (verbatim for plain short ASCII, else the checked fold of `set_header`), the
body is quoted-printable exactly as `EmailMessage.set_content` encodes it. The result is the mail the
`EmailMessage` path (`_compose_message`, still used for mails with an HTML part) writes, byte for byte except that
a non-ASCII display name or subject may be other encoded words of the same meaning (`encoded_words`); tests
compare the two.
"""

from __future__ import annotations

import datetime as dt
import functools
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from email import quoprimime
from email.message import EmailMessage
from email.policy import default as default_policy
from email.utils import format_datetime

from mail2ticket.headers import address_line, check_wire_message, header_line, message_id, serialize_checked, set_address, set_header
from mail2ticket.safe_text import UnsafeValue
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
    if rendered.html is not None:
        return _compose_message(rendered, addressing, msg_id=msg_id, domain=domain, language=language,
                                automatic=automatic, now=now, auto_submitted=auto_submitted)
    names: list[str] = []
    lines: list[str] = []

    def add(name: str, line: str) -> None:
        names.append(name)
        lines.append(line)

    add("From", _constant_address_line("From", addressing.from_name, addressing.from_addr))
    add("To", address_line("To", addressing.to_name, addressing.to_addr))
    if addressing.reply_to:
        add("Reply-To", address_line("Reply-To", addressing.from_name, addressing.reply_to))
    try:
        add("Subject", header_line("Subject", rendered.subject))
    except UnsafeValue:
        # A citizen's subject that cannot be folded safely must not stop the mail: send it in plain ASCII.
        add("Subject", header_line("Subject", _ascii_subject(rendered.subject)))
    add("Date", header_line("Date", format_datetime(now)))
    add("Message-ID", header_line("Message-ID", msg_id))
    if addressing.in_reply_to:
        add("In-Reply-To", header_line("In-Reply-To", addressing.in_reply_to))
    refs = _references(addressing)
    if refs:
        add("References", header_line("References", " ".join(refs)))
    if addressing.thread_index:
        add("Thread-Index", header_line("Thread-Index", addressing.thread_index))
    if automatic:
        add("Auto-Submitted", header_line("Auto-Submitted", auto_submitted or "auto-replied"))
        add("X-Auto-Response-Suppress", _constant_header_line("X-Auto-Response-Suppress", "All"))
        add("Precedence", _constant_header_line("Precedence", "bulk"))
    add(LOOP_HEADER, _constant_header_line(LOOP_HEADER, domain))
    names.extend(_TEXT_PLAIN_NAMES)
    lines.append(_TEXT_PLAIN_HEAD)
    add("Content-Language", header_line("Content-Language", language))
    data = ("".join(lines) + "\r\n" + _qp_body(rendered.text)).encode("ascii")
    check_wire_message(data, names)
    return data


# What EmailMessage.set_content(text, subtype="plain", charset="utf-8", cte="quoted-printable") adds, as
# policy.SMTP writes it (tests compare this with the email package).
_TEXT_PLAIN_NAMES = ("Content-Type", "Content-Transfer-Encoding", "MIME-Version")
_TEXT_PLAIN_HEAD = ('Content-Type: text/plain; charset="utf-8"\r\n'
                    "Content-Transfer-Encoding: quoted-printable\r\n"
                    "MIME-Version: 1.0\r\n")


_QP_LINE_LENGTH = 78  # policy.default.max_line_length, which set_content encodes with


def _qp_body(text: str) -> str:
    """The body as set_content(cte="quoted-printable") encodes it (email.contentmanager._encode_text, policy.default
    line length) and policy.SMTP writes it: CRLF line ends."""
    lines = text.encode("utf-8").splitlines()
    encoded = quoprimime.body_encode((b"\n".join(lines) + b"\n").decode("latin-1"), _QP_LINE_LENGTH)
    return encoded.replace("\r\n", "\n").replace("\r", "\n").replace("\n", "\r\n")


# Per-config constants (the queue's From line, the loop header): checked once, then reused. Only values from the
# configuration go through these, so the caches stay small.
_constant_address_line = functools.lru_cache(maxsize=256)(address_line)
_constant_header_line = functools.lru_cache(maxsize=256)(header_line)


def _references(addressing: Addressing) -> list[str]:
    """The last 20 distinct message ids of the conversation, the one answered last."""
    irt = [addressing.in_reply_to] if addressing.in_reply_to else []
    return list(dict.fromkeys([*addressing.references, *irt]))[-20:]


def _ascii_subject(subject: str) -> str:
    return " ".join(subject.encode("ascii", "replace").decode().split())[:200]


def _compose_message(
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
    """The wire bytes, built as an EmailMessage (mails with an HTML part; the reference for `compose`)."""
    msg = EmailMessage(policy=default_policy)
    set_address(msg, "From", addressing.from_name, addressing.from_addr)
    set_address(msg, "To", addressing.to_name, addressing.to_addr)
    if addressing.reply_to:
        set_address(msg, "Reply-To", addressing.from_name, addressing.reply_to)
    try:
        set_header(msg, "Subject", rendered.subject)
    except UnsafeValue:
        # A citizen's subject that cannot be folded safely must not stop the mail: send it in plain ASCII.
        set_header(msg, "Subject", _ascii_subject(rendered.subject))
    set_header(msg, "Date", format_datetime(now))
    set_header(msg, "Message-ID", msg_id)
    if addressing.in_reply_to:
        set_header(msg, "In-Reply-To", addressing.in_reply_to)
    refs = _references(addressing)
    if refs:
        set_header(msg, "References", " ".join(refs))
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
