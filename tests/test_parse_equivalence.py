"""The parse shortcuts change nothing: `analyse` equals the plain stdlib path on every corpus mail and generated mail.

The shortcuts: a header memo (`_header_memo.MemoPolicy`: each header object built once per message), header texts
worked out without a parse tree (`MemoPolicy.header_text`), address parses reused from the header objects, a
header-field index in classify, and cheaper raw-byte prechecks. The reference is `parse_reference` (plain
``policy.default``, every header through its header class) and classify on that plain ``policy.default`` message.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import datetime as dt
import email
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from email.policy import EmailPolicy
from email.policy import default as default_policy

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.corpus import generate
from mail2ticket import _bounce
from mail2ticket._header_memo import MAX_ENTRIES, MAX_VALUE_CHARS, MemoPolicy, new_policy
from mail2ticket.classify import DEFAULT_NOREPLY_PATTERNS
from mail2ticket.outcomes import Quarantine
from mail2ticket.parse import Limits, parse, parse_reference
from mail2ticket.parse_precheck import longest_line, may_have_line_over
from mail2ticket.parse_guard import Analysed, ParseJob, analyse
from tests.support.corpus import all_corpus_mails

SMTP_JOB = ParseJob(Limits(), "a@b.example", ("x@stadt.example",), (), 10.0)
IMAP_JOB = ParseJob(Limits(), None, (), DEFAULT_NOREPLY_PATTERNS, 10.0)


def reference_analyse(job: ParseJob, raw: bytes) -> Analysed:
    """`parse_guard.analyse` without the parse shortcuts: plain policy.default from parsing to classifying."""
    return analyse(job, raw, parser=parse_reference)


def test_the_reference_parses_with_plain_policy_default() -> None:
    parsed = parse_reference(b"From: a@b.example\r\nSubject: x\r\n\r\nhallo\r\n", Limits())
    assert parsed.msg is not None and type(parsed.msg.policy) is not MemoPolicy


def strict(value: object) -> object:
    """`value` with every element tagged by its exact type: a str subclass must not pass for a str."""
    if isinstance(value, dict):
        return ("dict", [(strict(k), strict(v)) for k, v in value.items()])
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, [strict(v) for v in value])
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return (type(value).__name__, [(f.name, strict(getattr(value, f.name)))
                                       for f in dataclasses.fields(value) if f.name != "msg"])
    if isinstance(value, dt.datetime):
        return ("datetime", repr(value))
    return (type(value).__name__, value)


def outcome(run: Callable[[ParseJob, bytes], Analysed], job: ParseJob, raw: bytes) -> object:
    try:
        return strict(run(job, raw))
    except Quarantine as quarantine:
        return ("quarantine", quarantine.reason)


@pytest.fixture(scope="module")
def corpus_mails() -> list[tuple[str, bytes]]:
    """Every corpus file as stored whole, plus each message of the mbox and maildir files on its own."""
    return all_corpus_mails()


@pytest.fixture(scope="module")
def bench_mails() -> list[tuple[str, bytes]]:
    """Generated German municipal mail, with CRLF as on the wire and with LF as stored from an mbox."""
    mails = generate(300, 7)
    return ([(f"bench#{m.index}", m.raw) for m in mails]
            + [(f"bench-lf#{m.index}", m.raw.replace(b"\r\n", b"\n")) for m in mails])


def differences(mails: list[tuple[str, bytes]], jobs: tuple[ParseJob, ...]) -> list[str]:
    return [f"{origin} (envelope_from={job.envelope_from!r})" for origin, raw in mails for job in jobs
            if outcome(analyse, job, raw) != outcome(reference_analyse, job, raw)]


@pytest.mark.corpus
def test_analyse_equals_the_plain_path_on_the_corpora(corpus_mails: list[tuple[str, bytes]]) -> None:
    """Every field, defect (in order), body, attachment, classification and quarantine reason is the same."""
    assert len(corpus_mails) > 1000
    assert differences(corpus_mails, (SMTP_JOB, IMAP_JOB)) == []


def test_analyse_equals_the_plain_path_on_generated_mail(bench_mails: list[tuple[str, bytes]]) -> None:
    """The benchmark corpus (RFC 2047 names, replies, RFC 2231 attachments, auto-replies) comes out the same."""
    assert differences(bench_mails, (SMTP_JOB,)) == []


def _with_attachment(text: bytes) -> bytes:
    return (b"From: Erika Mustermann <erika@example.org>\r\nTo: bauamt@stadt.example\r\nSubject: Pl\xc3\xa4ne\r\n"
            b"Message-ID: <plaene@example.org>\r\nMIME-Version: 1.0\r\n"
            b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nanbei\r\n'
            b"--b\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename=plan.pdf\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\n" + text + b"--b--\r\n")


@pytest.mark.parametrize("damage", [
    b"",  # clean: decoded a piece at a time
    b"QQ==\r\n",  # padding in the middle
    b"QU*J\r\n",  # a character outside the alphabet
    b"QUJ\r\n",  # a length the stdlib pads
])
def test_a_large_attachment_comes_out_as_the_plain_path_gives_it(damage: bytes) -> None:
    data = bytes(range(256)) * (5 * 3 * 4096 + 1)  # 5 MB: decoded a piece at a time when it is clean
    text = base64.encodebytes(data).replace(b"\n", b"\r\n")
    middle = text.index(b"\r\n", len(text) // 2) + 2
    raw = _with_attachment(text[:middle] + damage + text[middle:])
    result = analyse(SMTP_JOB, raw)
    assert outcome(analyse, SMTP_JOB, raw) == outcome(reference_analyse, SMTP_JOB, raw)
    if not damage:
        assert [a.data for a in result.parsed.attachments] == [data]


def walk_fields(raw: bytes) -> Iterator[tuple[MemoPolicy, str, str]]:
    """(policy, name, raw value) of every header field of every part, attached messages included."""
    try:
        msg = email.message_from_bytes(raw, policy=new_policy())
    except Exception:  # noqa: BLE001 - the known crashers of the stdlib parser; parse() quarantines those
        return
    assert isinstance(msg.policy, MemoPolicy)
    for part in msg.walk():
        for name, value in part.raw_items():
            yield msg.policy, name, value


def reference_text(name: str, value: str) -> object:
    try:
        return str(default_policy.header_factory(name, value))
    except Exception as exc:  # noqa: BLE001
        return type(exc)


def memo_text(policy: MemoPolicy, name: str, value: str) -> object:
    try:
        return policy.header_text(name, value)
    except Exception as exc:  # noqa: BLE001
        return type(exc)


def fetched(policy: EmailPolicy[EmailMessage], name: str, value: str) -> object:
    """What `msg.get` hands out: its header class, text and defects (or the exception it raises)."""
    try:
        header = policy.header_fetch_parse(name, value)
    except Exception as exc:  # noqa: BLE001
        return type(exc)
    return (type(header).__mro__[1:], str(header), [(type(d), str(d)) for d in header.defects])


@pytest.mark.corpus
def test_header_text_and_fetch_equal_the_header_classes_on_the_corpora(corpus_mails: list[tuple[str, bytes]],
                                                                      bench_mails: list[tuple[str, bytes]]) -> None:
    """For every header field: the same text (or the same exception) as the header class, and `msg.get` objects
    of the same class, text and defects as policy.default builds, the same object when asked again."""
    wrong: list[str] = []
    count = 0
    for origin, raw in corpus_mails + bench_mails[:100]:
        for policy, name, value in walk_fields(raw):
            count += 1
            if memo_text(policy, name, value) != reference_text(name, value):
                wrong.append(f"{origin}: text of {name}: {value[:80]!r}")
            first = fetched(policy, name, value)
            if first != fetched(default_policy, name, value):
                wrong.append(f"{origin}: fetch of {name}: {value[:80]!r}")
            if not isinstance(first, type) and len(value) <= MAX_VALUE_CHARS // 2:
                if policy.header_fetch_parse(name, value) is not policy.header_fetch_parse(name, value):
                    wrong.append(f"{origin}: {name} built twice")
    assert count > 20_000
    assert wrong == []


HEADER_CASES = [
    ("Subject", "plain"), ("Subject", ""), ("Subject", "  lead and trail  "), ("Subject", "a\n b\r\n\tc"),
    ("Subject", "=?utf-8?q?=C3=A4?="), ("Subject", "x=?y"), ("Subject", "M\udcfcller"), ("Subject", "Müller"),
    ("Subject", "a\x00b\x7f"), ("X-Custom", "(comment) <x@y>"), ("Received", "from a by b; Mon, 1 Jan 2024"),
    ("Date", "Mon, 20 Nov 1995 19:12:08 -0500"), ("Date", "Mon, 20 Nov 1995 19:12:08 -0000"),
    ("Date", "20 Nov 1995 19:12:08 +0100 (CET)"), ("Date", "garbage"), ("Date", ""), ("Date", " "),
    ("Date", "Mon, 20 Nov 1995 19:12:08 +9999"), ("Date", "Mon, 32 Nov 1995 19:12:08 +0000"),
    ("Date", "Mon, 20 Nov 99999 19:12:08 +0000"), ("Resent-Date", "Tue, 2 Jan 2024 10:00:00 +0100"),
    ("Date", "Mon, 20 Nov 1995\n 19:12:08 -0500"), ("Date", "Mo, 20 Nov 1995 19:12:08 \udcfc"),
    ("Message-ID", "<a.b@c.d>"), ("Message-ID", "<a..b@c>"), ("Message-ID", "<a@b> trailing"),
    ("Message-ID", " <a@b>"), ("Message-ID", "<a@[1.2.3.4]>"), ("Message-ID", "<a@b"), ("Message-ID", "a@b"),
    ("Message-ID", "<=?utf-8?q?x?=@b>"), ("Message-ID", "<a@b>\n"), ("Message-ID", "<a.@b>"), ("Message-ID", ""),
    ("MIME-Version", "1.0"), ("MIME-Version", "1.0 (generated)"), ("MIME-Version", "01.000"),
    ("MIME-Version", "1."), ("MIME-Version", "1"), ("MIME-Version", ""), ("MIME-Version", "1.0\n"),
    ("MIME-Version", "1." + "0" * 5000), ("MIME-Version", "1" * 9 + ".0"), ("Date", "Mon, 1 Jan " + "9" * 5000),
    ("From", "Erika <erika@example.org>"), ("To", "unlisted-recipients:; (no To-header on input)"),
]


@pytest.mark.parametrize(("name", "value"), HEADER_CASES)
def test_header_text_equals_the_header_class_on_edge_cases(name: str, value: str) -> None:
    """Values at the edges of each shortcut give the header class's text, or raise like it."""
    assert memo_text(new_policy(), name, value) == reference_text(name, value)


