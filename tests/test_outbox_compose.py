"""The fast path of outbox composition writes the mail of the checked EmailMessage path (P11, T31).

`compose` builds text-only mail line by line (`headers.header_line`/`address_line`); `_compose_message` is the
EmailMessage + `set_header` + `serialize_checked` path it replaced. Whatever a citizen puts into a subject or a
display name, both must give the same bytes, except where the line-by-line path writes a non-ASCII display name or
subject as its own encoded words (`encoded_words`): those lines differ from what policy.SMTP folds, so for them the
tests compare what a recipient reads (`_same_line`; tests/test_headers_encoded.py proves it in depth). Nothing may
add a header.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
import email
import email.policy
from email.header import decode_header, make_header
from email.headerregistry import AddressHeader
from email.message import EmailMessage
from email.policy import SMTP

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mail2ticket import encoded_words
from mail2ticket.headers import address_line, header_line, set_address, set_header
from mail2ticket.safe_text import UnsafeValue
from mail2ticket.outbox.compose import Addressing, _compose_message, compose
from mail2ticket.outbox.render import Rendered

EVIL_EW = "=?utf-8?q?x=0D=0ABcc:_evil@x?="
NASTY = ["\r\n", "\n", "\r", "\x00", "\u2028", "\x85", "\t", "\u202e", EVIL_EW, "=?utf-8?b?eA0KQmNjOiBldmlsQHg=?=",
         "\r\nBcc: evil@x", "Bcc: evil@x", '"', "<evil@x.example>", ",", ";", ":", "=?", "?=", " ", "  ", "ä",
         "Bürgerbüro", "x" * 80, "\\", "(", ")", ".", "@"]
text = st.lists(st.one_of(st.text(max_size=30), st.sampled_from(NASTY)), max_size=6).map("".join)
ascii_text = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=90)
local = st.from_regex(r"[a-z0-9+_-]{1,20}(\.[a-z0-9+_-]{1,10}){0,2}", fullmatch=True)
domain = st.sampled_from(["stadt.example", "example.org", "b\u00fcrgeramt.example", "a.b-c.example"])
SLOW = settings(deadline=None, max_examples=200, suppress_health_check=[HealthCheck.too_slow])
NOW = dt.datetime(2026, 1, 8, 10, 0, tzinfo=dt.UTC)
HEADERS_WE_WRITE = {"From", "To", "Reply-To", "Subject", "Date", "Message-ID", "In-Reply-To", "References",
                    "Thread-Index", "Auto-Submitted", "X-Auto-Response-Suppress", "Precedence",
                    "X-Mail2Ticket-Loop", "Content-Type", "Content-Transfer-Encoding", "MIME-Version",
                    "Content-Language"}


def _both(rendered: Rendered, addressing: Addressing, **kw: object) -> tuple[bytes, bytes] | None:
    """(fast, checked) bytes, or None if the checked path refuses the mail (then the fast one must too)."""
    args: dict[str, object] = {"msg_id": "<m2t.ack.0123456789abcdef0123@stadt.example>", "domain": "stadt.example",
                               "language": "de", "automatic": True, "now": NOW, **kw}
    try:
        checked = _compose_message(rendered, addressing, **args)  # type: ignore[arg-type]
    except UnsafeValue:
        with pytest.raises(UnsafeValue):
            compose(rendered, addressing, **args)  # type: ignore[arg-type]
        return None
    return compose(rendered, addressing, **args), checked  # type: ignore[arg-type]


def _value(line: str) -> str:
    return re.sub(r"\r\n(?=[ \t])", "", line.partition(":")[2].removesuffix("\r\n")).lstrip(" \t")


def _reading(name: str, line: str) -> object:
    """What a recipient reads in one header line: the exact text, or the mailboxes with their display names with
    whitespace squashed (Python's phrase reader keeps the folding space between two encoded words, which RFC 2047
    readers drop; headers._meaning ignores it the same way)."""
    header = email.policy.default.header_fetch_parse(name, _value(line))
    if isinstance(header, AddressHeader):
        return [("".join(a.display_name.split()), a.addr_spec) for a in header.addresses]
    return str(header)


def _same_line(name: str, fast: str, checked: str) -> None:
    """The same bytes, or a line written by the encoded-word fast path that reads the same as the checked line."""
    if fast == checked:
        return
    reading = _reading(name, fast)
    assert reading == _reading(name, checked)
    if isinstance(reading, str):
        assert fast == encoded_words.text_line(name, reading)
    else:
        phrase, _, angle_addr = str(make_header(decode_header(_value(fast)))).rpartition(" ")
        assert fast == encoded_words.address_line(name, phrase, angle_addr.strip("<>"))


def _fields(data: bytes) -> list[tuple[str, str]]:
    """(name, folded line) for each header of a serialised mail."""
    fields: list[tuple[str, str]] = []
    for line in data.partition(b"\r\n\r\n")[0].decode("ascii").split("\r\n"):
        if line[:1] in (" ", "\t"):
            fields[-1] = (fields[-1][0], f"{fields[-1][1]}\r\n{line}")
        else:
            fields.append((line.partition(":")[0], line))
    return [(name, f"{line}\r\n") for name, line in fields]


def _same_mail(fast: bytes, checked: bytes) -> None:
    """The same headers in the same order, each the same line (`_same_line`), and the same body bytes."""
    assert fast.partition(b"\r\n\r\n")[2] == checked.partition(b"\r\n\r\n")[2]
    fast_fields, checked_fields = _fields(fast), _fields(checked)
    assert [name for name, _ in fast_fields] == [name for name, _ in checked_fields]
    for (name, fast_line), (_, checked_line) in zip(fast_fields, checked_fields):
        _same_line(name, fast_line, checked_line)


def _addressing(to_name: str | None, from_name: str | None = "Bürgerbüro Musterstadt",
                to_addr: str = "erika@example.org",
                reply_to: str | None = "buergerbuero+2026-000123-abcdef0123@stadt.example") -> Addressing:
    return Addressing(from_addr="buergerbuero@stadt.example", from_name=from_name, to_addr=to_addr, to_name=to_name,
                      reply_to=reply_to, in_reply_to="<first.1234@mail.example.org>",
                      references=("<older@mail.example.org>",), thread_index="AdlX1b2c3d4e5f60718293a4b5c6d7e8==")


@SLOW
@given(subject=text, to_name=text, from_name=text, body=text)
def test_compose_writes_the_mail_of_the_checked_path(subject: str, to_name: str, from_name: str, body: str) -> None:
    """For hostile subjects, display names and bodies, the fast compose writes the EmailMessage path's mail."""
    rendered = Rendered(subject=" ".join(subject.split()), text=body.rstrip() + "\n", html=None)
    both = _both(rendered, _addressing(to_name, from_name or None))
    if both is None:  # a subject with a control character: refused by both paths
        return
    fast, checked = both
    _same_mail(fast, checked)
    parsed = email.message_from_bytes(fast, policy=email.policy.default)
    assert set(parsed.keys()) <= HEADERS_WE_WRITE
    assert all(len(parsed.get_all(name) or []) == 1 for name in parsed.keys())
    assert [a.addr_spec for a in parsed["To"].addresses] == ["erika@example.org"]


