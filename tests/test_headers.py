"""Tests for mail2ticket.headers: nothing from an inbound mail can add a header to generated mail (P11, T31)."""

from __future__ import annotations

import email
import email.errors
import re
import unicodedata
from email import policy
from email.message import EmailMessage

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mail2ticket.addresses import envelope_address, normalize_address, parse_address_list
from mail2ticket.headers import (
    check_wire_message,
    format_address,
    message_id,
    serialize_checked,
    set_address,
    set_header,
    strip_control_headers,
)
from mail2ticket.safe_text import UnsafeValue, clean_text
from tests.support.corpus import corpus_dir

EVIL_EW = "=?utf-8?q?x=0D=0ABcc:_evil@x?="
NASTY_PIECES = [
    "\r\n",
    "\n",
    "\r",
    "\x00",
    "\u2028",
    "\u2029",
    "\u0085",
    "\x0b",
    "\x0c",
    "\t",
    "\u202e",
    "\u200b",
    EVIL_EW,
    "=?utf-8?b?eA0KQmNjOiBldmlsQHg=?=",
    "\r\nBcc: evil@x",
    "\nTo: second@x.example",
    "Bcc: evil@x",
    '"',
    "<evil@x.example>",
    ",",
    ";",
    ":",
    "=?",
    "?=",
    " ",
    "ä",
    "x" * 100,
]
nasty_text = st.lists(st.one_of(st.text(), st.sampled_from(NASTY_PIECES)), max_size=8).map("".join)
BARE_CR_OR_LF = re.compile(rb"\r(?!\n)|(?<!\r)\n")
SLOW = settings(deadline=None, max_examples=300, suppress_health_check=[HealthCheck.too_slow])


def _roundtrip(msg: EmailMessage) -> tuple[bytes, EmailMessage]:
    data = msg.as_bytes(policy=policy.SMTP)
    parsed = email.message_from_bytes(data, policy=policy.default)
    assert isinstance(parsed, EmailMessage)
    return data, parsed


def _status_mail(subject: str, from_name: str, to_name: str) -> EmailMessage:
    msg = EmailMessage()
    set_address(msg, "From", from_name, "buergeramt@stadt.example")
    to = ", ".join(
        [format_address(to_name, "citizen@example.org"), format_address(subject, "second@example.org")]
    )
    try:
        set_header(msg, "To", to)
    except UnsafeValue:
        # Refusing is the safe answer for a list; generated mail has one recipient per mail anyway.
        set_header(msg, "To", "citizen@example.org, second@example.org")
    set_header(msg, "Subject", clean_text(subject))
    set_header(msg, "Message-ID", message_id("stadt.example", "t-42.1"))
    msg.set_content("Ihr Anliegen wurde erfasst.\n")
    return msg


# ---------------------------------------------------------------------------------------------------------------
# Generated mail: header set and line endings


@SLOW
@given(subject=nasty_text, from_name=nasty_text, to_name=nasty_text)
def test_inbound_text_never_adds_headers(subject: str, from_name: str, to_name: str) -> None:
    """Whatever a sender puts in a subject or display name, our mail has exactly the headers we set, two To
    recipients, and no bare CR/LF on the wire."""
    msg = _status_mail(subject, from_name, to_name)
    data, parsed = _roundtrip(msg)
    assert parsed.keys() == [
        "From",
        "To",
        "Subject",
        "Message-ID",
        "Content-Type",
        "Content-Transfer-Encoding",
        "MIME-Version",
    ]
    assert [a.addr_spec for a in parsed["To"].addresses] == ["citizen@example.org", "second@example.org"]
    assert [a.addr_spec for a in parsed["From"].addresses] == ["buergeramt@stadt.example"]
    assert not BARE_CR_OR_LF.search(data)
    assert not any(ch in str(parsed["Subject"]) for ch in "\r\n\x00")
    assert "".join(str(parsed["Subject"]).split()) == "".join(str(msg["Subject"]).split())
    assert serialize_checked(msg) == data