_HEADER_CHARS = st.sampled_from(list("aZ09 .@<>()[]\\\",:;=?-_\t\r\nüé\x00\udcfc") + ["=?", "?="])


@settings(max_examples=400, deadline=None)
@given(name=st.sampled_from(["Subject", "X-Anything", "Received", "Date", "Resent-Date", "Message-ID",
                             "MIME-Version", "Content-Type", "To"]),
       value=st.lists(_HEADER_CHARS, max_size=40).map("".join)
       | st.from_regex(r"\A<[a-z.]{0,5}@[a-z.]{0,5}>\Z") | st.from_regex(r"\A[0-9.]{0,5}\Z"))
def test_header_text_equals_the_header_class_on_generated_values(name: str, value: str) -> None:
    """Arbitrary short values, biased towards the characters the shortcuts look at."""
    assert memo_text(new_policy(), name, value) == reference_text(name, value)


def test_the_memo_hands_out_one_object_per_field_and_stays_bounded() -> None:
    """Repeated fetches reuse one object; past the bounds headers are simply built anew each time."""
    policy = new_policy()
    assert policy.header("Subject", "x") is policy.header("Subject", "x")
    long_value = "x" * (MAX_VALUE_CHARS + 1)
    assert policy.header("Subject", long_value) is not policy.header("Subject", long_value)
    for number in range(MAX_ENTRIES):
        policy.header("X-Fill", str(number))
    assert policy.header("X-New", "y") is not policy.header("X-New", "y")
    assert policy.clone().header("Subject", "x") is not policy.header("Subject", "x")


