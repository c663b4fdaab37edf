"""An attachment decoded a piece at a time is the one the stdlib decodes; anything doubtful goes the stdlib's way.

`decode_clean` must give the bytes of ``decode_b`` (the email package's base64 decoder, which `parse` used alone
before) whenever it gives any, and must give them for what mailers send. Pieces are made tiny here, so that every
way a group of four characters, a line break or the padding can fall across a piece boundary is met.
"""

from __future__ import annotations

import base64
import os
import tracemalloc
from email._encoded_words import decode_b  # type: ignore[import-not-found]

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from mail2ticket.base64_lines import PIECE_CHARS, decode_clean

_TEXT = st.text(alphabet="ABCDEFabcdef0189+/=\r\n -_.*ä", max_size=80).filter(str.isascii)


def _stdlib(text: str) -> tuple[bytes, list[object]]:
    value, defects = decode_b(text.encode("ascii").translate(None, b"\r\n"))
    return value, defects


_PIECES = st.integers(min_value=1, max_value=17)


@given(data=st.binary(max_size=200), line=st.integers(min_value=4, max_value=80),
       line_break=st.sampled_from(["\r\n", "\n", "\r", ""]), piece=_PIECES)
@settings(max_examples=500, deadline=None)
def test_what_mailers_send_decodes_to_the_attachment(data: bytes, line: int, line_break: str, piece: int) -> None:
    encoded = base64.b64encode(data).decode()
    text = line_break.join(encoded[i : i + line] for i in range(0, len(encoded), line)) + line_break
    assert decode_clean(text, piece) == data == _stdlib(text)[0]


@given(text=_TEXT, piece=_PIECES)
@example(text="QQ==QUJD", piece=4)  # padding inside: the stdlib reads it as broken
@example(text="QQ==QUJD", piece=8)
@example(text="====", piece=2)
@example(text="QUJ", piece=1)  # a length the stdlib pads, with a defect
@example(text="0000=", piece=1)  # the same, where strict decoding alone ignores the extra "="
@example(text="QU\r\nJD", piece=3)
@settings(max_examples=1500, deadline=None)
def test_any_text_it_decodes_is_decoded_as_the_stdlib_does_without_a_defect(text: str, piece: int) -> None:
    clean = decode_clean(text, piece)
    if clean is not None:
        assert _stdlib(text) == (clean, [])


@given(text=_TEXT)
@settings(max_examples=300, deadline=None)
def test_whole_text_in_one_piece_takes_the_fast_way_exactly_when_the_stdlib_finds_no_defect(text: str) -> None:
    value, defects = _stdlib(text)
    assert decode_clean(text) == (None if defects else value)


@pytest.mark.parametrize("line_break", ["\r\n", "\n", "\r", ""])
def test_a_large_attachment_is_decoded_with_its_text_and_result_and_little_more(line_break: str) -> None:
    data = os.urandom(6 << 20)
    encoded = base64.b64encode(data).decode()
    text = line_break.join(encoded[i : i + 76] for i in range(0, len(encoded), 76)) + line_break
    tracemalloc.start()
    try:
        decoded = decode_clean(text)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert decoded == data
    # the stdlib's way holds the text's bytes and those bytes without line breaks besides: 17 MB more here
    assert peak < len(data) * 1.2 + 4 * PIECE_CHARS, f"{peak / 1e6:.1f} MB for {len(data) / 1e6:.1f} MB"
