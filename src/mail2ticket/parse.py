"""Parse stage: raw bytes → `ParsedMail`, once per message, under a hostile-input budget.

Uses the stdlib `email` package with `policy.default`, each header object built once per message
(`_header_memo`). Cheap checks on the raw bytes run first (`parse_precheck`: size, header block, line length),
the structure is checked after parsing (part count, nesting depth), and text is decoded best-effort with
replacement characters: a broken charset still makes a ticket, with the defect recorded. A breach raises `Quarantine`, which the
orchestrator turns into a quarantined row.
"""

from __future__ import annotations

import datetime as dt
import email
import re
from dataclasses import dataclass, field, replace
from email._encoded_words import decode_b  # type: ignore[import-not-found]  # typeshed has no stub for it
from email.message import EmailMessage, Message
from email.policy import EmailPolicy
from email.policy import default as default_policy
from email.utils import parsedate_to_datetime
from typing import Any

from mail2ticket._header_memo import MemoPolicy, new_policy, unfold
from mail2ticket.addresses import address_pairs, normalize_address, parse_address_list, parse_list_takes_as_is
from mail2ticket.base64_lines import PIECEWISE_FROM, decode_clean
from mail2ticket.safe_text import clean_text
from mail2ticket.outcomes import Quarantine
from mail2ticket.parse_elide import parse_bytes
from mail2ticket.parse_precheck import BOM, precheck

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
    # The stdlib tree, only in the process that parsed: the parse worker sends the fields below without it
    # (pickling the tree costs more than parsing, and holds attachments twice). None on the processing side.
    msg: EmailMessage | None
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
    # Every header field as it arrived (name, raw value), in order: for checks that depend on position.
    raw_headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    # The body as text and its new text (quotes, signature removed), if the parse worker worked them out.
    body: str | None = field(default=None, repr=False)
    body_new_text: str | None = field(default=None, repr=False)

    def without_tree(self) -> ParsedMail:
        """This mail without the stdlib tree; `raw_headers` re-read from it (control headers may be stripped)."""
        if self.msg is None:
            return self
        return replace(self, msg=None, raw_headers=self.header_fields())

    def header_fields(self) -> tuple[tuple[str, str], ...]:
        """Every header field (name, raw value) in arrival order."""
        if self.msg is not None:
            return tuple((name, str(value)) for name, value in self.msg.raw_items())
        return self.raw_headers

    def header(self, name: str) -> tuple[str, ...]:
        return self.headers.get(name.lower(), ())


def parse(raw: bytes, limits: Limits = Limits()) -> ParsedMail:
    """Parse one message; raises only `Quarantine` (a budget breach or a parser failure), never anything else."""
    return _guarded(raw, limits, new_policy())


def parse_reference(raw: bytes, limits: Limits = Limits()) -> ParsedMail:
    """`parse` without its shortcuts: plain ``policy.default`` (every ``msg.get`` parses anew), every header through
    its header class, every address list parsed from its decoded text. The baseline for equivalence tests."""
    return _guarded(raw, limits, default_policy)


def _guarded(raw: bytes, limits: Limits, policy: EmailPolicy[EmailMessage]) -> ParsedMail:
    precheck(raw, limits)
    try:
        return _parse(raw, limits, policy)
    except Quarantine:
        raise
    except RecursionError as exc:
        raise Quarantine("unparseable: structure nested too deeply (RecursionError)") from exc
    except MemoryError as exc:
        raise Quarantine("unparseable: out of memory while parsing") from exc
    except Exception as exc:
        raise Quarantine(f"unparseable: {type(exc).__name__}") from exc


def _parse(raw: bytes, limits: Limits, policy: EmailPolicy[EmailMessage]) -> ParsedMail:
    bom = raw.startswith(BOM)
    data = raw[len(BOM):] if bom else raw
    # parse_reference keeps the stdlib's parse as it is: the baseline of the equivalence tests.
    msg = parse_bytes(data, policy) if isinstance(policy, MemoPolicy) else email.message_from_bytes(data, policy=policy)
    if not isinstance(msg, EmailMessage):  # pragma: no cover - policy.default always builds EmailMessage
        raise Quarantine("unparseable: unexpected message class")
    defects: list[str] = [type(d).__name__ for d in msg.defects] + (["LeadingByteOrderMark"] if bom else [])
    parts = _check_structure(msg, limits, defects)
    headers = _decoded_headers(msg, defects)
    text, html, attachments = _bodies(msg, parts, limits, defects)
    from_list = _address_list(msg, headers, "from")
    reply_to_list = _address_list(msg, headers, "reply-to")
    to = _address_list(msg, headers, "to", limit=limits.max_recipients, every=True)
    cc = _address_list(msg, headers, "cc", limit=limits.max_recipients, every=True)
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
            children = [c for c in payload if isinstance(c, Message)] if isinstance(payload, list) else []
            stack.extend((child, depth + 1, nested or is_message) for child in reversed(children))
        elif not nested and not is_message:
            leaves.append(part)
    return leaves