def test_copies_of_a_parsed_message_start_with_their_own_memo() -> None:
    """deepcopy (flufl.bounce's sanitised copy) gives an equal message whose policy shares no header objects."""
    msg = email.message_from_bytes(b"From: A <a@b.example>\nSubject: s\nContent-Type: text/plain\n\nbody\n",
                                   policy=new_policy())
    assert isinstance(msg, EmailMessage) and isinstance(msg.policy, MemoPolicy)
    assert msg.get_content_type() == "text/plain"
    clone = copy.deepcopy(msg)
    assert isinstance(clone.policy, MemoPolicy) and clone.policy is not msg.policy
    assert clone.as_bytes() == msg.as_bytes()
    assert clone["From"] is not msg["From"] and str(clone["From"]) == str(msg["From"])


ADDRESS_CASES = [
    b"From: =?utf-8?q?=C3=96zlem?= <oe@x.example>\nTo: a@x.example\nTo: b@x.example\nCc: c@x.example\n\nx\n",
    b"From: Erika <erika@x.example>\nTo: a@x.example,\n b@x.example,\n C <c@x.example>\nReply-To: r@x.example\n\nx\n",
    b"From: erika@x.example\nTo: unlisted-recipients:; (no To-header on input)\nCc: g: a@x.example, b@x.example;\n\nx\n",
    b"From: \xc3\x96zlem <oe@x.example>\nTo: \"Doe, J.\" <j@x.example>, bad@@x, <>\nSender: s@x.example\n\nx\n",
    b"From: a@x.example (comment), b@x.example\nTo: A@X.EXAMPLE, a@x.example, a@xn--mller-kva.example\n\nx\n",
    b"Sender: Erika <erika@x.example>\nTo: " + b", ".join(b"u%d@x.example" % n for n in range(30)) + b"\n\nx\n",
]