@SLOW
@given(subject=ascii_text, to_name=ascii_text, user=local, host=domain, automatic=st.booleans())
def test_compose_plain_ascii_values_match_the_checked_path(subject: str, to_name: str, user: str, host: str,
                                                           automatic: bool) -> None:
    """Plain ASCII values (the fast path's domain and just outside it: long, quoted, '=?') give the same bytes."""
    rendered = Rendered(subject=" ".join(subject.split()), text="Guten Tag,\n\nDanke.\n", html=None)
    addressing = _addressing(to_name, "Buergerbuero", to_addr=f"{user}@{host}", reply_to=f"q+{user}@stadt.example")
    both = _both(rendered, addressing, automatic=automatic, auto_submitted="auto-generated")
    assert both is not None
    assert both[0] == both[1]


def test_compose_shipped_ack_matches_and_keeps_its_headers() -> None:
    """The German acknowledgement (non-ASCII subject and queue name) reads the same, with the RFC 3834 marks."""
    rendered = Rendered(subject="[Stadt#2026-000123] Eingangsbestätigung: Sperrmüll abholen",
                        text="Guten Tag Erika,\n\nvielen Dank für Ihre Nachricht.\n\n-- \nDiese Nachricht …\n",
                        html=None)
    both = _both(rendered, _addressing("Erika Mustermann"))
    assert both is not None
    fast, checked = both
    _same_mail(fast, checked)
    parsed = email.message_from_bytes(fast, policy=email.policy.default)
    assert parsed["Subject"] == rendered.subject
    assert parsed["Auto-Submitted"] == "auto-replied"
    assert parsed["X-Mail2Ticket-Loop"] == "stadt.example"
    assert parsed["Reply-To"].addresses[0].display_name == "Bürgerbüro Musterstadt"
    assert parsed.get_content().replace("\r\n", "\n") == rendered.text


