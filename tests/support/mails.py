"""Builders for test mails: realistic German citizen mail as raw bytes."""

from __future__ import annotations

import uuid
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime
import datetime as dt


def citizen_mail(
    subject: str = "Frage zur Sperrmüllabholung",
    body: str = "Guten Tag,\n\nwann wird in der Müllerstraße der Sperrmüll abgeholt?\n\nMit freundlichen Grüßen\nErika Mustermann\n",
    sender: str = "Erika Mustermann <erika@example.org>",
    to: str = "buergerbuero@stadt.example",
    message_id: str | None = None,
    headers: dict[str, str] | None = None,
) -> bytes:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = format_datetime(dt.datetime.now(dt.UTC))
    msg["Message-ID"] = message_id or f"<{uuid.uuid4().hex}@example.org>"
    for name, value in (headers or {}).items():
        msg[name] = value
    msg.set_content(body)
    return msg.as_bytes(policy=SMTP)