def _decoded_headers(msg: EmailMessage, defects: list[str]) -> dict[str, tuple[str, ...]]:
    out: dict[str, list[str]] = {}
    policy = msg.policy
    decode = policy.header_text if isinstance(policy, MemoPolicy) else _header_text
    for name, value in msg.raw_items():
        key = name.lower()
        try:
            # Unfolded first, as msg.get() does: a folded structured field fails to parse or loses its tail.
            text = decode(name, unfold(value))
        except Exception:  # noqa: BLE001 - malformed header: keep the raw text, note the defect
            defects.append(f"HeaderError:{key[:40]}")
            text = str(value)
        if "\ufffd" in text and _has_8bit(value):
            text = _legacy_8bit(str(value), key, defects)
        out.setdefault(key, []).append(text.encode("utf-8", "replace").decode("utf-8"))
    return {k: tuple(v) for k, v in out.items()}


def _header_text(name: str, value: str) -> str:
    return str(default_policy.header_factory(name, value))


def _address_list(msg: EmailMessage, headers: dict[str, tuple[str, ...]], key: str, *, limit: int = 1000,
                  every: bool = False) -> list[tuple[str, str]]:
    """`parse_address_list` of the first decoded field `key` (of all of them, joined, if `every`).

    When that text is the field's raw value, the header object `_decoded_headers` built for it already holds the
    very parse `parse_address_list` would run on the same text: it is reused.
    """
    values = headers.get(key, ())
    text = ", ".join(values) if every else _first(headers, key)
    policy = msg.policy
    if isinstance(policy, MemoPolicy) and text and (len(values) == 1 or not every) and parse_list_takes_as_is(text):
        field = next(((name, value) for name, value in msg.raw_items() if name.lower() == key), None)
        tree = policy.address_list(*field) if field is not None and field[1] == text else None
        if tree is not None:
            return address_pairs(tree, limit=limit)
    return parse_address_list(text, limit=limit)


def _has_8bit(value: object) -> bool:
    return any("\udc80" <= ch <= "\udcff" for ch in str(value))


def _legacy_8bit(value: str, key: str, defects: list[str]) -> str:
    """An unencoded 8-bit header that is not UTF-8: read it as Windows-1252 (what such mailers send)."""
    defects.append(f"Undecodable8bitHeader:{key[:40]}")
    data = value.encode("utf-8", "surrogateescape")
    return " ".join(data.decode("cp1252", errors="replace").split())


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
    """A text part as str: its declared charset, falling back to UTF-8 and then Windows-1252, never raising."""
    try:
        payload = part.get_payload(decode=True)
    except Exception:  # noqa: BLE001
        defects.append("PayloadDecodeError")
        payload = None
    if not isinstance(payload, bytes):
        raw = part.get_payload()
        return raw if isinstance(raw, str) else ""
    declared = part.get_content_charset()
    if declared in (None, "us-ascii", "ascii"):
        # Undeclared 8-bit text is UTF-8 from modern mailers and Windows-1252 from old ones.
        try:
            return payload.decode("utf-8")
        except UnicodeDecodeError:
            defects.append("Undeclared8bitBody")
            return payload.decode("cp1252", errors="replace")
    try:
        return payload.decode(declared, errors="strict")
    except LookupError:
        defects.append(f"UnknownCharset:{declared[:40]}")
    except (UnicodeError, ValueError):
        defects.append(f"UndecodableText:{declared[:40]}")
        try:
            return payload.decode(declared, errors="replace")
        except (UnicodeError, ValueError, LookupError):  # codecs like idna ignore errors="replace"
            pass
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError:
        return payload.decode("cp1252", errors="replace")


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
        payload = _decoded_payload(part)
    except Exception:  # noqa: BLE001
        defects.append("PayloadDecodeError")
        return b""
    return payload if isinstance(payload, bytes) else b""


def _decoded_payload(part: Message) -> Any:
    """``part.get_payload(decode=True)``. For base64 in ASCII text (every attachment a mailer sends) the lines are
    joined by deleting CR and LF, which is what the stdlib's ``b"".join(splitlines())`` does for bytes in half the
    time; the decoding and its defects are the stdlib's own ``decode_b``. A large attachment's base64 without a
    defect is decoded a piece at a time (`base64_lines`): the same bytes without two more copies of its text."""
    # parse_reference always takes the stdlib's way: the baseline of the equivalence tests.
    payload = part.get_payload() if isinstance(part.policy, MemoPolicy) else None
    if type(payload) is not str or not payload.isascii() \
            or str(part.get("content-transfer-encoding", "")).lower() != "base64":
        return part.get_payload(decode=True)
    if len(payload) >= PIECEWISE_FROM and (clean := decode_clean(payload)) is not None:
        return clean  # the same bytes, decoded a piece at a time
    value, found = decode_b(payload.encode("ascii").translate(None, b"\r\n"))
    for defect in found:
        part.policy.handle_defect(part, defect)
    return value
