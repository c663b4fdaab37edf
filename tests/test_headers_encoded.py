"""The encoded-word fast path of header_line/address_line means exactly what the checked path means (P11, T31).

`headers.address_line` writes a non-ASCII display name and `headers.header_line` non-ASCII unstructured text with
`encoded_words` instead of the email package's fold + re-parse. Those bytes differ from what policy.SMTP folds, so
these properties compare what recipients read, with two independent stdlib readers: the RFC 5322 parser behind
`email.policy.default` (what `headers._check_wire_line` uses) and the legacy `email.header.decode_header` +
`make_header`. Python's phrase parser keeps the folding space between two encoded words of a display name, which RFC
2047 readers drop, so its display names are compared with whitespace squashed (as `headers._meaning` does); the
legacy reader and every Subject are compared exactly.
"""

from __future__ import annotations

import email
import email.policy
import re
from email.header import decode_header, make_header
from email.headerregistry import AddressHeader

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mail2ticket import encoded_words
from mail2ticket.addresses import split_addr_spec
from mail2ticket.headers import _DEFAULT, _checked_header, _make_header, _meaning, address_line, format_address
from mail2ticket.headers import header_line
from mail2ticket.safe_text import UnsafeValue, clean_text

EVIL_EW = "=?utf-8?q?x=0D=0ABcc:_evil@x?="
PIECES = ["ä", "ö", "ü", "Ä", "ß", "é", "e\u0301", "a\u0308\u0323", "😀", "👩‍👩‍👧", "中文", "東京都", "Ω", "\u00a0",
          " ", "  ", "\t", " x ", "Jürgen", "Müller", "Bürgerbüro", "Straßenlaterne", "[Ticket#2026-000123]:", "(",
          ")", '"', "\\", "<", ">", ",", ";", ":", "@", "_", "=", "?", "?=", "=3F", "=C3", "x" * 80, "\u202e",
          "\u200b", "\r\n", "\x00", "Bcc: evil@x", EVIL_EW, "=?"]
text = st.lists(st.one_of(st.sampled_from(PIECES), st.text(max_size=12),
                          st.text(st.characters(min_codepoint=0xA0, max_codepoint=0x2FFFF), max_size=12)),
                max_size=40).map("".join)
local = st.from_regex(r"[a-z0-9+_-]{1,20}(\.[a-z0-9+_-]{1,10}){0,2}", fullmatch=True)
host = st.sampled_from(["stadt.example", "example.org", "b\u00fcrgeramt.example", "a.b-c.example"])
header_name = st.sampled_from(["Subject", "Keywords", "Comments", "X-Mail2Ticket-Ticket-Title"])
SLOW = settings(deadline=None, max_examples=500, suppress_health_check=[HealthCheck.too_slow])
ENCODED_WORD_RE = re.compile(r"=\?utf-8\?q\?([^?]*)\?=")
PHRASE_EW_TEXT_RE = re.compile(r"[A-Za-z0-9!*+/=_-]+")  # RFC 2047 section 5(3)


def _assert_wire_form(name: str, line: str) -> None:
    """CRLF-terminated 7-bit ASCII lines, continuation lines start with a space (fast and checked path)."""
    assert line.isascii() and line.endswith("\r\n")
    lines = line[:-2].split("\r\n")
    assert lines[0].startswith(f"{name}:")
    assert all("\r" not in part and "\n" not in part for part in lines)
    assert all(part.startswith(" ") and part.strip() for part in lines[1:])


def _assert_fast_wire_form(name: str, line: str) -> None:
    """(a) The wire form, and more than policy.SMTP promises: lines of at most 78 characters, and every encoded word
    at most 75 characters (the stdlib writes 77), of whole UTF-8 characters, in the phrase-safe alphabet."""
    _assert_wire_form(name, line)
    assert line.startswith(f"{name}: ")
    assert all(len(part) <= 78 for part in line[:-2].split("\r\n"))
    assert ENCODED_WORD_RE.search(line)
    for word in ENCODED_WORD_RE.finditer(line):
        assert len(word.group(0)) <= 75
        assert PHRASE_EW_TEXT_RE.fullmatch(word.group(1))
        raw = re.sub(rb"=([0-9A-F]{2})", lambda m: bytes([int(m.group(1), 16)]),
                     word.group(1).replace("_", " ").encode("ascii"))
        raw.decode("utf-8")  # strict: raises if a word ends inside a multibyte sequence


