"""Tests for mail2ticket.text.filenames: attachment names cannot mislead staff or escape a folder."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mail2ticket.text.filenames import display_filename

BIDI_AND_INVISIBLE = set(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
    "\u00ad\u200b\u200c\u200d\u2060\ufeff"
)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("../../etc/passwd", "passwd"),
        ("..\\..\\Windows\\system32\\evil.dll", "evil.dll"),
        ("C:\\Users\\max\\Antrag.pdf", "Antrag.pdf"),
        ("/tmp/x/", "attachment"),
        ("..", "attachment"),
        (".", "attachment"),
        ("", "attachment"),
        (None, "attachment"),
        (".htaccess", "htaccess"),
        ("...versteckt.txt", "versteckt.txt"),
    ],
)
def test_path_parts_and_dot_names_are_removed(raw: str | None, expected: str) -> None:
    """Only the last path part is kept, and "."/".."/leading dots never come through."""
    assert display_filename(raw) == expected


def test_bidi_override_cannot_disguise_the_extension() -> None:
    """'invoice<RLO>fdp.exe' shows as the .exe it really is, not as a PDF."""
    name = display_filename("invoice\u202efdp.exe")
    assert name == "invoicefdp.exe"
    assert name.endswith(".exe")


def test_control_and_zero_width_characters_are_removed() -> None:
    """NUL, newlines, tabs and zero-width characters cannot hide in a name."""
    assert display_filename("Antrag\x00\r\n\t2025\u200b.pdf") == "Antrag 2025.pdf"
    assert display_filename("a\x1b[31mred.txt") == "a [31mred.txt"


def test_decomposed_umlauts_are_normalised() -> None:
    """A macOS-style decomposed 'Grüße' equals the composed spelling (NFC)."""
    name = display_filename("Gru\u0308\u00dfe.pdf")
    assert name == "Grüße.pdf"
    assert unicodedata.is_normalized("NFC", name)


def test_long_names_are_truncated_keeping_the_extension() -> None:
    """A very long name is cut to max_len characters and keeps its extension."""
    name = display_filename("x" * 500 + ".pdf")
    assert len(name) == 200
    assert name.endswith(".pdf")
    assert display_filename("Bauantrag_Hauptstrasse.docx", max_len=12) == "Bauantr.docx"


def test_fallback_is_used_and_cleaned() -> None:
    """An unusable name gives the fallback, which is itself cleaned."""
    assert display_filename("\u202e", fallback="winmail-1.dat") == "winmail-1.dat"
    assert display_filename("", fallback="../x.bin") == "x.bin"
    assert display_filename("", fallback="..") == "attachment"


@given(raw=st.one_of(st.none(), st.text()), max_len=st.integers(min_value=1, max_value=300))
def test_output_is_always_safe_and_non_empty(raw: str | None, max_len: int) -> None:
    """Whatever the sender writes, the name has no separator, control or bidi char and is non-empty."""
    name = display_filename(raw, max_len=max_len)
    assert name and name not in {".", ".."}
    assert not name.startswith(".")
    assert "/" not in name and "\\" not in name
    assert not any(unicodedata.category(ch) == "Cc" for ch in name)
    assert not set(name) & BIDI_AND_INVISIBLE
    assert len(name) <= max(max_len, len("attachment"))


@given(raw=st.text(alphabet=st.characters(codec="utf-8"), min_size=1))
def test_output_is_nfc_and_within_default_length(raw: str) -> None:
    """Names are NFC-normalised and at most 200 characters by default."""
    name = display_filename(raw)
    assert len(name) <= 200
    assert unicodedata.is_normalized("NFC", name)