def test_compose_with_html_part_still_uses_the_message_path() -> None:
    """A mail with an HTML alternative is multipart/alternative, as before."""
    rendered = Rendered(subject="Status", text="Text\n", html="<p>Text</p>")
    raw = compose(rendered, _addressing("Erika"), msg_id="<a.b@stadt.example>", domain="stadt.example",
                  language="de", automatic=False, now=NOW)
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert parsed.get_content_type() == "multipart/alternative"


@pytest.mark.parametrize("subject", [f"Antrag {EVIL_EW}", "Antrag\r\nBcc: evil@x", "Antrag\nBcc: evil@x",
                                     "a" * 5000 + " Bcc: evil@x", "x" * 20_000, "Antrag =?", "Antrag\u2028Bcc: x"])
def test_injection_attempts_in_the_subject_add_no_header(subject: str) -> None:
    """CR/LF, encoded CR/LF (RFC 2047) and over-long subjects take the checked path and add no header."""
    rendered = Rendered(subject=subject, text="x\n", html=None)
    both = _both(rendered, _addressing("Erika"))
    if both is None:  # a line break in the subject: refused by both paths
        return
    fast, checked = both
    _same_mail(fast, checked)
    assert _fields(fast)[3] == _fields(checked)[3]  # the Subject: the checked path's own line
    parsed = email.message_from_bytes(fast, policy=email.policy.default)
    assert "Bcc" not in parsed and len(parsed.get_all("Subject") or []) == 1
    assert all(len(line) <= 998 for line in fast.split(b"\r\n"))


@pytest.mark.parametrize(("name", "value"), [
    ("Subject", "Antrag\r\nBcc: evil@x"), ("Subject", "a\x00b"), ("In-Reply-To", "<a@b>\nBcc: x"),
    ("Bad Name", "x"), ("Subject:", "x"), ("Subject", "x" * 16_385),
])
def test_header_line_refuses_what_set_header_refuses(name: str, value: str) -> None:
    """Control characters, line breaks, bad names and huge values raise UnsafeValue on both paths."""
    with pytest.raises(UnsafeValue):
        header_line(name, value)
    with pytest.raises(UnsafeValue):
        set_header(EmailMessage(), name, value)


def _checked_line(name: str, value: str) -> str:
    msg = EmailMessage()
    set_header(msg, name, value)
    return str(SMTP.fold(name, msg[name]))


@pytest.mark.parametrize("name", ["Subject", "In-Reply-To", "References", "Thread-Index", "Auto-Submitted",
                                  "X-Mail2Ticket-Loop", "Content-Language", "Message-ID", "Date", "Keywords"])
