"""Parse stage: raw bytes → `ParsedMail`, once per message, under a hostile-input budget.

Uses the stdlib `email` package with `policy.default`. Cheap checks on the raw bytes run first (size,
header block, line length), the structure is checked after parsing (part count, nesting depth), and
text is decoded best-effort with replacement characters: a broken charset still makes a ticket, with
the defect recorded. A breach raises `Quarantine`, which the orchestrator turns into a quarantined row.
"""

from __future__ import annotations

import datetime as dt
import email
import re
from dataclasses import dataclass, field
from email.message import EmailMessage, Message
from email.policy import default as default_policy
from email.utils import parsedate_to_datetime

from mail2ticket.headers import clean_text, normalize_address, parse_address_list
from mail2ticket.outcomes import Quarantine

_MSGID = re.compile(r"<[^<>\s]{1,900}>")


@dataclass(frozen=True, slots=True)
class Limits:
    max_message_size: int = 26_214_400
    max_parts: int = 1000
    max_depth: int = 50
    max_header_bytes: int = 102_400
    max_header_count: int = 1000
    max_line_length: int = 100_000
    max_attachment_size: int = 26_214_400
    max_attachments_total: int = 52_428_800
    max_recipients: int = 1000


@dataclass(frozen=True, slots=True)
class ParsedAttachment:
    filename: str | None
    content_type: str
    data: bytes
    inline: bool = False


@dataclass(frozen=True, slots=True)
class ParsedMail:
    msg: EmailMessage
    message_id: str | None
    in_reply_to: tuple[str, ...]
    references: tuple[str, ...]
    subject: str
    from_addr: str | None
    from_name: str | None
    reply_to: str | None
    to: tuple[str, ...]
    cc: tuple[str, ...]
    date: dt.datetime | None
    text: str
    html: str | None
    attachments: tuple[ParsedAttachment, ...]
    thread_index: str | None
    defects: tuple[str, ...]
    headers: dict[str, tuple[str, ...]] = field(repr=False)

    def header(self, name: str) -> tuple[str, ...]:
        return self.headers.get(name.lower(), ())


def parse(raw: bytes, limits: Limits = Limits()) -> ParsedMail:
    _precheck(raw, limits)
    try:
        msg = email.message_from_bytes(raw, policy=default_policy)
    except Exception as exc:  # noqa: BLE001 - the stdlib raises many types on hostile input
        raise Quarantine(f"unparseable: {type(exc).__name__}") from exc
    assert isinstance(msg, EmailMessage)
    defects: list[str] = [type(d).__name__ for d in msg.defects]
    parts = _check_structure(msg, limits, defects)
    headers = _decoded_headers(msg, defects)
    text, html, attachments = _bodies(msg, parts, limits, defects)
    from_list = parse_address_list(_first(headers, "from"))
    reply_to_list = parse_address_list(_first(headers, "reply-to"))
    to = parse_address_list(", ".join(headers.get("to", ())), limit=limits.max_recipients)
    cc = parse_address_list(", ".join(headers.get("cc", ())), limit=limits.max_recipients)
    return ParsedMail(
        msg=msg,
        message_id=_first_id(_first(headers, "message-id")),
        in_reply_to=tuple(_MSGID.findall(_first(headers, "in-reply-to") or ""))[:20],
        references=tuple(_MSGID.findall(" ".join(headers.get("references", ()))))[-50:],
        subject=clean_text(_first(headers, "subject"), max_len=998),
        from_addr=from_list[0][1] if from_list else normalize_address(_first(headers, "sender")),
        from_name=(from_list[0][0] or None) if from_list else None,
        reply_to=reply_to_list[0][1] if reply_to_list else None,
        to=tuple(a for _, a in to),
        cc=tuple(a for _, a in cc),
        date=_date(_first(headers, "date")),
        text=text,
        html=html,
        attachments=tuple(attachments),
        thread_index=(_first(headers, "thread-index") or "").strip()[:64] or None,
        defects=tuple(dict.fromkeys(defects)),
        headers=headers,
    )


def _precheck(raw: bytes, limits: Limits) -> None:
    if len(raw) > limits.max_message_size:
        raise Quarantine(f"message size {len(raw)} exceeds the limit of {limits.max_message_size} bytes")
    end = raw.find(b"\n\n")
    end_crlf = raw.find(b"\r\n\r\n")
    cut = min(x for x in (end, end_crlf, len(raw)) if x >= 0)
    head = raw[:cut]
    if len(head) > limits.max_header_bytes:
        raise Quarantine(f"header block of {len(head)} bytes exceeds the limit of {limits.max_header_bytes}")
    count = sum(1 for line in head.splitlines() if line[:1] not in (b" ", b"\t"))
    if count > limits.max_header_count:
        raise Quarantine(f"{count} header fields exceed the limit of {limits.max_header_count}")
    longest = max((len(line) for line in raw.splitlines()), default=0)
    if longest > limits.max_line_length:
        raise Quarantine(f"a line of {longest} bytes exceeds the limit of {limits.max_line_length}")
    # Each MIME part needs a boundary line; far more than the part limit means a structure bomb.
    if raw.count(b"\n--") > limits.max_parts * 2 + 10:
        raise Quarantine(f"more than {limits.max_parts} MIME parts")


