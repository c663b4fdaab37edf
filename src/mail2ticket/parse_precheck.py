"""The parse stage's checks on the raw bytes, before the stdlib parser sees them: size, header block, line length
and a bound on the number of MIME parts. Each is a scan of the bytes at C speed; a breach raises `Quarantine`.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from mail2ticket.outcomes import Quarantine

if TYPE_CHECKING:
    from mail2ticket.parse import Limits

BOM = b"\xef\xbb\xbf"  # Windows tools save mail with a UTF-8 byte order mark
_BLANK_LINE = re.compile(rb"\n\n|\r\n\r\n")
_FIELD_NAME = re.compile(rb"[\x21-\x39\x3b-\x7e]{1,200}")


def precheck(raw: bytes, limits: Limits) -> None:
    """Raise `Quarantine` when the raw bytes break a limit that can be checked without parsing them."""
    if len(raw) > limits.max_message_size:
        raise Quarantine(f"message size {len(raw)} exceeds the limit of {limits.max_message_size} bytes")
    if not looks_like_mail(raw):
        raise Quarantine("not an email message: it does not start with a header field")
    # The first LF LF or CRLF CRLF, whichever comes first: two finds would each scan a CRLF mail to its end.
    blank = _BLANK_LINE.search(raw)
    head = raw[: blank.start()] if blank is not None else raw
    if len(head) > limits.max_header_bytes:
        raise Quarantine(f"header block of {len(head)} bytes exceeds the limit of {limits.max_header_bytes}")
    count = sum(1 for line in head.splitlines() if line[:1] not in (b" ", b"\t"))
    if count > limits.max_header_count:
        raise Quarantine(f"{count} header fields exceed the limit of {limits.max_header_count}")
    if may_have_line_over(raw, limits.max_line_length):
        longest = longest_line(raw)
        if longest > limits.max_line_length:
            raise Quarantine(f"a line of {longest} bytes exceeds the limit of {limits.max_line_length}")
    # Each MIME part needs a boundary line; far more than the part limit means a structure bomb.
    # Each "\n--" holds two dashes: a base64 attachment has none, and the count of one byte is cheap.
    too_many = limits.max_parts * 2 + 10
    if raw.count(b"-") // 2 > too_many and raw.count(b"\n--") > too_many:
        raise Quarantine(f"more than {limits.max_parts} MIME parts")


def longest_line(raw: bytes, chunk: int = 1 << 20) -> int:
    """Length of the longest line (CR, LF or CRLF ended), without splitting the whole message at once."""
    longest = current = 0
    for start in range(0, len(raw), chunk):
        parts = raw[start : start + chunk].replace(b"\r", b"\n").split(b"\n")
        if len(parts) == 1:
            current += len(parts[0])
            continue
        longest = max(longest, current + len(parts[0]), max(map(len, parts[1:-1]), default=0))
        current = len(parts[-1])
    return max(longest, current)


def may_have_line_over(raw: bytes, limit: int) -> bool:
    """False if no line can be longer than `limit`, found without splitting the message into lines.

    A line of limit + 1 bytes or more covers at least one whole aligned block of (limit + 2) // 2 bytes, so when
    every whole block holds a CR or LF, no line is that long.
    """
    size = (limit + 2) // 2
    if size < 1:
        return True
    for start in range(0, len(raw) - size + 1, size):
        if raw.find(b"\n", start, start + size) < 0 and raw.find(b"\r", start, start + size) < 0:
            return True
    return False


def looks_like_mail(raw: bytes) -> bool:
    """True if the bytes start with something shaped like a header field (mbox "From " lines allowed)."""
    first = raw[:1000].removeprefix(BOM).replace(b"\r", b"\n").split(b"\n", 1)[0]
    if first.startswith(b"From "):
        return True
    name, colon, _ = first.partition(b":")
    return bool(colon) and bool(_FIELD_NAME.fullmatch(name.rstrip(b" \t")))
