"""Bounce and report dissection for the classify stage (private helper of ``classify.py``).

Place in the pipeline: parse -> **classify** -> thread -> route.  ``classify`` decides *whether* a
message is a bounce; this module digs out *what* bounced: the failed recipients, whether the
failure is permanent, and the Message-ID of the mail that bounced.  Sources, most reliable first:

1. RFC 3464 ``message/delivery-status`` (and RFC 6533 ``message/global-delivery-status``) parts:
   ``Final-Recipient`` / ``Original-Recipient``, ``Action`` and ``Status`` per recipient block.
2. ``flufl.bounce`` (Mailman's detectors) for the many non-standard MTA formats.
3. The returned original (``message/rfc822``, ``text/rfc822-headers``, or a quoted header block in
   the body text) for the original Message-ID.

Everything here is defensive: it works on hostile input and never raises (callers still wrap it).
Parts inside an attached ``message/*`` are never searched for reports, so a person forwarding a
bounce as an attachment does not look like a bounce.
"""

from __future__ import annotations

import copy
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import Message

from flufl.bounce import all_failures

__all__ = [
    "DeliveryReport",
    "HeaderFields",
    "analyse",
    "content_type",
    "iter_parts",
    "message_id",
    "raw_headers",
    "report_fields",
]

_MAX_PARTS = 200
_MAX_DEPTH = 12
_MAX_TEXT = 256 * 1024

_STATUS_RE = re.compile(r"\b([245])\.\d{1,3}\.\d{1,3}\b")
_MSGID_RE = re.compile(r"<[^<>\s]+>")
_BARE_MSGID_RE = re.compile(r"^[^<>\s@]+@[^<>\s@]+$")
_ADDR_RE = re.compile(r"^[^\s@<>()\[\],;:\"]+@[^\s@<>()\[\],;:\"]+\.[^\s@<>()\[\],;:\"]+$")
_BODY_MSGID_RE = re.compile(r"^message-id:[ \t]*(.*)$", re.IGNORECASE | re.MULTILINE)
_FIELD_RE = re.compile(r"^([!-9;-~]+)[ \t]*:[ \t]*(.*)$")

DSN_TYPES = frozenset({"message/delivery-status", "message/global-delivery-status"})
ATTACHED_TYPES = frozenset({"message/rfc822", "message/global"})
HEADERS_TYPES = frozenset({"text/rfc822-headers", "message/global-headers"})

_flufl_log = logging.getLogger("flufl.bounce")


@dataclass(frozen=True, slots=True)
class DeliveryReport:
    """What a bounce says about the mail that caused it."""

    failed_recipients: tuple[str, ...] = ()
    permanent_failure: bool | None = None
    original_message_id: str | None = None
    detector_hit: bool = False  # flufl.bounce or a DSN block named at least one failed recipient


def raw_headers(msg: Message, name: str) -> list[str]:
    """All values of header ``name`` as unfolded raw text, without the header parser (never raises)."""
    wanted = name.lower()
    try:
        items = list(msg.raw_items())
    except Exception:  # noqa: BLE001 - a broken message object: behave as if the header were absent
        return []
    return [" ".join(str(value).split()) for key, value in items if str(key).lower() == wanted]


class HeaderFields:
    """``raw_headers(msg, name)`` for every name, from one pass over the fields (for callers asking many names)."""

    __slots__ = ("_values",)

    def __init__(self, msg: Message) -> None:
        self._values: dict[str, list[object]] = {}
        try:
            items = list(msg.raw_items())
        except Exception:  # noqa: BLE001 - as in raw_headers: a broken message object has no fields
            items = []
        for key, value in items:
            self._values.setdefault(str(key).lower(), []).append(value)

    def all(self, name: str) -> list[str]:
        """All values of header ``name``, unfolded (exactly ``raw_headers(msg, name)``)."""
        return [" ".join(str(value).split()) for value in self._values.get(name.lower(), ())]

    def first(self, name: str) -> str:
        """The first value of header ``name``, unfolded, or ''."""
        values = self._values.get(name.lower())
        return " ".join(str(values[0]).split()) if values else ""