@pytest.mark.parametrize("raw", ADDRESS_CASES)
@pytest.mark.parametrize("max_recipients", [0, 1, 2, 1000])
def test_reused_address_parses_give_the_same_addresses(raw: bytes, max_recipients: int) -> None:
    """From, Reply-To, To and Cc come out the same whether the header object's parse is reused or not."""
    limits = Limits(max_recipients=max_recipients)
    assert strict(parse(raw, limits)) == strict(parse_reference(raw, limits))


_FIELD_NAMES = st.sampled_from(["From", "To", "Cc", "Reply-To", "Sender", "Subject", "Date", "Message-ID",
                                 "MIME-Version", "Content-Type", "Auto-Submitted", "Return-Path", "X-Loop"])
_FIELD_VALUES = (st.lists(_HEADER_CHARS, max_size=30).map("".join)
                 | st.sampled_from(["a@x.example", "A <a@x.example>, b@x.example", "=?utf-8?q?=C3=96?= <oe@x.example>",
                                    "g: a@x.example;", "<>", "Mon, 1 Jan 2024 10:00:00 +0100", "<id@x.example>",
                                    "multipart/report; report-type=delivery-status", "auto-replied", "1.0"]))


@settings(max_examples=300, deadline=None)
@given(fields=st.lists(st.tuples(_FIELD_NAMES, _FIELD_VALUES), min_size=1, max_size=8),
       max_recipients=st.sampled_from([0, 1, 1000]))
def test_analyse_equals_the_plain_path_on_generated_header_blocks(fields: list[tuple[str, str]],
                                                                  max_recipients: int) -> None:
    """Random header blocks (repeated, folded, broken and encoded fields) give the same mail and classification."""
    raw = b"".join(f"{name}: {value}\n".encode("utf-8", "surrogateescape") for name, value in fields) + b"\nbody\n"
    for job in (dataclasses.replace(SMTP_JOB, limits=Limits(max_recipients=max_recipients)), IMAP_JOB):
        assert outcome(analyse, job, raw) == outcome(reference_analyse, job, raw)


@pytest.mark.corpus
def test_header_field_index_equals_raw_headers_on_the_corpora(corpus_mails: list[tuple[str, bytes]]) -> None:
    """classify's one-pass field index answers exactly what `_bounce.raw_headers` answers, name by name."""
    for origin, raw in corpus_mails:
        try:
            msg = email.message_from_bytes(raw, policy=default_policy)
        except Exception:  # noqa: BLE001, S112 - the stdlib parser's known crashers
            continue
        fields = _bounce.HeaderFields(msg)
        for name in {key.upper() for key in msg.keys()} | {"subject", "x-absent"}:
            assert fields.all(name) == _bounce.raw_headers(msg, name), origin
            assert fields.first(name) == next(iter(_bounce.raw_headers(msg, name)), ""), origin


