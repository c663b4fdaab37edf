"""RFC 2047 encoded words for generated headers, safe by construction (the fast path of `headers`).

Place in the pipeline: `headers.address_line` writes a non-ASCII display name with :func:`address_line`, and
`headers.header_line` writes non-ASCII unstructured text (a Subject) with :func:`text_line`.  The checked path in
`headers` (email package parse, ``policy.SMTP`` fold, re-parse, compare) costs 0.1-0.3 ms per header; these builders
write a line that means the same without the email package, because what the re-parse would check holds by
construction:

* Q encoding with the smallest literal set: ``[A-Za-z0-9]`` as is, space as ``_``, every other character as
  ``=XX`` for each of its UTF-8 bytes.  Between ``=?utf-8?q?`` and ``?=`` there is no ``?``, no whitespace and
  nothing a phrase parser treats as special (RFC 2047 section 5(3)), so no reader ends a word early or finds a
  delimiter, a line break or a second header in it.
* A word holds whole characters (no UTF-8 sequence is split) and is at most 75 characters (RFC 2047 section 2).
* The words of a line are separated by one space, or by CRLF + space where the line would pass 78 characters.
  Readers drop that whitespace between two encoded words (RFC 2047 section 6.2), so every space of the text is
  written inside an encoded word, except the single space between an encoded and a plain word, which readers keep.
* Plain words are runs of printable ASCII; text containing ``=?`` is refused, so no plain word reads as an encoded
  word.  Text with a control character or line break is refused too (the callers have checked that already).

Both builders return None for what they do not handle; the caller then takes the checked path.
tests/test_headers_encoded.py proves the meaning with the stdlib's two independent readers.
"""

from __future__ import annotations

import re
import string

from mail2ticket.safe_text import _ENCODED_WORD_START, has_unsafe_char

__all__ = ["address_line", "text_line"]

MAX_TEXT_LEN = 998  # a longer Subject is unusual enough for the checked path
_MAX_LINE = 78  # RFC 5322 section 2.1.1; policy.SMTP.max_line_length
_MAX_WORD = 75  # RFC 2047 section 2
_PREFIX = "=?utf-8?q?"
_SUFFIX = "?="
_OVERHEAD = len(_PREFIX) + len(_SUFFIX)
_LITERAL = frozenset(string.ascii_letters + string.digits)
_Q_ASCII = tuple(
    chr(c) if chr(c) in _LITERAL else "_" if c == 0x20 else f"={c:02X}" for c in range(128)
)
_Q_BYTE = tuple(f"={b:02X}" for b in range(256))
_PLAIN_WORD_RE = re.compile(r"[\x21-\x7e]{1,%d}" % (_MAX_LINE - 1))  # fits on a continuation line


def text_line(name: str, text: str) -> str | None:
    """``name: text`` CRLF for an unstructured header: printable ASCII words as they are, every run of other words
    (with the spaces inside it) as encoded words; or None if the text is empty, longer than MAX_TEXT_LEN, contains
    ``=?`` or an unsafe character, or `name` leaves no room for a word on the first line.  `name` must be a
    checked header name."""
    if not _acceptable(text, MAX_TEXT_LEN):
        return None
    words = text.split(" ")
    if "" in words:  # leading, trailing or doubled spaces: only inside an encoded word do readers keep them all
        return _fold(name, [(text, True)])
    tokens: list[tuple[str, bool]] = []
    run: list[str] = []
    first_room = _MAX_LINE - len(name) - 2  # "Name: " comes first; a longer first word is encoded and split
    for word in words:
        if _PLAIN_WORD_RE.fullmatch(word) and (tokens or run or len(word) <= first_room):
            if run:
                tokens.append((" ".join(run), True))
                run = []
            tokens.append((word, False))
        else:
            run.append(word)
    if run:
        tokens.append((" ".join(run), True))
    return _fold(name, tokens)


def address_line(name: str, display_name: str, addr_spec: str) -> str | None:
    """``name: =?utf-8?q?...?= <addr_spec>`` CRLF, the display name all in encoded words; or None like text_line
    (or if ``<addr_spec>`` does not fit on a line).  `addr_spec` must be a checked plain ``local@a-label`` address
    (`headers` uses `addresses.split_addr_spec`)."""
    angle_addr = f"<{addr_spec}>"
    if not _acceptable(display_name, _MAX_LINE) or not _PLAIN_WORD_RE.fullmatch(angle_addr):
        return None
    return _fold(name, [(display_name, True), (angle_addr, False)])


def _acceptable(text: str, max_len: int) -> bool:
    return 0 < len(text) <= max_len and _ENCODED_WORD_START not in text and not has_unsafe_char(text)


def _q(ch: str) -> str:
    code = ord(ch)
    if code < 128:
        return _Q_ASCII[code]
    return "".join([_Q_BYTE[b] for b in ch.encode("utf-8")])


def _fold(name: str, tokens: list[tuple[str, bool]]) -> str | None:
    """The folded header: `tokens` are (text, encode?) pairs that the text separates by single spaces."""
    head = f"{name}:"
    lines: list[str] = []
    line = head
    for text, encode in tokens:
        if not encode:
            if len(line) + 1 + len(text) > _MAX_LINE:
                if line == head and not lines:
                    return None
                lines.append(line)
                line = ""
            line += " " + text
            continue
        body = ""
        for ch in text:
            piece = _q(ch)
            room = min(_MAX_WORD, _MAX_LINE - 1 - len(line)) - _OVERHEAD
            if len(body) + len(piece) > room:
                if body:
                    line += f" {_PREFIX}{body}{_SUFFIX}"
                    body = ""
                    room = min(_MAX_WORD, _MAX_LINE - 1 - len(line)) - _OVERHEAD
                if len(piece) > room:
                    if line == head and not lines:
                        return None
                    lines.append(line)
                    line = ""
            body += piece
        line += f" {_PREFIX}{body}{_SUFFIX}"
    lines.append(line)
    return "\r\n".join(lines) + "\r\n"
