"""Requester detection for forwarded mail: staff forward a citizen's mail to a queue address.

Called by the conversation stage for a new ticket whose sender is staff of the target queue (and the
queue has `forwarded_requester` on). The citizen is taken from an attached `message/rfc822`, else from
the first inline forward block (Outlook's "-----Ursprüngliche Nachricht-----" / "Von: … Gesendet: …",
Gmail's "---------- Forwarded message ---------", Thunderbird's "-------- Weitergeleitete Nachricht
--------", Apple's "Begin forwarded message:"). The result is data for the caller; nothing is written here.
"""

from __future__ import annotations

import email
import re
from dataclasses import dataclass
from email.message import Message
from email.policy import default as default_policy

from mail2ticket.addresses import normalize_address, parse_address_list
from mail2ticket.safe_text import clean_text
from mail2ticket.parse import ParsedMail

_MARKER = re.compile(
    r"^\s*(?:[-_=*]{2,}\s*)?(?:Urspr(?:ü|ue)ngliche Nachricht|Original[- ]?Message|Original[- ]?Nachricht|"
    r"Forwarded message|Weitergeleitete Nachricht|Begin forwarded message:?|"
    r"Anfang der weitergeleiteten Nachricht:?)\s*(?:[-_=*]{2,})?\s*$",
    re.IGNORECASE,
)
_UNDERSCORES = re.compile(r"^\s*_{10,}\s*$")
_FROM_LINE = re.compile(r"^\s*\**(?:Von|From|Absender)\s*:\**\s*(?P<value>.+?)\s*$", re.IGNORECASE)
_SUBJECT_LINE = re.compile(r"^\s*\**(?:Betreff|Subject)\s*:\**\s*(?P<value>.*?)\s*$", re.IGNORECASE)
_HEADER_LINE = re.compile(
    r"^\s*\**(?:Gesendet|Sent|Datum|Date|An|To|Cc|Kopie|Betreff|Subject)\s*:", re.IGNORECASE
)
_MAILTO = re.compile(r"\[mailto:(?P<addr>[^\]\s]+)\]", re.IGNORECASE)
_ANGLE = re.compile(r"<(?P<addr>[^<>\s]+@[^<>\s]+)>")
_SEARCH_LINES = 400  # a forward block further down is a quote, not the forwarded mail


@dataclass(frozen=True, slots=True)
class Forwarded:
    address: str
    name: str | None
    subject: str | None
    source: str  # "attachment" | "inline"


def _address_from(value: str) -> tuple[str | None, str | None]:
    """(address, display name) from an inline "Von:" value in its many spellings."""
    for pattern in (_MAILTO, _ANGLE):
        match = pattern.search(value)
        if match is not None:
            addr = normalize_address(match.group("addr"))
            name = clean_text(value[: match.start()].strip().strip('"'), max_len=200) or None
            return addr, name
    parsed = parse_address_list(value, limit=1)
    if parsed:
        return parsed[0][1], parsed[0][0] or None
    return normalize_address(value), None


def from_attachment(parsed: ParsedMail) -> Forwarded | None:
    for attachment in parsed.attachments:
        if attachment.content_type.lower() != "message/rfc822":
            continue
        data = attachment.data
        # The part's own headers come first when the parser kept the container; skip to the inner message.
        try:
            inner: Message = email.message_from_bytes(data, policy=default_policy)
            payload = inner.get_payload() if inner.get_content_type() == "message/rfc822" else None
            if isinstance(payload, list) and payload and isinstance(payload[0], Message):
                inner = payload[0]
            found = parse_address_list(str(inner.get("From", "")), limit=1)
            subject = clean_text(str(inner.get("Subject", "")), max_len=998) or None
        except Exception:  # noqa: BLE001, S112 - a broken attachment just means "no forwarded sender here"
            continue
        if found:
            return Forwarded(found[0][1], found[0][0] or None, subject, "attachment")
    return None


def from_inline(text: str) -> Forwarded | None:
    lines = text.splitlines()[:_SEARCH_LINES]
    for i, line in enumerate(lines):
        if not (_MARKER.match(line) or _UNDERSCORES.match(line) or _FROM_LINE.match(line)):
            continue
        start = i if _FROM_LINE.match(line) else i + 1
        block = [ln.lstrip("> ") for ln in lines[start:start + 12]]
        while block and not block[0].strip():
            block.pop(0)
        if not block:
            continue
        from_match = _FROM_LINE.match(block[0])
        if from_match is None:
            continue
        # A bare "Von:" line is only a forward block when more header lines follow it.
        if not any(_HEADER_LINE.match(ln) for ln in block[1:6]):
            continue
        address, name = _address_from(from_match.group("value"))
        if address is None:
            continue
        subject = next((m.group("value") for ln in block[1:8] if (m := _SUBJECT_LINE.match(ln))), None)
        return Forwarded(address, name, clean_text(subject, max_len=998) or None, "inline")
    return None


def forwarded_requester(parsed: ParsedMail, body: str) -> Forwarded | None:
    """The original sender of a forwarded mail, or None when this is not a forward."""
    return from_attachment(parsed) or from_inline(body)