@settings(max_examples=500, deadline=None)
@given(raw=st.lists(st.sampled_from([b"a", b"bb", b"cccc", b"\n", b"\r", b"\r\n"]), max_size=60).map(b"".join),
       limit=st.integers(min_value=-2, max_value=12))
def test_the_line_length_precheck_never_misses_a_long_line(raw: bytes, limit: int) -> None:
    """Whenever a line is longer than the limit, the block scan says so (and the exact count decides)."""
    assert may_have_line_over(raw, limit) or longest_line(raw) <= limit


@settings(max_examples=500, deadline=None)
@given(body=st.lists(st.sampled_from([b"a", b"\n", b"\r", b"\r\n", b"\r\n\r\n", b"\n\n"]), max_size=30).map(b"".join))
def test_the_header_block_ends_where_it_did(body: bytes) -> None:
    """The header block is cut at the first LF LF or CRLF CRLF, as before the bounded CRLF search."""
    raw = b"A: b\n" + body
    expected = min(x for x in (raw.find(b"\n\n"), raw.find(b"\r\n\r\n"), len(raw)) if x >= 0)
    with pytest.raises(Quarantine) as caught:
        parse(raw, Limits(max_header_bytes=-1))
    assert caught.value.reason == f"header block of {expected} bytes exceeds the limit of -1"


def test_a_line_over_the_limit_still_quarantines_with_its_length() -> None:
    """The exact longest line is still reported when the scan finds a candidate."""
    raw = b"Subject: x\n\n" + b"a" * 50 + b"\n" + b"b" * 101 + b"\r\n"
    with pytest.raises(Quarantine, match="a line of 101 bytes exceeds the limit of 100"):
        parse(raw, Limits(max_line_length=100))
    assert parse(raw, Limits(max_line_length=101)).text.startswith("a" * 50)


@settings(max_examples=500, deadline=None)
@given(body=st.lists(st.sampled_from([b"a", b"-", b"--", b"\n", b"\n--", b"\r\n--"]), max_size=80).map(b"".join),
       max_parts=st.integers(min_value=1, max_value=6))
def test_the_part_count_precheck_quarantines_exactly_as_the_boundary_count_says(body: bytes, max_parts: int) -> None:
    """A mail with more boundary-like lines ("\\n--") than twice the part limit (plus 10) is refused before it
    is parsed, and any other is not, however its dashes are placed."""
    raw = b"Subject: x\n\n" + body
    too_many = raw.count(b"\n--") > max_parts * 2 + 10
    try:
        parse(raw, Limits(max_parts=max_parts))
    except Quarantine as refused:
        assert too_many and refused.reason == f"more than {max_parts} MIME parts"
    else:
        assert not too_many


_BASE64_ATOMS = [b"QUJD", b"REVG", b"R0g=", b"SQ==", b"=", b"A", b"\r\n", b"\n", b"\r", b" ", b"!", b"-", b"\t",
                 b"\xc3\xa4"]


@settings(max_examples=400, deadline=None)
@given(body=st.lists(st.sampled_from(_BASE64_ATOMS), max_size=60).map(b"".join),
       cte=st.sampled_from(["base64", "BASE64", " base64", "quoted-printable"]))
def test_attachment_bytes_equal_the_plain_path_on_broken_base64(body: bytes, cte: str) -> None:
    """Attachments in base64 with bad padding, stray characters, bare CR or LF and 8-bit bytes decode to the same
    bytes as through the stdlib's get_payload(decode=True)."""
    raw = (b"From: a@b.example\r\nSubject: x\r\nMIME-Version: 1.0\r\n"
           b"Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nhallo\r\n"
           b"--b\r\nContent-Type: application/pdf; name=\"a.pdf\"\r\nContent-Disposition: attachment\r\n"
           b"Content-Transfer-Encoding: " + cte.encode() + b"\r\n\r\n" + body + b"\r\n--b--\r\n")
    assert outcome(analyse, SMTP_JOB, raw) == outcome(reference_analyse, SMTP_JOB, raw)