def content_type(part: Message) -> str:
    """The part's ``maintype/subtype`` in lower case; from the raw header if the policy parser fails."""
    try:
        return part.get_content_type()
    except Exception:  # noqa: BLE001 - e.g. RFC 2231 parameters in an unknown or broken charset
        values = raw_headers(part, "content-type")
        ctype = values[0].split(";", 1)[0].strip().lower() if values else ""
        return ctype if "/" in ctype else "text/plain"


def iter_parts(msg: Message) -> Iterator[Message]:
    """Yield ``msg`` and its MIME descendants, without entering ``message/*`` parts (bounded)."""
    stack: list[tuple[Message, int]] = [(msg, 0)]
    seen = 0
    while stack and seen < _MAX_PARTS:
        part, depth = stack.pop()
        seen += 1
        yield part
        if depth >= _MAX_DEPTH or content_type(part).startswith("message/"):
            continue
        try:
            children = part.get_payload() if part.is_multipart() else []
        except Exception:  # noqa: BLE001 - malformed structure: treat as a leaf
            children = []
        if isinstance(children, list):
            stack.extend((child, depth + 1) for child in reversed(children) if isinstance(child, Message))


def message_id(value: str | None) -> str | None:
    """The first ``<id>`` token of a Message-ID-like header value; a bare ``id@host`` gets brackets."""
    if not value:
        return None
    found = _MSGID_RE.search(value)
    if found:
        return found.group(0)
    token = value.strip()
    return f"<{token}>" if _BARE_MSGID_RE.match(token) else None


def part_text(part: Message) -> str:
    """A leaf part's decoded text (bounded), or '' when it has none."""
    try:
        payload = part.get_payload(decode=True)
    except Exception:  # noqa: BLE001 - broken transfer encoding
        return ""
    if not isinstance(payload, bytes):
        return ""
    try:
        charset = part.get_content_charset() or "ascii"
    except Exception:  # noqa: BLE001 - broken Content-Type parameters
        charset = "ascii"
    data = payload[:_MAX_TEXT]
    try:
        return data.decode(charset, "replace")
    except (LookupError, ValueError):  # unknown charset name
        return data.decode("latin-1")


def _report_text(part: Message) -> str:
    """A delivery-status part as text, however the stdlib parser happened to split it."""
    try:
        payload = part.get_payload()
    except Exception:  # noqa: BLE001 - malformed structure
        return ""
    if isinstance(payload, str):
        return part_text(part)
    chunks: list[str] = []
    for block in payload if isinstance(payload, list) else []:
        if not isinstance(block, Message):
            continue
        try:
            lines = [f"{key}: {' '.join(str(value).split())}" for key, value in block.raw_items()]
            body = block.get_payload()
        except Exception:  # noqa: BLE001, S112 - a block the parser could not make sense of
            continue
        chunks.append("\n".join(lines))
        if isinstance(body, str) and body.strip():
            chunks.append(body)
    return "\n\n".join(chunks)


def _field_blocks(text: str) -> list[dict[str, str]]:
    """Split ``Name: value`` blocks separated by blank lines (continuation lines are unfolded)."""
    blocks: list[dict[str, str]] = []
    current: dict[str, str] = {}
    last = ""
    for line in text.splitlines():
        if not line.strip():
            if current:
                blocks.append(current)
            current, last = {}, ""
        elif line[:1] in (" ", "\t") and last:
            current[last] += " " + line.strip()
        elif match := _FIELD_RE.match(line):
            last = match.group(1).lower()
            current.setdefault(last, match.group(2).strip())
    if current:
        blocks.append(current)
    return blocks


def _recipient(value: str) -> str | None:
    """``rfc822; <User@Example.org>`` -> ``user@example.org`` (None if it is not an address)."""
    addr = value.split(";", 1)[-1].strip().strip("<>").strip().lower()
    return addr if _ADDR_RE.match(addr) else None