def _value(line: str) -> str:
    """The header value as a reader unfolds it (RFC 5322 section 2.2.3: CRLF before WSP removed)."""
    return re.sub(r"\r\n(?=[ \t])", "", line.partition(":")[2].removesuffix("\r\n")).lstrip(" \t")


def _rfc2047_text(line: str) -> str:
    return str(make_header(decode_header(_value(line))))


def _adds_no_header(name: str, line: str) -> email.message.Message:
    """(c) A mail with the line has exactly the headers written, and the body stays the body."""
    data = f"{line}X-Probe: 1\r\n\r\nbody\r\n".encode("ascii")
    parsed = email.message_from_bytes(data, policy=email.policy.default)
    assert parsed.keys() == [name, "X-Probe"]
    assert parsed.get_payload() == "body\r\n"
    return parsed


def _squash(value: str | None) -> str:
    return "".join((value or "").split())


@SLOW
@given(display_name=text, user=local, domain=host, name=st.sampled_from(["From", "To", "Reply-To"]))
@example(display_name="Jürgen Müller", user="j.mueller", domain="example.de", name="To")
@example(display_name="Bürgerbüro Musterstadt, Amt für öffentliche Ordnung und Verkehr", user="q", domain="a.example",
         name="Reply-To")
@example(display_name="  Jürgen   Müller  ", user="j", domain="example.org", name="To")
@example(display_name="😀" * 78, user="j", domain="example.org", name="To")
def test_encoded_display_name_means_what_the_checked_path_means(display_name: str, user: str, domain: str,
                                                                name: str) -> None:
    """A non-ASCII display name is written as safe encoded words that every reader reads back as the name."""
    addr = f"{user}@{domain}"
    line = address_line(name, display_name, addr)
    _assert_wire_form(name, line)
    phrase = clean_text(display_name, max_len=78)
    parts = split_addr_spec(addr, ascii_local=True)
    assert parts is not None
    spec = "@".join(parts)
    fast = not phrase.isascii() and "=?" not in phrase
    if not fast:
        return  # the ASCII and "=?" cases take the checked path; test_outbox_compose compares those bytes
    assert line == encoded_words.address_line(name, phrase, spec) and line.startswith(f"{name}: =?utf-8?q?")
    _assert_fast_wire_form(name, line)
    # (b) Python's RFC 5322 reader, as _check_wire_line uses it, sees the checked path's header.
    reparsed = _DEFAULT.header_fetch_parse(name, _value(line))
    assert _meaning(reparsed) == _meaning(_make_header(_DEFAULT, name, format_address(display_name, addr)))
    try:
        checked_line = _checked_header(_DEFAULT, name, format_address(display_name, addr))[1]
    except UnsafeValue:
        pass  # the stdlib could not fold this name (set_address drops it); the fast path still writes it right
    else:
        assert _meaning(reparsed) == _meaning(_DEFAULT.header_fetch_parse(name, _value(checked_line)))
    # RFC 2047 reader: exactly the name, then the address.
    assert _rfc2047_text(line) == f"{phrase} <{spec}>"
    # (c) + (d): a whole mail read by the stdlib has one header with one mailbox: ours.
    parsed = _adds_no_header(name, line)
    header = parsed[name]
    assert isinstance(header, AddressHeader) and len(header.addresses) == 1
    assert header.addresses[0].addr_spec == spec
    assert _squash(header.addresses[0].display_name) == _squash(phrase)
    legacy = email.message_from_bytes(line.encode("ascii") + b"\r\nbody\r\n")
    assert str(make_header(decode_header(re.sub(r"\r\n(?=[ \t])", "", str(legacy[name]))))) == f"{phrase} <{spec}>"


