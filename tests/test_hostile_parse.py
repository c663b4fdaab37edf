"""Hostile input at the parse stage (P9; T33, T35): best-effort decoding, budgets, and nothing escapes but Quarantine."""

from __future__ import annotations

import base64
import sqlite3
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mail2ticket.classify import classify
from mail2ticket.outcomes import Quarantine
from mail2ticket.parse import Limits, parse
from mail2ticket.parse_precheck import longest_line
from mail2ticket.parse_guard import ParseGuard

HEAD = b"From: Erika <erika@example.org>\nTo: buergerbuero@stadt.example\nSubject: Test\nMessage-ID: <h@example.org>\n"


def bombs() -> dict[str, bytes]:
    """The T35 structure bombs, each well under 25 MiB."""
    many_parts = HEAD + b'MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary="b"\n\n' + (
        b"--b\nContent-Type: text/plain\n\nx\n" * 10_000) + b"--b--\n"
    rfc822 = b"Subject: innermost\n\nx\n"
    for _ in range(100):
        rfc822 = b"Subject: wrapped\nMIME-Version: 1.0\nContent-Type: message/rfc822\n\n" + rfc822
    nested = b"x\n"
    for depth in range(1000):
        nested = (f'Content-Type: multipart/mixed; boundary="b{depth}"\n\n--b{depth}\n'.encode() + nested
                  + f"\n--b{depth}--\n".encode())
    return {
        "10000_parts": many_parts,
        "rfc822_nested_100": HEAD + b"MIME-Version: 1.0\n" + rfc822.split(b"\n", 1)[1],
        "multipart_nested_1000": HEAD + b"MIME-Version: 1.0\n" + nested,
        "100000_blank_lines": b"\n" * 100_000 + HEAD + b"\nx\n",
        "1mib_header_line": HEAD + b"X-Long: " + b"a" * (1 << 20) + b"\n\nx\n",
        "100000_addresses": HEAD.replace(b"To: buergerbuero@stadt.example\n", b"To: " + b", ".join(
            f"u{i}@example.org".encode() for i in range(100_000)) + b"\n") + b"\nx\n",
        "semicolon_content_type": HEAD + b"MIME-Version: 1.0\nContent-Type: text/plain" + b";" * 95_000 + b"\n\nx\n",
    }


@pytest.fixture(scope="module")
def guard() -> Iterator[ParseGuard]:
    parse_guard = ParseGuard(cpu_seconds=2)
    yield parse_guard
    parse_guard.close()


@pytest.mark.parametrize("name", list(bombs()))
def test_structure_bomb_is_quarantined_by_the_guard(guard: ParseGuard, name: str) -> None:
    """Each T35 bomb ends as Quarantine with a reason (budget, limit or parser failure), never a crash or a hang."""
    raw = bombs()[name]
    assert len(raw) < 25 * 1024 * 1024
    with pytest.raises(Quarantine) as caught:
        guard.analyse(raw, Limits(), envelope_from="x@example.org")
    assert caught.value.reason
    ok = guard.analyse(HEAD + b"\nDanke!\n", Limits(), envelope_from="x@example.org")  # the guard still serves
    assert ok.parsed.text == "Danke!\n" and ok.classification.kind == "human"


def test_guard_kills_a_parse_over_the_cpu_budget() -> None:
    """A parse that burns more CPU than the budget is killed and quarantined; the next message is parsed normally."""
    guard = ParseGuard(cpu_seconds=1)
    try:
        slow = HEAD + b"MIME-Version: 1.0\nContent-Type: text/plain" + b";" * 400_000 + b"\n\nx\n"
        with pytest.raises(Quarantine, match="budget exceeded"):
            guard.analyse(slow, Limits(max_header_bytes=1 << 20, max_line_length=1 << 20), envelope_from=None)
        assert guard.restarts == 1
        assert guard.analyse(HEAD + b"\nok\n", Limits(), envelope_from=None).parsed.subject == "Test"
    finally:
        guard.close()


