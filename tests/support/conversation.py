"""Helpers for the conversation tests: a config with staff, staff and citizen mails, reading sink mails."""

from __future__ import annotations

import datetime as dt
import uuid
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime

from tests.support.app import App
from tests.support.smtp_sink import SinkMessage, SmtpSink

AUTHSERV = "mx.stadt.example"
STAFF = "anna.schmidt@stadt.example"
CITIZEN = "erika@example.org"

QUEUES = """
[[queue]]
name = "buergerbuero"
address = "buergerbuero@stadt.example"
display_name = "Bürgerbüro Musterstadt"
staff = ["anna.schmidt@stadt.example", "@stadt.example"]

[[queue]]
name = "bauamt"
address = "bauamt@stadt.example"
display_name = "Bauamt Musterstadt"
language = "en"
staff = ["bernd.bau@stadt.example"]
"""


def configure(app: App, sink: SmtpSink | None = None, *, queues: str = QUEUES, **conversation: object) -> App:
    """Queues with staff, a trusted relay authserv-id, and (optionally) delivery into the SMTP sink."""
    app.queues_toml = queues
    if sink is not None:
        app.set("smtp_out", delivery="smtp", host=sink.host, port=sink.port)
    app.set("conversation", trusted_authserv_ids=[AUTHSERV], **conversation)
    return app


def mail(
    *,
    sender: str = f"Erika Mustermann <{CITIZEN}>",
    to: str = "buergerbuero@stadt.example",
    subject: str = "Frage zur Sperrmüllabholung",
    body: str = "Guten Tag,\n\nwann wird in der Müllerstraße der Sperrmüll abgeholt?\n\nErika Mustermann\n",
    message_id: str | None = None,
    in_reply_to: str | None = None,
    references: str | None = None,
    auth: str | None = None,
    headers: dict[str, str] | None = None,
    cc: str | None = None,
) -> bytes:
    """A raw mail; `auth` puts an Authentication-Results header of our relay on top (e.g. "dmarc=pass")."""
    msg = EmailMessage()
    if auth is not None:
        msg["Authentication-Results"] = f"{AUTHSERV}; {auth}"
        msg["Received"] = "from mail.example by mx.stadt.example with ESMTPS; " + format_datetime(dt.datetime.now(dt.UTC))
    msg["From"] = sender
    msg["To"] = to
    if cc:
        msg["Cc"] = cc
    msg["Subject"] = subject
    msg["Date"] = format_datetime(dt.datetime.now(dt.UTC))
    msg["Message-ID"] = message_id or f"<{uuid.uuid4().hex}@{sender.rpartition('@')[2].rstrip('>')}>"
    if in_reply_to:
        msg["In-Reply-To"] = in_reply_to
    if references:
        msg["References"] = references
    msg.set_content(body)
    for name, value in (headers or {}).items():  # after set_content, which drops Content-* headers
        msg[name] = value
    return msg.as_bytes(policy=SMTP)


def staff_mail(body: str, *, in_reply_to: str | None = None, subject: str = "AW: Vorgang",
               sender: str = f"Anna Schmidt <{STAFF}>", auth: str | None = "dmarc=pass header.from=stadt.example",
               **kwargs: object) -> bytes:
    return mail(sender=sender, body=body, in_reply_to=in_reply_to, references=in_reply_to, subject=subject,
                auth=auth, **kwargs)  # type: ignore[arg-type]


def text_of(message: SinkMessage) -> str:
    part = message.msg.get_body(preferencelist=("plain",))
    assert part is not None
    return str(part.get_content())


def only_to(sink: SmtpSink, address: str) -> list[SinkMessage]:
    return sink.to(address)


def header(message: SinkMessage, name: str) -> str:
    return str(message.msg.get(name, ""))


def ingest(app: App, raw: bytes, *, sender: str = CITIZEN,
           recipients: tuple[str, ...] = ("buergerbuero@stadt.example",)) -> dict[str, object]:
    """Store and process one mail through the real `ingest` command (in-process); its result entry."""
    path = app.root / f"in-{uuid.uuid4().hex}.eml"
    path.write_bytes(raw)
    args = ["ingest", str(path), "--sender", sender]
    for rcpt in recipients:
        args += ["--recipient", rcpt]
    results = app.json(*args)
    assert len(results) == 1, results
    return dict(results[0])


def outbound_mails(app: App, number: str | None = None) -> list[tuple[str, str, EmailMessage]]:
    """(template, recipient, parsed message) of every outbox row, optionally of one ticket, oldest first."""
    import email
    import email.policy

    from sqlalchemy import select

    from mail2ticket.db.engine import make_engine
    from mail2ticket.db.models import OutboundMail, Ticket

    engine = make_engine(app.database_url)
    try:
        with engine.connect() as conn:
            stmt = select(OutboundMail.template, OutboundMail.recipient, OutboundMail.raw).order_by(OutboundMail.id)
            if number is not None:
                stmt = stmt.join(Ticket, Ticket.id == OutboundMail.ticket_id).where(Ticket.number == number)
            rows = conn.execute(stmt).all()
    finally:
        engine.dispose()
    out = []
    for template, recipient, raw in rows:
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        out.append((str(template), str(recipient), msg))
    return out


def plain(msg: EmailMessage) -> str:
    part = msg.get_body(preferencelist=("plain",))
    assert part is not None
    return str(part.get_content())