def test_encoded_word_crlf_in_subject_stays_one_header() -> None:
    """The CVE-2024-6923 payload as a subject shows up as harmless text, not as a Bcc header."""
    msg = EmailMessage()
    set_header(msg, "Subject", clean_text(f"Antrag {EVIL_EW}"))
    data, parsed = _roundtrip(msg)
    assert parsed.keys() == ["Subject"]
    assert b"\r\nBcc" not in data
    assert "Bcc: evil@x" not in str(parsed["Subject"])
    assert str(parsed["Subject"]).startswith("Antrag = ?utf-8?q?")


def test_encoded_word_crlf_in_display_name_stays_one_address() -> None:
    """An encoded CR/LF in a display name cannot add a recipient or a header."""
    value = format_address(f"Max {EVIL_EW}", "max@example.org")
    msg = EmailMessage()
    set_header(msg, "To", value)
    _, parsed = _roundtrip(msg)
    assert parsed.keys() == ["To"]
    assert [a.addr_spec for a in parsed["To"].addresses] == ["max@example.org"]


@pytest.mark.parametrize("length", [8192, 16_000])
def test_long_subject_without_spaces_is_truncated(length: int) -> None:
    """An 8 kB subject without spaces (gh-77710) is shortened and serialises as one short Subject header."""
    msg = EmailMessage()
    set_header(msg, "Subject", clean_text("ä" + "x" * length))
    data, parsed = _roundtrip(msg)
    assert parsed.get_all("Subject") is not None and len(parsed.get_all("Subject") or []) == 1
    assert len(str(parsed["Subject"])) == 200
    assert str(parsed["Subject"]).endswith("…")
    assert not BARE_CR_OR_LF.search(data)


@pytest.mark.parametrize("text", ["x" * 8192, "ä" * 8192, "ab" + "\u0301" * 40 + "y" * 8000])
def test_long_subject_without_spaces_folds_safely_when_not_truncated(text: str) -> None:
    """Even an untruncated 8 kB subject without spaces folds into valid lines and round-trips unchanged."""
    msg = EmailMessage()
    subject = clean_text(text, max_len=10_000)
    set_header(msg, "Subject", subject)
    data = serialize_checked(msg)
    parsed = email.message_from_bytes(data, policy=policy.default)
    assert parsed.keys() == ["Subject"]
    assert str(parsed["Subject"]) == subject
    assert all(len(line) <= 998 for line in data.split(b"\r\n"))
    assert not BARE_CR_OR_LF.search(data)


# ---------------------------------------------------------------------------------------------------------------
# set_header, message_id, serialize_checked


@pytest.mark.parametrize(
    "value",
    ["a\r\nBcc: evil@x", "a\nb", "a\rb", "a\x00b", "a\u2028b", "a\u0085b", "a\x0bb", "a\x1bb", "\ud800"],
)
def test_set_header_refuses_line_breaks_and_controls(value: str) -> None:
    """A header value with a line break or control character is refused and the message stays unchanged."""
    msg = EmailMessage()
    set_header(msg, "Subject", "vorher")
    with pytest.raises(UnsafeValue):
        set_header(msg, "Subject", value)
    assert msg.keys() == ["Subject"] and str(msg["Subject"]) == "vorher"


@pytest.mark.parametrize("name", ["", "Bcc:", "X Y", "Sub\nject", "Sübject", "X\x00", "a" * 77, ":"])
def test_set_header_refuses_bad_names(name: str) -> None:
    """A header name that is not RFC 5322 ftext is refused."""
    with pytest.raises(UnsafeValue):
        set_header(EmailMessage(), name, "x")


def test_set_header_replaces_existing_value() -> None:
    """Setting a header twice leaves one header with the last value."""
    msg = EmailMessage()
    set_header(msg, "Subject", "eins")
    set_header(msg, "subject", "zwei")
    assert msg.get_all("Subject") == ["zwei"]


def test_set_header_refuses_address_header_that_decodes_to_crlf() -> None:
    """A hand-built To value whose display name decodes to CR/LF is refused instead of mangled."""
    with pytest.raises(UnsafeValue):
        set_header(EmailMessage(), "To", f'"{EVIL_EW}" <a@example.org>')