def _mail(number: int) -> bytes:
    return HEAD.replace(b"Subject: Test", f"Subject: Antrag {number}".encode()) + f"\nText {number}\n".encode()


def test_submitted_mails_are_answered_in_order_while_the_next_waits_in_the_pipe() -> None:
    """Each collect answers the oldest submitted mail, although its successor was already sent to the worker."""
    guard = ParseGuard(cpu_seconds=2)
    try:
        guard.submit(_mail(0), Limits(), envelope_from="x@example.org")
        for number in range(1, 30):
            guard.submit(_mail(number), Limits(), envelope_from="x@example.org")
            assert guard.collect().parsed.subject == f"Antrag {number - 1}"
        assert guard.collect().parsed.subject == "Antrag 29"
        assert guard.restarts == 0
    finally:
        guard.close()


def test_a_budget_breach_does_not_cost_the_mail_queued_behind_it() -> None:
    """The mail over the CPU budget is quarantined; the one already sent behind it is parsed by the new worker."""
    guard = ParseGuard(cpu_seconds=1)
    try:
        slow = HEAD + b"MIME-Version: 1.0\nContent-Type: text/plain" + b";" * 400_000 + b"\n\nx\n"
        limits = Limits(max_header_bytes=1 << 20, max_line_length=1 << 20)
        guard.submit(slow, limits, envelope_from=None)
        guard.submit(_mail(1), limits, envelope_from=None)
        with pytest.raises(Quarantine, match="budget exceeded"):
            guard.collect()
        assert guard.collect().parsed.subject == "Antrag 1"
        assert guard.restarts == 1
    finally:
        guard.close()


@pytest.mark.parametrize("error", [sqlite3.OperationalError, OSError])
def test_a_read_that_fails_halfway_leaves_no_half_sent_mail_for_the_next(error: type[Exception]) -> None:
    """Storage failing while a large mail streams to the worker: the storage error surfaces (no parse verdict is made
    up for the mail), and the next mail is parsed as itself, not as the rest of the half-sent one."""
    def failing_loader() -> tuple[int, Iterator[bytes]]:
        def pieces() -> Iterator[bytes]:
            yield HEAD + b"\n"
            raise error("disk I/O error")
        return 10_000, pieces()

    guard = ParseGuard(cpu_seconds=2)
    try:
        with pytest.raises(error, match="disk I/O"):
            guard.analyse(failing_loader, Limits(), envelope_from=None)
        assert guard.analyse(_mail(4), Limits(), envelope_from=None).parsed.subject == "Antrag 4"
    finally:
        guard.close()


def test_discarded_answers_never_reach_a_later_mail() -> None:
    """After a batch gives up its submitted mails, the next mail gets its own answer, not a stale one."""
    guard = ParseGuard(cpu_seconds=2)
    try:
        guard.submit(_mail(1), Limits(), envelope_from=None)
        guard.submit(_mail(2), Limits(), envelope_from=None)
        guard.discard()
        assert guard.analyse(_mail(3), Limits(), envelope_from=None).parsed.subject == "Antrag 3"
    finally:
        guard.close()


