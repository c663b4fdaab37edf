"""Durable intake: the one place every ingress (SMTP/LMTP, IMAP, CLI) hands raw bytes to.

`store` commits the exact bytes, envelope and identity of a message in one short transaction and only
then returns; the caller acknowledges (SMTP 250, IMAP flag/move, exit 0) after that. Duplicates are
recognised by source identity (e.g. IMAP mailbox/UIDVALIDITY/UID) and by a canonical content hash
scoped per channel, so a redelivery or a refetch returns the existing row instead of a new one.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from email.parser import BytesHeaderParser
from email.policy import compat32

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from mail2ticket.db import repo
from mail2ticket.db.engine import unit_of_work
from mail2ticket.db.models import InboundMessage, RawMessage

# Headers a relay or delivery agent prepends; a redelivered copy may differ only in these.
TRACE_HEADERS = frozenset(
    {b"received", b"return-path", b"delivered-to", b"x-original-to", b"x-envelope-from", b"x-envelope-to",
     b"x-rcpt-to", b"x-spam-status", b"x-spam-score", b"x-spam-flag", b"x-virus-scanned", b"authentication-results"}
)
_HEADER_END = re.compile(rb"\r?\n\r?\n")
MAX_MESSAGE_ID = 998


@dataclass(frozen=True, slots=True)
class Envelope:
    """Where a message came from and how: set by the ingress, never parsed from the content."""

    source: str  # "smtp" | "lmtp" | "imap" | "cli"
    mail_from: str | None = None  # "" is the null sender; None means unknown (IMAP, files)
    rcpt_to: Sequence[str] = ()
    mailbox: str | None = None  # IMAP mailbox name, or the queue an import is aimed at
    source_key: str | None = None  # unique identity at the source, e.g. "imap:bauamt:INBOX:1700000000:42"
    peer: str | None = None
    archive: bool = False  # imported history: keep the mail's date, send no mail


@dataclass(frozen=True, slots=True)
class Stored:
    inbound_id: int
    duplicate: bool


def split_head(raw: bytes) -> tuple[bytes, bytes]:
    match = _HEADER_END.search(raw)
    if match is None:
        return raw, b""
    return raw[: match.start()], raw[match.end() :]


def content_hash(raw: bytes) -> str:
    """sha256 over the message without leading trace headers and with line endings normalised."""
    head, body = split_head(raw)
    lines = re.split(rb"\r?\n", head)
    kept: list[bytes] = []
    skipping = False
    for line in lines:
        if line[:1] in (b" ", b"\t"):
            if not skipping:
                kept.append(line)
            continue
        name = line.split(b":", 1)[0].strip().lower()
        skipping = name in TRACE_HEADERS
        if not skipping:
            kept.append(line)
    digest = hashlib.sha256()
    digest.update(b"\n".join(kept))
    digest.update(b"\n\n")
    digest.update(re.sub(rb"\r\n?", b"\n", body).rstrip(b"\n"))
    return digest.hexdigest()


def header_message_id(raw: bytes) -> str | None:
    """The Message-ID from the header block alone (no MIME parse), or None."""
    head, _ = split_head(raw)
    try:
        headers = BytesHeaderParser(policy=compat32).parsebytes(head + b"\n\n")
        value = headers.get("Message-ID")
    except Exception:  # noqa: BLE001 - a broken header block only means "no Message-ID" here
        return None
    if not isinstance(value, str):
        return None
    value = " ".join(value.split())
    return value[:MAX_MESSAGE_ID] or None


def dedupe_scope(envelope: Envelope) -> str:
    """Content dedupe is scoped per IMAP mailbox; everything the relay or a pipe delivers shares one scope."""
    if envelope.source == "imap" and envelope.mailbox:
        return f"imap:{envelope.mailbox}"
    return "mail"


def store(
    factory: sessionmaker[Session],
    raw: bytes,
    envelope: Envelope,
    *,
    extra: Callable[[Session, InboundMessage], None] | None = None,
) -> Stored:
    """Commit the message durably and return its intake id; a duplicate returns the existing id.

    `extra` runs inside the same transaction for a new row (IMAP uses it to record the planned server action).
    """
    chash = content_hash(raw)
    scope = dedupe_scope(envelope)
    for _attempt in range(2):
        try:
            with unit_of_work(factory) as session:
                existing = repo.find_inbound_duplicate(session, envelope.source_key, scope, chash)
                if existing is not None:
                    return Stored(existing, duplicate=True)
                row = InboundMessage(
                    source=envelope.source,
                    source_key=envelope.source_key,
                    dedupe_scope=scope,
                    mailbox=envelope.mailbox,
                    envelope_from=envelope.mail_from,
                    envelope_to=list(envelope.rcpt_to),
                    peer=envelope.peer,
                    sha256=hashlib.sha256(raw).hexdigest(),
                    content_hash=chash,
                    message_id=header_message_id(raw),
                    size=len(raw),
                    archive=envelope.archive,
                )
                row.raw = RawMessage(data=raw)
                session.add(row)
                session.flush()
                if extra is not None:
                    extra(session, row)
                return Stored(row.id, duplicate=False)
        except IntegrityError:
            # Another instance stored the same message between our check and our insert.
            continue
    with unit_of_work(factory) as session:
        existing = repo.find_inbound_duplicate(session, envelope.source_key, scope, chash)
    if existing is None:
        raise RuntimeError("intake insert conflicted but no existing row was found")
    return Stored(existing, duplicate=True)
