"""Safe display text: the primitives every module that writes or shows text from mail relies on.

`clean_text` turns anything from a message into one line of display text; `has_unsafe_char` and
`defang_encoded_words` are the checks behind header writing (`headers`) and address parsing (`addresses`).
"""

from __future__ import annotations

import re
import unicodedata

# Characters that end a line for *some* consumer: str.splitlines(), the email parser, MUAs (U+2028/U+2029, NEL).
_LINE_BREAKS = frozenset("\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")
# Unicode categories removed from display text: controls, format chars (bidi overrides/isolates, zero-width
# chars, BOM, soft hyphen, tag chars), lone surrogates, line/paragraph separators.
_DROP_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
# What has_unsafe_char looks for, as one character class: every line break above, category Cc (exactly U+0000-U+001F
# and U+007F-U+009F; Unicode keeps that set fixed) except TAB, and category Cs (exactly U+D800-U+DFFF).
_UNSAFE_CHAR_RE = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_ENCODED_WORD_START = "=?"


class UnsafeValue(ValueError):
    """A value that must not reach a generated header or the SMTP envelope."""


def clean_text(value: str | None, *, max_len: int = 200, ellipsis: str = "…") -> str:
    """Single-line display text: decodes nothing, removes CR, LF, NUL, all C0/C1 controls, U+2028/U+2029, bidi
    overrides/isolates, zero-width chars; collapses whitespace runs to one space; strips; NFC; truncates to max_len
    chars (on a grapheme-ish boundary: never splits a base character from its combining marks)."""
    if max_len < 0:
        raise ValueError("max_len must be >= 0")
    if not value:
        return ""
    value = str(value)
    if value.isprintable():
        # No character of categories C* or Z* but the space: nothing to drop or to turn into a space (most names
        # and subjects; the loop below costs ~1 µs a character).
        text = unicodedata.normalize("NFC", " ".join(value.split()))
    else:
        out: list[str] = []
        for ch in value:
            if ch in _LINE_BREAKS or ch == "\t" or ch.isspace():
                out.append(" ")
            elif unicodedata.category(ch) not in _DROP_CATEGORIES:
                out.append(ch)
        text = unicodedata.normalize("NFC", " ".join("".join(out).split()))
    if len(text) <= max_len:
        return text
    tail = clean_text(ellipsis, max_len=len(ellipsis), ellipsis="") if ellipsis else ""
    if len(tail) >= max_len:
        tail = ""
    cut = max_len - len(tail)
    while 0 < cut < len(text) and unicodedata.category(text[cut]).startswith("M"):
        cut -= 1
    return text[:cut].rstrip() + tail


def has_unsafe_char(value: str) -> bool:
    """True if value contains a line break, NUL or other control character (TAB excepted) or a lone surrogate."""
    return _UNSAFE_CHAR_RE.search(value) is not None


def defang_encoded_words(value: str) -> str:
    """Break literal ``=?`` so the email package cannot decode free text as an RFC 2047 encoded word."""
    while _ENCODED_WORD_START in value:
        value = value.replace(_ENCODED_WORD_START, "= ?")
    return value