@pytest.mark.parametrize(
    ("raw", "defect"),
    [
        (HEAD + b"Content-Type: text/plain; charset=x-unknown\n\nGr\xfc\xdfe\n", "UnknownCharset:x-unknown"),
        (HEAD.replace(b"Subject: Test", "Subject: Grüße".encode("latin-1")) + b"\nx\n", "Undecodable8bitHeader:subject"),
        (HEAD + b'MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary="zz"\n\n--zz\nContent-Type: text/plain\n\n'
         b"Text ohne Ende\n", "CloseBoundaryNotFoundDefect"),
        (HEAD + b"MIME-Version: 1.0\nContent-Type: multipart/mixed\n\nno boundary at all\n", "NoBoundaryInMultipartDefect"),
        (HEAD + b"Content-Transfer-Encoding: base64\n\n!!!notbase64===\n", None),
        (HEAD + b"Content-Transfer-Encoding: quoted-printable\n\nbad =ZZ qp =\n", None),
        (HEAD + b"\nNUL\x00byte\n", None),
        (HEAD, None),
        (HEAD + b"Content-Type: text/plain\nContent-Type: text/html\n\n<b>x</b>\n", None),
        (b"\xef\xbb\xbf" + HEAD + b"\nwith BOM\n", "LeadingByteOrderMark"),
    ],
    ids=["unknown-charset", "latin1-header", "unterminated-boundary", "missing-boundary", "invalid-base64",
         "invalid-qp", "nul-bytes", "headers-only", "duplicate-content-type", "bom"],
)
def test_broken_mail_is_decoded_best_effort_with_defects(raw: bytes, defect: str | None) -> None:
    """Broken charsets, encodings and structure still give text (with replacement chars) and record the defect (T33)."""
    parsed = parse(raw)
    assert parsed.from_addr == "erika@example.org"
    assert "\x00" not in parsed.text
    if defect is not None:
        assert defect in parsed.defects
    if b"Gr\xfc\xdfe" in raw or b"Gr\xfc\xdfe" in raw.split(b"\n\n")[0]:
        assert parsed.subject == "Grüße" or "Gr" in parsed.text


def test_mail_that_is_no_mail_is_quarantined() -> None:
    """Bytes that do not start with a header field (a body fixture, a winmail.dat) are quarantined with that reason."""
    with pytest.raises(Quarantine, match="not an email message"):
        parse(b"\x78\x9f\x3e\x22 TNEF binary")
    with pytest.raises(Quarantine, match="not an email message"):
        parse(b"\n" * 10 + HEAD)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=4000))
def test_random_bytes_never_raise_anything_but_quarantine(data: bytes) -> None:
    """Whatever bytes arrive, parse returns a ParsedMail or raises Quarantine; classify never raises."""
    try:
        parsed = parse(data, Limits(max_parts=50, max_depth=10))
    except Quarantine:
        return
    assert classify(parsed.msg, None).kind in ("human", "auto-reply", "bounce", "list")


_header_value = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=80)
_fragments = st.sampled_from([
    b"Content-Type: multipart/mixed; boundary=\"b\"\n", b"Content-Type: text/plain; charset=\"x-bogus\"\n",
    b"Content-Transfer-Encoding: base64\n", b"Content-Transfer-Encoding: quoted-printable\n",
    b"Content-Type: message/rfc822\n", b"Content-Disposition: attachment; filename*=iso-2022-jp''%1B%24\n",
    b"To: a@b, \"x\" <@;;>, undisclosed:;\n", b"Subject: =?utf-8?q?x=0D=0ABcc:_e@x?=\n", b"\n--b\n", b"\n--b--\n",
    b"Content-Type: multipart/report; report-type=delivery-status; boundary=b\n", b"\xff\xfe\x00\r\r\n",
])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(_fragments, _header_value.map(lambda t: b"X-H: " + t.encode() + b"\n"),
                          st.binary(max_size=60)), max_size=25))
def test_mangled_mime_never_raises_anything_but_quarantine(pieces: list[bytes]) -> None:
    """Mail built from real MIME fragments in random order parses or is quarantined; nothing else escapes."""
    raw = HEAD + b"".join(pieces) + b"\n\nbody\n" + base64.b64encode(b"".join(pieces)[:100])
    try:
        parsed = parse(raw, Limits(max_parts=50, max_depth=10))
    except Quarantine:
        return
    assert isinstance(parsed.text, str) and "\x00" not in parsed.text
    assert isinstance(parsed.subject, str) and "\n" not in parsed.subject and "\r" not in parsed.subject
    classify(parsed.msg, "", ["bounces+1-abc@stadt.example"])


@given(st.binary(max_size=200).map(lambda b: b.replace(b"x", b"\r").replace(b"y", b"\n")), st.integers(1, 64))
def test_the_line_length_limit_sees_lines_across_chunk_borders(data: bytes, chunk: int) -> None:
    """The over-long-line check reads big mails in pieces; it must find the same longest line as a plain split."""
    assert longest_line(data, chunk) == max((len(line) for line in data.splitlines()), default=0)