def test_set_header_requires_modern_policy() -> None:
    """Generated mail built with the legacy compat32 policy is refused, because its headers are not checked."""
    with pytest.raises(UnsafeValue):
        set_header(EmailMessage(policy=policy.compat32), "Subject", "x")


def test_message_id_is_validated() -> None:
    """Message-IDs are built only from safe parts, with the domain in A-label form."""
    assert message_id("Stadt.Example", "t-42.1_a") == "<t-42.1_a@stadt.example>"
    assert message_id("bürgeramt.example", "x") == "<x@xn--brgeramt-65a.example>"
    for domain, unique in [
        ("stadt.example", "a b"),
        ("stadt.example", "a>b"),
        ("stadt.example", ""),
        ("stadt.example", ".a"),
        ("stadt.example", "a..b"),
        ("stadt.example", "a\r\n"),
        ("stadt example", "a"),
        ("stadt.example>", "a"),
        ("stadt.example\r\nBcc: x", "a"),
        ("", "a"),
    ]:
        with pytest.raises(UnsafeValue):
            message_id(domain, unique)


def test_serialize_checked_refuses_headers_added_behind_our_back() -> None:
    """A header injected by bypassing set_header (the stdlib CVE-2024-6923 path) is caught before sending."""
    msg = EmailMessage()
    set_header(msg, "To", format_address("A", "a@example.org"))
    msg["Subject"] = EVIL_EW  # plain stdlib API: on Python < 3.11.10 this writes a Bcc line
    if hasattr(email.errors, "HeaderWriteError"):
        pytest.skip("this Python refuses the injected header itself (CVE-2024-6923 fixed)")
    assert b"\r\nBcc: evil@x" in msg.as_bytes(policy=policy.SMTP)
    with pytest.raises(UnsafeValue):
        serialize_checked(msg)


# ---------------------------------------------------------------------------------------------------------------
# clean_text


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, ""),
        ("", ""),
        ("  Antrag\r\nBcc: x  ", "Antrag Bcc: x"),
        ("a\x00b\x1bc\x7fd\x9fe", "abcde"),
        ("a\u2028b\u2029c\u0085d", "a b c d"),
        ("\u202eevil\u202c \u2066x\u2069", "evil x"),
        ("zero\u200bwidth\ufeff", "zerowidth"),
        ("a \t\n  b", "a b"),
        ("Stra\u0073\u0073e Mu\u0308ller", "Strasse Müller"),
        (EVIL_EW, EVIL_EW),
    ],
)
def test_clean_text_examples(raw: str | None, expected: str) -> None:
    """Display text loses line breaks, controls, bidi and zero-width characters and is NFC normalised."""
    assert clean_text(raw) == expected


def test_clean_text_truncates_without_splitting_combining_marks() -> None:
    """A long text is cut to max_len with an ellipsis, never between a letter and its accent."""
    text = "e\u0301" * 50
    out = clean_text(unicodedata.normalize("NFD", text), max_len=10)
    assert out == "é" * 9 + "…"
    decomposed = "a" + "\u0301\u0323" * 20
    out = clean_text(decomposed + "b" * 20, max_len=5)
    assert len(out) <= 5 and not unicodedata.combining(out[0])
    assert clean_text("abcdef", max_len=3, ellipsis="") == "abc"
    assert clean_text("abcdef", max_len=0) == ""


@settings(deadline=None, max_examples=500)
@given(raw=nasty_text, max_len=st.integers(min_value=0, max_value=300))
def test_clean_text_is_single_safe_line(raw: str, max_len: int) -> None:
    """clean_text output is never longer than max_len and never contains a line break or invisible control."""
    out = clean_text(raw, max_len=max_len)
    assert len(out) <= max_len
    assert out == out.strip() and "  " not in out
    assert not any(unicodedata.category(ch) in {"Cc", "Cf", "Cs", "Zl", "Zp"} for ch in out)
    assert out.splitlines() in ([out], [])
    assert clean_text(out, max_len=max_len) == out