@pytest.mark.parametrize("value", [
    "bulk", "auto-replied", "de", "<m2t.ack.0123@stadt.example>", "<A.b@Stadt.Example>", "<a@[1.2.3.4]>",
    "Thu, 08 Jan 2026 10:00:00 +0000", "Mon, 08 Jan 2026 10:00:00 +0000", "Thu, 8 Jan 2026 10:00:00 GMT",
    "a  b", " a", "a ", "(comment) x", '"quoted" word', "x" * 70, "x" * 80, "a =?utf-8?q?b?= c", "not a date",
    "<a@b> <c@d>", "Grüße",
])
def test_header_line_equals_the_checked_path(name: str, value: str) -> None:
    """For plain values (fast paths) and just-not-plain ones (checked path) header_line writes what set_header does."""
    try:
        expected = _checked_line(name, value)
    except UnsafeValue:
        with pytest.raises(UnsafeValue):
            header_line(name, value)
        return
    _same_line(name, header_line(name, value), expected)


def _checked_address_line(name: str, display_name: str | None, addr: str) -> str:
    msg = EmailMessage()
    set_address(msg, name, display_name, addr)
    return str(SMTP.fold(name, msg[name]))


@SLOW
@given(display_name=st.one_of(st.none(), text, ascii_text), user=local, host=domain,
       name=st.sampled_from(["From", "To", "Reply-To"]))
def test_address_line_equals_the_checked_path(display_name: str | None, user: str, host: str, name: str) -> None:
    """Fast paths, template path and checked path of address_line all write what set_address does."""
    addr = f"{user}@{host}"
    _same_outcome(name, _outcome(address_line, name, display_name, addr),
                  _outcome(_checked_address_line, name, display_name, addr))
    # The second call with the same name uses the cached template.
    other = f"{user[::-1]}@{host}"
    _same_outcome(name, _outcome(address_line, name, display_name, other),
                  _outcome(_checked_address_line, name, display_name, other))


def _outcome(fn: Callable[[str, str | None, str], str], name: str, display_name: str | None, addr: str) -> str:
    try:
        return fn(name, display_name, addr)
    except UnsafeValue:
        return "refused"


def _same_outcome(name: str, fast: str, checked: str) -> None:
    if "refused" in (fast, checked):
        assert fast == checked
    else:
        _same_line(name, fast, checked)


@pytest.mark.parametrize("display_name", ["Bürgerbüro Musterstadt", "Bürgerbüro", "Ämter " * 12, f"Max {EVIL_EW}",
                                          'Doe, "John"', "A\r\nBcc: evil@x", "x" * 100, "Dr. Müller (Bauamt)"])
@pytest.mark.parametrize("addr", ["buergerbuero+2026-000123-abcdef0123@stadt.example", "a@b.example",
                                  "a.b.c+" + "x" * 50 + "@stadt.example", "x" * 64 + "@" + "y" * 60 + ".example"])
def test_address_line_templates_match_for_long_and_odd_values(display_name: str, addr: str) -> None:
    """Reply addresses of every length with encoded, quoted or over-long display names match the checked path."""
    line = address_line("Reply-To", display_name, addr)
    _same_line("Reply-To", line, _checked_address_line("Reply-To", display_name, addr))
    assert address_line("Reply-To", display_name, addr) == line  # the cached template gives the same again


@pytest.mark.parametrize("addr", ["a@b.example\r\nBcc: x@y", "a b@c.example", "<a@b.example>", "ä@b.example", "a@b.",
                                  "", "a@@b.example", '"a"@b.example'])
def test_address_line_refuses_bad_addresses(addr: str) -> None:
    """An address that format_address refuses is refused on every path, with or without a display name."""
    for display_name in (None, "Erika", "Bürgerbüro"):
        with pytest.raises(UnsafeValue):
            address_line("To", display_name, addr)


@pytest.mark.parametrize("display_name", ["Bürgerbüro Musterstadt", "Bürgerbüro", "Stadtverwaltung Musterstadt, Amt 7"])
def test_reply_addresses_of_one_shape_reuse_the_template_and_match(display_name: str) -> None:
    """Every ticket's reply address has the same shape; each line built from the template is the checked line."""
    for number in range(1, 40):
        addr = f"buergerbuero+2026-{number:06d}-{number * 7919:010x}@stadt.example"
        _same_line("Reply-To", address_line("Reply-To", display_name, addr),
                   _checked_address_line("Reply-To", display_name, addr))