@SLOW
@given(value=text, name=header_name)
@example(value="Ihre Anfrage [Ticket#2026-000123]: Straßenlaterne defekt in der Bahnhofstraße", name="Subject")
@example(value=" Grüße ", name="Subject")
@example(value="a  ü  b", name="Subject")
@example(value="ä\tb", name="Subject")
@example(value="x" * 77 + " ä " + "y" * 78, name="Subject")
@example(value="中文" * 400, name="Subject")
@example(value="ä" * 998, name="Subject")
@example(value="ä" * 999, name="Subject")
def test_encoded_text_means_exactly_the_text(value: str, name: str) -> None:
    """Non-ASCII unstructured text is written as plain and encoded words that every reader reads back exactly."""
    try:
        line = header_line(name, value)
    except UnsafeValue:
        # Refused only by the checked path (a control character or line break), never by the fast path.
        assert encoded_words.text_line(name, value) is None or value.isascii()
        with pytest.raises(UnsafeValue):
            _checked_header(_DEFAULT, name, value)
        return
    _assert_wire_form(name, line)
    parsed = _adds_no_header(name, line)  # (c)
    fast = encoded_words.text_line(name, value)
    if value.isascii() or fast is None:
        assert "=?" in value or len(value) > encoded_words.MAX_TEXT_LEN or value.isascii()
        return  # the checked path; test_outbox_compose compares those bytes
    assert line == fast
    _assert_fast_wire_form(name, line)
    # (b) Python's RFC 5322 reader (as _check_wire_line) reads the exact text, the checked path's meaning.
    reparsed = _DEFAULT.header_fetch_parse(name, _value(line))
    assert str(reparsed) == value
    assert _meaning(reparsed) == _meaning(_make_header(_DEFAULT, name, value))
    # A second, independent reader: RFC 2047 decode_header + make_header.
    assert _rfc2047_text(line) == value
    # (d) the stdlib's message parser.
    assert str(parsed[name]) == value
    legacy = email.message_from_bytes(line.encode("ascii") + b"\r\nbody\r\n")
    assert str(make_header(decode_header(re.sub(r"\r\n(?=[ \t])", "", str(legacy[name]))))) == value


def test_shipped_examples_are_short_and_readable() -> None:
    """The profiled headers: one encoded word per non-ASCII run, ASCII words left as they are."""
    assert address_line("To", "Jürgen Müller", "j.mueller@example.de") == (
        "To: =?utf-8?q?J=C3=BCrgen_M=C3=BCller?= <j.mueller@example.de>\r\n")
    assert header_line("Subject", "Ihre Anfrage [Ticket#2026-000123]: Straßenlaterne defekt in der Bahnhofstraße") == (
        "Subject: Ihre Anfrage [Ticket#2026-000123]: =?utf-8?q?Stra=C3=9Fenlaterne?=\r\n"
        " defekt in der =?utf-8?q?Bahnhofstra=C3=9Fe?=\r\n")
    assert header_line("Subject", "Grüße  an alle") == "Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe__an_alle?=\r\n"


@pytest.mark.parametrize("value", [f"Antrag {EVIL_EW} ä", "Grüße =?", "ä" * 999, "Grüße\r\nBcc: evil@x", "ä\x00"])
def test_text_the_fast_path_does_not_handle_is_refused_by_it(value: str) -> None:
    """Literal encoded-word syntax, over-long text and unsafe characters are left to the checked path."""
    assert encoded_words.text_line("Subject", value) is None
    assert encoded_words.address_line("To", value, "a@b.example") is None


def test_address_that_cannot_fit_on_a_line_is_left_to_the_checked_path() -> None:
    """`<addr>` longer than a continuation line takes the checked path, which may write it over-long."""
    addr = "x" * 64 + "@" + "y" * 60 + ".example"
    assert encoded_words.address_line("To", "Jürgen", addr) is None
    line = address_line("To", "Jürgen", addr)
    assert _DEFAULT.header_fetch_parse("To", _value(line)).addresses[0].addr_spec == addr


def test_long_header_name_leaves_the_first_line_to_the_checked_path() -> None:
    """A header name that leaves no room for the first word on the first line takes the checked path."""
    name = "X-" + "n" * 74
    assert encoded_words.text_line(name, "ä") is None
    line = header_line(name, "ä")
    assert str(_DEFAULT.header_fetch_parse(name, _value(line))) == "ä"