def _clean_text_char_by_char(raw: str) -> str:
    """clean_text's rule applied to every character, as it was written before its fast path for printable text."""
    kept = [" " if ch in "\r\n\t" or ch.isspace() else ch for ch in raw
            if ch.isspace() or unicodedata.category(ch) not in {"Cc", "Cf", "Cs", "Zl", "Zp"}]
    return unicodedata.normalize("NFC", " ".join("".join(kept).split()))


@settings(deadline=None, max_examples=500)
@given(raw=st.one_of(nasty_text, st.text(), st.text(st.characters(categories=["L", "M", "N", "P", "S", "Zs"]))))
def test_clean_text_fast_path_keeps_the_rule(raw: str) -> None:
    """Printable names and subjects come out exactly as the character-by-character rule makes them."""
    assert clean_text(raw, max_len=10_000) == _clean_text_char_by_char(raw)


# ---------------------------------------------------------------------------------------------------------------
# Addresses


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Alice@Example.ORG", "alice@example.org"),
        ("Alice Example <Alice@Example.ORG>", "alice@example.org"),
        ('"Doe, John" <John.Doe@example.org>', "john.doe@example.org"),
        ("<a@example.org>", "a@example.org"),
        ("a@example.org (Kommentar)", "a@example.org"),
        ("MÜLLER@Bürgeramt.Example", "müller@xn--brgeramt-65a.example"),
        ("info@straße.de", "info@xn--strae-oqa.de"),
        ("Jörg <j@xn--brgeramt-65a.example>", "j@xn--brgeramt-65a.example"),
        ("root@localhost", "root@localhost"),
    ],
)
def test_normalize_address_accepts_and_folds_case(raw: str, expected: str) -> None:
    """One mailbox normalises to a lower-case addr-spec with an A-label domain; non-ASCII local parts are kept."""
    assert normalize_address(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        None,
        "",
        "   ",
        "a@b.example, c@d.example",
        "Team: a@b.example;",
        "undisclosed-recipients:;",
        "alice@example.org)<bob@example.org>",
        "alice@example.org <bob@example.org>",
        "Alice <alice@example.org> bob@example.org",
        "no-at-sign",
        "a@",
        "@b.example",
        "a@b@c.example",
        '"a@b"@c.example',
        "a@[192.0.2.1]",
        "a@b..example",
        ".a@b.example",
        "a@-b.example",
        "a@b_c.example",
        "a@b.example.",
        "a@xn--zz.example",
        "a\r\n@b.example",
        "a@b.example\r\nBcc: evil@x",
        "a\x00@b.example",
        "x" * 250 + "@b.example",
        "x" * 65 + "@b.example",
        f'"{EVIL_EW}" <a@b.example>',
    ],
)
def test_normalize_address_rejects(raw: str | None) -> None:
    """Anything that is not exactly one plain mailbox normalises to None."""
    assert normalize_address(raw) is None


address_alphabet = st.sampled_from(list('abcXYZ09.-_+@<>",;:()[]\\ \t\r\näß=?') + [EVIL_EW, "\x00", "\u2028"])
address_like = st.one_of(st.text(), st.lists(address_alphabet, max_size=40).map("".join), st.emails())


@SLOW
@given(raw=address_like)
def test_normalize_address_never_raises(raw: str) -> None:
    """normalize_address returns None or one lower-case, control-free local@domain for any input."""
    out = normalize_address(raw)
    if out is not None:
        assert out == out.lower() and out.count("@") == 1 and len(out) <= 254
        assert not any(ch.isspace() or unicodedata.category(ch)[0] in "CZ" for ch in out)
        assert normalize_address(out) == out


@SLOW
@given(addr=st.emails())
def test_valid_addresses_survive(addr: str) -> None:
    """Every plain valid address is accepted for matching and for the envelope, differing only in case."""
    local, domain = addr.rsplit("@", 1)
    assert normalize_address(addr) == addr.lower()
    assert envelope_address(addr) == f"{local}@{domain.lower()}"