def _dsn_failures(msg: Message) -> tuple[list[str], list[bool | None]]:
    """Recipients of failed/delayed DSN blocks and their permanence (True 5.x.x, False 4.x.x)."""
    recipients: list[str] = []
    permanence: list[bool | None] = []
    for part in iter_parts(msg):
        if content_type(part) not in DSN_TYPES:
            continue
        for block in _field_blocks(_report_text(part)):
            addr = None
            for field in ("original-recipient", "final-recipient"):
                if addr is None and block.get(field):
                    addr = _recipient(block[field])
            action = block.get("action", "").lower()
            status = _STATUS_RE.search(block.get("status", ""))
            if addr is None or action.startswith(("delivered", "relayed", "expanded")):
                continue
            if (status and status.group(1) == "2") or (not action and not status):
                continue
            permanent: bool | None = None  # the Action decides; Status only when Action is unusable
            if action.startswith("delayed"):
                permanent = False
            elif action.startswith(("failed", "error")):
                permanent = True
            elif status:
                permanent = status.group(1) == "5"
            recipients.append(addr)
            permanence.append(permanent)
    return recipients, permanence


def report_fields(msg: Message, content_types: frozenset[str]) -> list[dict[str, str]]:
    """Field blocks of every part of one of ``content_types`` (e.g. an MDN's disposition part)."""
    return [
        block
        for part in iter_parts(msg)
        if content_type(part) in content_types
        for block in _field_blocks(_report_text(part))
    ]


def _flufl_ready(msg: Message) -> Message:
    """``msg``, or a copy with an empty From when From is missing or unrenderable.

    flufl's detectors read From through the policy parser (Yale even indexes it unconditionally);
    a header the stdlib cannot render would make them log a traceback and stop scanning.
    """
    try:
        if raw_headers(msg, "from"):
            str(msg.get("from", ""))
            return msg
    except Exception:  # noqa: BLE001, S110 - unrenderable From: fall through to the sanitised copy
        pass
    clone = copy.deepcopy(msg)
    del clone["From"]
    clone["From"] = ""
    return clone


def _flufl_failures(msg: Message) -> tuple[set[str], set[str]]:
    """(temporary, permanent) failures found by flufl.bounce; empty on any detector error."""
    try:
        temporary, permanent = all_failures(_flufl_ready(msg))
    except Exception as exc:  # noqa: BLE001 - third-party heuristics on hostile input: a miss, never a crash
        _flufl_log.debug("flufl.bounce failed: %r", exc)
        return set(), set()

    def clean(found: frozenset[bytes]) -> set[str]:
        out = {raw.decode("ascii", "replace").strip().strip("<>").lower() for raw in found}
        return {addr for addr in out if _ADDR_RE.match(addr)}

    return clean(temporary), clean(permanent)


def _original_message_id(msg: Message) -> str | None:
    """Message-ID of the returned original: attached message or headers, else a quoted header line."""
    texts: list[str] = []
    for part in iter_parts(msg):
        ctype = content_type(part)
        if ctype in ATTACHED_TYPES:
            try:
                inner = part.get_payload()
            except Exception:  # noqa: BLE001 - malformed attachment
                inner = None
            first = inner[0] if isinstance(inner, list) and inner else None
            headers = raw_headers(first, "message-id") if isinstance(first, Message) else []
            if headers and (found := message_id(headers[0])):
                return found
        elif ctype in HEADERS_TYPES:
            text = _report_text(part) if ctype.startswith("message/") else part_text(part)
            match = _BODY_MSGID_RE.search(text)
            if match and (found := message_id(match.group(1))):
                return found
        elif ctype == "text/plain":
            texts.append(part_text(part))  # e.g. qmail's "Below this line is a copy of the message."
    for text in texts:
        for match in _BODY_MSGID_RE.finditer(text):
            if found := message_id(match.group(1)):
                return found
    return None


def analyse(msg: Message) -> DeliveryReport:
    """Failed recipients, permanence and original Message-ID of a message already judged a bounce."""
    recipients, permanence = _dsn_failures(msg)
    temporary, permanent = _flufl_failures(msg)
    merged = list(dict.fromkeys([*recipients, *sorted(permanent), *sorted(temporary)]))
    if True in permanence:
        verdict: bool | None = True
    elif False in permanence:
        verdict = False
    elif permanent:
        verdict = True
    elif temporary:
        verdict = False
    else:
        verdict = None
    return DeliveryReport(
        failed_recipients=tuple(merged),
        permanent_failure=verdict if merged else None,
        original_message_id=_original_message_id(msg),
        detector_hit=bool(merged),
    )
