"""Attachment file names that are safe to show and to offer for download.

Place in the pipeline: the processing stage runs every attachment name (MIME ``filename``/``name``
parameters, TNEF names) through ``display_filename`` before it is stored. The stored name is what
staff see and what a download offers; the content itself is stored by sha256, never under this
name, so this is about honest display, not file system safety alone.

It removes what can mislead a person or a program: directory parts (``../../etc/passwd``,
``C:\\Users\\x``), control characters, bidirectional overrides that make ``invoice‮fdp.exe`` look
like ``invoiceexe.pdf``, zero-width characters and leading dots (hidden files). The name is
NFC-normalised (macOS sends NFD umlauts) and cut to ``max_len`` characters while keeping the
extension. The result is never empty, ``.`` or ``..``.
"""

from __future__ import annotations

import re
import unicodedata

__all__ = ["display_filename"]

# Bidi embeddings/overrides/isolates and marks, Arabic letter mark.
_BIDI = "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
# Zero-width and invisible formatting characters (incl. BOM, word joiner, soft hyphen).
_INVISIBLE = "\u00ad\u034f\u180e\u200b\u200c\u200d\u2060\u2061\u2062\u2063\u2064\ufeff"
_STRIP = re.compile(f"[{_BIDI}{_INVISIBLE}]")
_SEPARATORS = re.compile(r"[/\\]")
_SPACES = re.compile(r"\s+")
_MAX_EXTENSION = 16


def display_filename(raw: str | None, *, fallback: str = "attachment", max_len: int = 200) -> str:
    """Return a safe, non-empty display name for an attachment called ``raw``.

    ``fallback`` is used when nothing usable is left (it is cleaned the same way, and
    ``"attachment"`` is the last resort).
    """
    name = _clean(raw or "", max_len)
    if name:
        return name
    return _clean(fallback, max_len) or "attachment"[: max(max_len, 1)]


def _clean(raw: str, max_len: int) -> str:
    name = "".join(" " if _is_control(ch) else ch for ch in raw)
    name = unicodedata.normalize("NFC", _STRIP.sub("", name))
    name = _SEPARATORS.split(name)[-1]  # keep only the last path part
    name = _SPACES.sub(" ", name).strip()
    name = name.lstrip(". ").rstrip(" ")
    if name in {"", ".", ".."}:
        return ""
    return _truncate(name, max(max_len, 1))


def _is_control(ch: str) -> bool:
    # Cc (C0/C1 controls), Cs (lone surrogates), Co/Cn are never part of an honest name;
    # Cf format characters are handled by _STRIP so that harmless ones (e.g. in emoji) survive.
    return unicodedata.category(ch) in {"Cc", "Cs", "Co", "Cn"} or ch in "\u2028\u2029"


def _truncate(name: str, max_len: int) -> str:
    if len(name) <= max_len:
        return name
    stem, dot, ext = name.rpartition(".")
    if dot and stem and 0 < len(ext) <= _MAX_EXTENSION and len(ext) + 2 <= max_len:
        return stem[: max_len - len(ext) - 1].rstrip(" ") + "." + ext
    return name[:max_len].rstrip(" ")