def test_parse_address_list_keeps_valid_mailboxes() -> None:
    """A To/Cc value yields cleaned names and normalised addresses; broken entries are skipped."""
    value = (
        'Alice <Alice@Example.org>, "Bob \u202eevil" <bob@example.org>, kaputt@, '
        "Team: carol@example.org, Dave <DAVE@straße.de>;, alice@example.org)<mallory@example.org>, "
        "erin@example.org"
    )
    assert parse_address_list(value) == [
        ("Alice", "alice@example.org"),
        ("Bob evil", "bob@example.org"),
        ("", "carol@example.org"),
        ("Dave", "dave@xn--strae-oqa.de"),
        ("", "erin@example.org"),
    ]
    assert parse_address_list(value, limit=2) == parse_address_list(value)[:2]
    assert parse_address_list("a@example.org,\r\n b@example.org") == [
        ("", "a@example.org"),
        ("", "b@example.org"),
    ]
    assert parse_address_list("a@example.org\r\nBcc: evil@x") == []
    assert parse_address_list(None) == [] and parse_address_list("") == []


@SLOW
@given(
    raw=st.one_of(address_like, st.lists(address_like, max_size=5).map(", ".join)), limit=st.integers(0, 5)
)
def test_parse_address_list_never_raises(raw: str, limit: int) -> None:
    """parse_address_list never raises and returns at most `limit` clean entries."""
    out = parse_address_list(raw, limit=limit)
    assert len(out) <= limit
    for name, addr in out:
        assert name == clean_text(name)
        assert normalize_address(addr) == addr


# ---------------------------------------------------------------------------------------------------------------
# Envelope and formatted addresses


@pytest.mark.parametrize("value", ["", "a@example.org", "Bounce+t-42@Stadt.Example"])
def test_envelope_address_accepts(value: str) -> None:
    """The null reverse-path and plain addresses pass, with the domain lower-cased."""
    local, _, domain = value.partition("@")
    assert envelope_address(value) == (f"{local}@{domain.lower()}" if value else "")


@pytest.mark.parametrize(
    "value",
    [
        "a@example.org\r\n",
        "a@example.org\nRCPT TO:<evil@x>",
        "a\r@example.org",
        "a\x00@example.org",
        "<a@example.org>",
        "a@example.org>",
        "a b@example.org",
        " a@example.org",
        "a@example.org\t",
        "a\u2028@example.org",
        "a\u200b@example.org",
        "a@example.org@x",
        "example.org",
        "müller@example.org",
        '"a b"@example.org',
        "x" * 250 + "@b.example",
        "a@[192.0.2.1]",
    ],
)
def test_envelope_address_rejects(value: str) -> None:
    """Envelope values with CR/LF, NUL, brackets, spaces or odd syntax never reach smtplib."""
    with pytest.raises(UnsafeValue):
        envelope_address(value)


@SLOW
@given(value=address_like)
def test_envelope_address_accepts_only_clean_values(value: str) -> None:
    """Whatever envelope_address accepts contains no whitespace, control, or angle-bracket character."""
    try:
        out = envelope_address(value)
    except UnsafeValue:
        return
    for text in (value, out):
        assert not any(ch.isspace() or ch in "<>" or unicodedata.category(ch)[0] in "CZ" for ch in text)
        assert len(text) <= 254 and (text == "" or text.count("@") == 1)


def test_format_address_builds_safe_values() -> None:
    """Display names are cleaned, shortened and quoted; the address itself must be valid and ASCII-local."""
    assert format_address("Bürgeramt", "info@stadt.example") == "Bürgeramt <info@stadt.example>"
    assert format_address(None, "info@stadt.example") == "info@stadt.example"
    assert format_address("Doe, John", "j@example.org") == '"Doe, John" <j@example.org>'
    assert format_address("A\r\nBcc: evil@x", "a@example.org") == '"A Bcc: evil@x" <a@example.org>'
    long = format_address("x" * 200, "a@example.org")
    assert long.startswith("x" * 77 + "… <")
    assert format_address("A", "a@Bürgeramt.example") == "A <a@xn--brgeramt-65a.example>"
    for bad in [
        "",
        "a",
        "a@b@c",
        "a@example.org, b@example.org",
        "A <a@example.org>",
        "müller@x.example",
        "a\r\n@x",
    ]:
        with pytest.raises(UnsafeValue):
            format_address("A", bad)