def _check_structure(msg: Message, limits: Limits, defects: list[str]) -> list[Message]:
    """The parts that carry content, in document order; checks part count and depth without recursion.

    An attached message (message/rfc822) is one content part (kept whole), but its inner parts still count
    against the limits.
    """
    leaves: list[Message] = []
    stack: list[tuple[Message, int, bool]] = [(msg, 0, False)]
    seen = 0
    while stack:
        part, depth, nested = stack.pop()
        seen += 1
        if seen > limits.max_parts:
            raise Quarantine(f"more than {limits.max_parts} MIME parts")
        if depth > limits.max_depth:
            raise Quarantine(f"MIME nesting deeper than {limits.max_depth}")
        defects.extend(type(d).__name__ for d in getattr(part, "defects", ()))
        is_message = part.get_content_maintype() == "message" and part is not msg
        if is_message and not nested:
            leaves.append(part)
        if part.is_multipart():
            payload = part.get_payload()
            children = payload if isinstance(payload, list) else []
            stack.extend((child, depth + 1, nested or is_message) for child in reversed(children))
        elif not nested and not is_message:
            leaves.append(part)
    return leaves


def _decoded_headers(msg: EmailMessage, defects: list[str]) -> dict[str, tuple[str, ...]]:
    out: dict[str, list[str]] = {}
    for name, value in msg.raw_items():
        key = name.lower()
        try:
            text = str(msg.policy.header_factory(name, value))
        except Exception:  # noqa: BLE001 - malformed header: keep the raw text, note the defect
            defects.append(f"HeaderError:{key}")
            text = str(value)
        out.setdefault(key, []).append(text.encode("utf-8", "replace").decode("utf-8"))
    return {k: tuple(v) for k, v in out.items()}


def _first(headers: dict[str, tuple[str, ...]], name: str) -> str | None:
    values = headers.get(name)
    return values[0] if values else None


def _first_id(value: str | None) -> str | None:
    if not value:
        return None
    match = _MSGID.search(value)
    return match.group(0) if match else None


def _date(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def decode_text(part: Message, defects: list[str]) -> str:
    """A text part as str: its declared charset, falling back to UTF-8 and then Latin-1, never raising."""
    try:
        payload = part.get_payload(decode=True)
    except Exception:  # noqa: BLE001
        defects.append("PayloadDecodeError")
        payload = None
    if not isinstance(payload, bytes):
        raw = part.get_payload()
        return raw if isinstance(raw, str) else ""
    charset = part.get_content_charset() or "utf-8"
    try:
        return payload.decode(charset, errors="replace")
    except LookupError:
        defects.append(f"UnknownCharset:{charset[:40]}")
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError:
        return payload.decode("latin-1")


def _bodies(
    msg: EmailMessage, leaves: list[Message], limits: Limits, defects: list[str]
) -> tuple[str, str | None, list[ParsedAttachment]]:
    text_part = html_part = None
    attachments: list[ParsedAttachment] = []
    total = 0
    for part in leaves:
        ctype = part.get_content_type()
        disposition = (part.get_content_disposition() or "").lower()
        filename = _filename(part, defects)
        is_attachment = disposition == "attachment" or (filename is not None and ctype not in ("text/plain", "text/html"))
        if not is_attachment and ctype == "text/plain" and text_part is None:
            text_part = part
            continue
        if not is_attachment and ctype == "text/html" and html_part is None:
            html_part = part
            continue
        if part is msg and not is_attachment and ctype.startswith("text/"):
            text_part = part
            continue
        data = _payload_bytes(part, defects)
        if len(data) > limits.max_attachment_size:
            raise Quarantine(f"an attachment of {len(data)} bytes exceeds the limit of {limits.max_attachment_size}")
        total += len(data)
        if total > limits.max_attachments_total:
            raise Quarantine(f"attachments total more than {limits.max_attachments_total} bytes")
        attachments.append(ParsedAttachment(filename, ctype, data, inline=disposition == "inline"))
    text = decode_text(text_part, defects) if text_part is not None else ""
    html = decode_text(html_part, defects) if html_part is not None else None
    return text.replace("\x00", "\ufffd"), html.replace("\x00", "\ufffd") if html else html, attachments


def _filename(part: Message, defects: list[str]) -> str | None:
    try:
        name = part.get_filename()
    except Exception:  # noqa: BLE001
        defects.append("FilenameError")
        return None
    return str(name) if name else None


def _payload_bytes(part: Message, defects: list[str]) -> bytes:
    if part.get_content_type() == "message/rfc822" or part.is_multipart():
        try:
            return part.as_bytes()
        except Exception:  # noqa: BLE001
            defects.append("NestedMessageError")
            return b""
    try:
        payload = part.get_payload(decode=True)
    except Exception:  # noqa: BLE001
        defects.append("PayloadDecodeError")
        return b""
    return payload if isinstance(payload, bytes) else b""
