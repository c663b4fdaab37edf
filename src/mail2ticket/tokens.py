"""Reply tokens: `queue+<number>-<hmac>@domain`, the unguessable reply address of one ticket.

Outbound mail sets Reply-To to this address; the thread stage accepts a mail whose recipient carries a
valid token as a follow-up of that ticket. The HMAC (keyed with the reply secret, over the ticket's
internal id, not its public number) is what makes it safe: knowing a ticket number is not enough.

A second, related mark is the synthetic Outlook conversation index (`Thread-Index`) we give outbound
mail of tickets whose first mail had none: 22 bytes whose GUID part carries the ticket id and a MAC,
so an Outlook reply that dropped In-Reply-To still names its ticket, unforgeably.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import re
import struct
from collections.abc import Iterable

_TOKEN = re.compile(
    r"^(?P<base>[^+@\s]{1,64})\+(?P<number>[A-Za-z0-9-]{1,40})-(?P<mac>[a-z0-9]{10})@(?P<domain>[^@\s]{1,253})$"
)
_B32 = str.maketrans("", "", "=")
_MARK = b"m2t"  # first bytes of our synthetic conversation GUID
CONVERSATION_LEN = 22


def _mac(ticket_id: int, secret: bytes) -> str:
    digest = hmac.new(secret, f"reply:{ticket_id}".encode(), hashlib.sha256).digest()
    return base64.b32encode(digest[:10]).decode().translate(_B32).lower()[:10]


def reply_address(queue_address: str, number: str, ticket_id: int, secret: bytes) -> str:
    local, _, domain = queue_address.partition("@")
    return f"{local}+{number.lower()}-{_mac(ticket_id, secret)}@{domain}"


def parse_reply_address(address: str) -> tuple[str, str, str] | None:
    """(base address, ticket number, mac) if `address` has the token shape; the caller verifies the mac."""
    match = _TOKEN.match(address.strip().strip("<>").lower())
    if match is None:
        return None
    return f"{match.group('base')}@{match.group('domain')}", match.group("number"), match.group("mac")


def verify(ticket_id: int, mac: str, secret: bytes) -> bool:
    return hmac.compare_digest(mac.lower(), _mac(ticket_id, secret))


def candidate_tokens(addresses: Iterable[str], own_addresses: frozenset[str]) -> list[tuple[str, str]]:
    """(number, mac) for every address that is a plus-tagged form of one of our queue addresses."""
    found: list[tuple[str, str]] = []
    for address in addresses:
        parsed = parse_reply_address(address)
        if parsed is not None and parsed[0] in own_addresses and parsed[1:] not in found:
            found.append((parsed[1], parsed[2]))
    return found


# --- Outlook conversation index ----------------------------------------------------------------------


def decode_thread_index(value: str | None) -> bytes | None:
    """The raw bytes of a Thread-Index header (possibly truncated when stored), or None if not base64."""
    if not value:
        return None
    text = "".join(value.split())
    text = text[: len(text) - len(text) % 4]
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) >= CONVERSATION_LEN else None


def conversation_key(value: str | None) -> bytes | None:
    """The conversation part (first 22 bytes) of a Thread-Index, shared by every mail of one conversation."""
    raw = decode_thread_index(value)
    return raw[:CONVERSATION_LEN] if raw is not None else None


def _filetime(now: dt.datetime) -> int:
    return int((now - dt.datetime(1601, 1, 1, tzinfo=dt.UTC)).total_seconds() * 10_000_000)


def synthetic_conversation(ticket_id: int, secret: bytes, created: dt.datetime) -> bytes:
    """22 bytes: reserved byte, 5 bytes of time, GUID = 'm2t' + ticket id (5 bytes) + 8 bytes MAC."""
    mac = hmac.new(secret, f"thread:{ticket_id}".encode(), hashlib.sha256).digest()[:8]
    time_part = struct.pack(">Q", _filetime(created))[:6]  # high 6 bytes; first is the reserved 0x01
    return b"\x01" + time_part[1:6] + _MARK + ticket_id.to_bytes(5, "big") + mac


def ticket_from_conversation(key: bytes, secret: bytes) -> int | None:
    """The ticket id if `key` is a synthetic conversation index of ours with a valid MAC."""
    if len(key) != CONVERSATION_LEN or key[6:9] != _MARK:
        return None
    ticket_id = int.from_bytes(key[9:14], "big")
    expected = hmac.new(secret, f"thread:{ticket_id}".encode(), hashlib.sha256).digest()[:8]
    return ticket_id if hmac.compare_digest(key[14:], expected) else None


def child_thread_index(conversation: bytes, sequence: int) -> str:
    """A Thread-Index for one of our mails in `conversation`: the 22 bytes plus one 5-byte child block."""
    block = (sequence & 0xFFFFFFFFFF).to_bytes(5, "big")
    return base64.b64encode(conversation[:CONVERSATION_LEN] + block).decode()