# ---------------------------------------------------------------------------------------------------------------
# strip_control_headers


def test_strip_control_headers_removes_inbound_control_headers() -> None:
    """X-Mail2Ticket-* headers forged by a sender are removed, whatever their case; other headers stay."""
    raw = (
        b"From: a@example.org\r\n"
        b"X-Mail2Ticket-Loop: yes\r\n"
        b"Subject: hi\r\n"
        b"x-mail2ticket-ticket: 42\r\n"
        b"X-MAIL2TICKET-LOOP: again\r\n"
        b"X-Mail2TicketOther: keep\r\n"
        b"\r\nbody\r\n"
    )
    msg = email.message_from_bytes(raw, policy=policy.default)
    assert isinstance(msg, EmailMessage)
    removed = strip_control_headers(msg)
    assert removed == ["X-Mail2Ticket-Loop", "x-mail2ticket-ticket", "X-MAIL2TICKET-LOOP"]
    assert msg.keys() == ["From", "Subject", "X-Mail2TicketOther"]
    assert strip_control_headers(msg) == []
    with pytest.raises(ValueError):
        strip_control_headers(msg, prefix="")


# ---------------------------------------------------------------------------------------------------------------
# Real-world corpora


@pytest.mark.corpus
def test_corpus_address_headers_never_raise() -> None:
    """Every From/To/Cc/Reply-To/Sender in the real-world corpora parses without error into clean values."""
    root = corpus_dir()
    files = [p for p in root.rglob("*") if p.is_file() and p.suffix in {".eml", ".msg", ".txt"}]
    assert files
    seen = 0
    for path in files:
        msg = email.message_from_bytes(path.read_bytes()[:1_000_000], policy=policy.compat32)
        for name in ("From", "To", "Cc", "Reply-To", "Sender"):
            for value in msg.get_all(name) or []:
                entries = parse_address_list(str(value))
                single = normalize_address(str(value))
                seen += len(entries)
                for display, addr in entries:
                    assert display == clean_text(display) and normalize_address(addr) == addr
                if single is not None:
                    assert normalize_address(single) == single
        subject = clean_text(str(msg.get("Subject", "")))
        assert "\n" not in subject and "\r" not in subject
    assert seen > 100


def test_unfoldable_display_name_is_dropped_not_fatal() -> None:
    """A display name that cannot be folded safely is dropped; the mail still goes to the right address."""
    msg = EmailMessage()
    set_address(msg, "From", "0" * 41 + ":" + "0" * 28 + "=?=?", "buergeramt@stadt.example")
    _, parsed = _roundtrip(msg)
    assert [a.addr_spec for a in parsed["From"].addresses] == ["buergeramt@stadt.example"]


def test_unsafe_character_check_is_exactly_the_category_rule() -> None:
    """The one-regex check refuses exactly line breaks, Cc except TAB, and lone surrogates, over all code points."""
    from mail2ticket.safe_text import _LINE_BREAKS, has_unsafe_char

    def by_category(ch: str) -> bool:
        cat = unicodedata.category(ch)
        return ch in _LINE_BREAKS or (cat == "Cc" and ch != "\t") or cat == "Cs"

    assert [c for c in range(0x110000) if has_unsafe_char(chr(c)) != by_category(chr(c))] == []


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=40).map(lambda b: bytes(b"a\r\n:"[x % 4] for x in b)))
def test_a_message_with_a_bare_cr_or_lf_is_refused_whatever_the_layout(data: bytes) -> None:
    """The wire check refuses exactly the messages with a CR not followed by LF or an LF not after a CR."""
    bare = re.search(rb"\r(?!\n)|(?<!\r)\n", data) is not None
    try:
        check_wire_message(data, [])
        refused_as_bare = False
    except UnsafeValue as exc:
        refused_as_bare = "bare CR or LF" in str(exc)
    assert refused_as_bare == bare
