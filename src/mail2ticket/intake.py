"""Durable intake: the one place every ingress (SMTP/LMTP, IMAP, CLI) hands raw bytes to.

`store` commits the exact bytes, envelope and identity of a message in one short transaction and only
then returns; the caller acknowledges (SMTP 250, IMAP flag/move, exit 0) after that. Duplicates are
recognised by source identity (e.g. IMAP mailbox/UIDVALIDITY/UID) and by a canonical content hash
scoped per channel, so a redelivery or a refetch returns the existing row instead of a new one.

The steps are also offered apart, for the SMTP listener's group commit (`group_commit`): `prepare` computes
the hashes and the Message-ID (pure CPU, outside any transaction) and `insert` adds one message inside the
caller's transaction. A message may be given as the parts it arrived in (SMTP DATA, ~1 MiB each): nothing
here joins them, the body is hashed piecewise, and `repo_raw` writes the parts straight into the blob, so a
large mail exists once in memory rather than four or five times.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from email.parser import BytesHeaderParser
from email.policy import compat32
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from mail2ticket.db import repo, repo_raw
from mail2ticket.db.engine import unit_of_work
from mail2ticket.db.models import InboundMessage
from mail2ticket.db.rows import insert_now
from mail2ticket.db.savepoint import savepoint

# Headers a relay or delivery agent prepends; a redelivered copy may differ only in these.
TRACE_HEADERS = frozenset(
    {b"received", b"return-path", b"delivered-to", b"x-original-to", b"x-envelope-from", b"x-envelope-to",
     b"x-rcpt-to", b"x-spam-status", b"x-spam-score", b"x-spam-flag", b"x-virus-scanned", b"authentication-results"}
)
_HEADER_END = re.compile(rb"\r?\n\r?\n")
_LONE_CR = re.compile(rb"\r(?!\n)")
MAX_MESSAGE_ID = 998
# The body is normalised and hashed in pieces of this size instead of as two whole-message copies.
HASH_PIECE = 1 << 20


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


def _head_end(parts: Sequence[bytes]) -> tuple[int, int] | None:
    """(start, end) offsets of the first blank line over the concatenated parts, without concatenating them.

    A match can straddle a part boundary only by starting in the last 3 bytes before it (the pattern is at
    most 4 bytes long), so besides each part the 3-byte tail before it plus its first 3 bytes are searched.
    """
    offset = 0
    tail = b""
    for part in parts:
        if tail:
            straddle = _HEADER_END.search(tail + part[:3])
            if straddle is not None and straddle.start() < len(tail):
                base = offset - len(tail)
                return base + straddle.start(), base + straddle.end()
        match = _HEADER_END.search(part)
        if match is not None:
            return offset + match.start(), offset + match.end()
        offset += len(part)
        tail = (tail + part[-3:])[-3:]
    return None


def _slices(parts: Sequence[bytes], start: int, stop: int | None) -> Iterator[memoryview]:
    """Views of bytes start..stop (None: to the end) of the concatenated parts; no copies."""
    offset = 0
    for part in parts:
        size = len(part)
        lo = max(start - offset, 0)
        hi = size if stop is None else min(stop - offset, size)
        if lo < hi:
            yield memoryview(part)[lo:hi]
        offset += size
        if stop is not None and offset >= stop:
            return


def _feed_body(digest: Any, views: Iterator[memoryview]) -> None:
    """digest.update(re.sub(rb"\r\n?", b"\n", body).rstrip(b"\n")), in bounded pieces instead of two full copies."""
    held = 0  # newlines produced but not yet written: dropped if nothing else follows (the rstrip)
    carry_cr = False  # a CR at a piece end may pair with an LF at the start of the next piece
    for view in views:
        for lo in range(0, len(view), HASH_PIECE):
            piece = bytes(view[lo : lo + HASH_PIECE])
            if carry_cr:
                piece = b"\r" + piece
            carry_cr = piece.endswith(b"\r")
            if carry_cr:
                piece = piece[:-1]
            normal = _line_ends_to_lf(piece)
            kept = normal.rstrip(b"\n")
            if kept:
                if held:
                    digest.update(b"\n" * held)
                digest.update(kept)
                held = len(normal) - len(kept)
            else:
                held += len(normal)


def _line_ends_to_lf(piece: bytes) -> bytes:
    """CRLF and lone CR to LF. Mail from SMTP has CRLF only: deleting every CR is the same and 3 times faster."""
    if _LONE_CR.search(piece) is None:
        return piece.translate(None, b"\r")
    return piece.replace(b"\r\n", b"\n").replace(b"\r", b"\n")


def content_hash(raw: bytes | Sequence[bytes]) -> str:
    """sha256 over the message without leading trace headers and with line endings normalised.

    Takes the bytes or the parts they arrived in; the head is copied (it is small), the body only piecewise.
    """
    parts = _as_parts(raw)
    bounds = _head_end(parts)
    return _content_hash(parts, bounds, _head(parts, bounds))


def _as_parts(raw: bytes | Sequence[bytes]) -> Sequence[bytes]:
    return (raw,) if isinstance(raw, bytes) else raw


def _head(parts: Sequence[bytes], bounds: tuple[int, int] | None) -> bytes:
    return b"".join(_slices(parts, 0, bounds[0] if bounds is not None else None))


def _content_hash(parts: Sequence[bytes], bounds: tuple[int, int] | None, head: bytes) -> str:
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
    if bounds is not None:
        _feed_body(digest, _slices(parts, bounds[1], None))
    return digest.hexdigest()


def header_message_id(raw: bytes) -> str | None:
    """The Message-ID from the header block alone (no MIME parse), or None."""
    head, _ = split_head(raw)
    return _message_id(head)


def _message_id(head: bytes) -> str | None:
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


@dataclass(frozen=True, slots=True)
class Prepared:
    """A message ready to insert: its parts (never joined here) and everything computed from them.

    Computing this is pure CPU work, done outside the transaction (and, for SMTP, outside the committer thread).
    """

    parts: Sequence[bytes]
    envelope: Envelope
    size: int
    sha256: str
    content_hash: str
    message_id: str | None

    @property
    def scope(self) -> str:
        return dedupe_scope(self.envelope)


def prepare(raw: bytes | Sequence[bytes], envelope: Envelope) -> Prepared:
    """Hashes, size and Message-ID of a message given whole or as the parts it arrived in."""
    parts = _as_parts(raw)
    bounds = _head_end(parts)
    head = _head(parts, bounds)
    whole = hashlib.sha256()
    for part in parts:
        whole.update(part)
    return Prepared(parts=parts, envelope=envelope, size=sum(len(p) for p in parts), sha256=whole.hexdigest(),
                    content_hash=_content_hash(parts, bounds, head), message_id=_message_id(head))


def find_duplicate(session: Session, prepared: Prepared) -> int | None:
    """The id of a row that already holds this message (same source identity or same content in scope)."""
    return repo.find_inbound_duplicate(session, prepared.envelope.source_key, prepared.scope, prepared.content_hash)


def insert(session: Session, prepared: Prepared,
           extra: Callable[[Session, InboundMessage], None] | None = None) -> Stored:
    """Inside the caller's transaction: return the existing row for a duplicate, else add and flush a new one.

    Rows flushed earlier in the same transaction count as existing, so a batch recognises its own duplicates.
    Does not commit and does not catch IntegrityError (a concurrent insert): that is the caller's to handle.
    """
    existing = find_duplicate(session, prepared)
    if existing is not None:
        return Stored(existing, duplicate=True)
    envelope = prepared.envelope
    row = insert_now(session, InboundMessage(
        source=envelope.source,
        source_key=envelope.source_key,
        dedupe_scope=prepared.scope,
        mailbox=envelope.mailbox,
        envelope_from=envelope.mail_from,
        envelope_to=list(envelope.rcpt_to),
        peer=envelope.peer,
        sha256=prepared.sha256,
        content_hash=prepared.content_hash,
        message_id=prepared.message_id,
        size=prepared.size,
        archive=envelope.archive,
    ))
    repo_raw.add_raw(session, row.id, prepared.parts, prepared.size)
    if extra is not None:
        extra(session, row)
    return Stored(row.id, duplicate=False)


def store(
    factory: sessionmaker[Session],
    raw: bytes | Sequence[bytes],
    envelope: Envelope,
    *,
    extra: Callable[[Session, InboundMessage], None] | None = None,
) -> Stored:
    """Commit the message durably in its own transaction and return its intake id; a duplicate returns the
    existing id. The single-message path (`ingest`); SMTP batches through `group_commit`, IMAP and `import`
    store several messages per transaction with `insert_or_existing` / `store_many`.

    `extra` runs inside the same transaction for a new row.
    """
    with unit_of_work(factory) as session:
        return insert_or_existing(session, prepare(raw, envelope), extra)


def insert_or_existing(session: Session, prepared: Prepared,
                       extra: Callable[[Session, InboundMessage], None] | None = None) -> Stored:
    """`insert` in a savepoint: when another instance inserted the same message meanwhile, its row is returned."""
    try:
        with savepoint(session):
            return insert(session, prepared, extra)
    except IntegrityError:
        existing = find_duplicate(session, prepared)
        if existing is None:
            raise
        return Stored(existing, duplicate=True)


def store_many(factory: sessionmaker[Session], prepared: Sequence[Prepared]) -> list[Stored]:
    """Commit several messages in one transaction (one fsync): for a backlog import, where no one waits for a
    per-message acknowledgement. Each result is new or a duplicate exactly as with `store`."""
    if not prepared:
        return []
    with unit_of_work(factory) as session:
        return [insert_or_existing(session, item) for item in prepared]
