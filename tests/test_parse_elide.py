"""Long base64 runs kept out of the feed parser give exactly the tree the stdlib builds from the whole mail.

Compared part by part: header fields, the text as parsed, preamble, epilogue and defects. The runs are made
short here (`MIN_RUN_BYTES`), so that every base64 body of the corpora and of the generated mails is elided.
"""

from __future__ import annotations

import email
from collections.abc import Callable
from email.message import Message
from email.policy import default as default_policy

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.corpus import generate
from mail2ticket import parse_elide
from mail2ticket._header_memo import new_policy
from mail2ticket.parse_elide import parse_bytes
from tests.support.corpus import all_corpus_mails


def tree(msg: Message) -> list[object]:
    shape: list[object] = []
    for part in msg.walk():
        payload = vars(part).get("_payload")
        shape.append((list(part.raw_items()), payload if isinstance(payload, str) else type(payload).__name__,
                      part.preamble, part.epilogue, [type(defect).__name__ for defect in part.defects]))
    return shape


def outcome(parse: Callable[[], Message]) -> object:
    try:
        return tree(parse())
    except Exception as exc:  # noqa: BLE001 - the stdlib's parser raises on some corpus mails; so must we
        return ("raises", type(exc).__name__)


def same_tree(raw: bytes) -> bool:
    return outcome(lambda: parse_bytes(raw, new_policy())) == \
        outcome(lambda: email.message_from_bytes(raw, policy=new_policy()))


@pytest.fixture
def short_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(parse_elide, "MIN_RUN_BYTES", 8)


@pytest.mark.corpus
@pytest.mark.usefixtures("short_runs")
def test_the_corpora_parse_to_the_same_tree() -> None:
    mails = all_corpus_mails()
    elided = [origin for origin, raw in mails if parse_elide._elide(raw)[1] is not None]
    assert len(elided) > 100  # the check below is not vacuous
    assert [origin for origin, raw in mails if not same_tree(raw)] == []


@pytest.mark.usefixtures("short_runs")
def test_generated_mail_parses_to_the_same_tree() -> None:
    for mail in generate(300, 11):
        assert same_tree(mail.raw), mail.index
        assert same_tree(mail.raw.replace(b"\r\n", b"\n")), mail.index


def test_a_large_attachment_is_elided_and_put_back_whole() -> None:
    """At the real threshold: the 2 MB attachment's text is the run it was, and nothing of a token is left."""
    mail = next(m for m in generate(400) if m.kind == "attachment" and len(m.raw) > 1_000_000)
    skeleton, runs = parse_elide._elide(mail.raw)
    assert runs is not None and len(runs.texts) == 1 and len(skeleton) < 20_000
    msg = parse_bytes(mail.raw, new_policy())
    assert tree(msg) == tree(email.message_from_bytes(mail.raw, policy=default_policy))
    assert parse_elide._TOKEN_MARK not in msg.as_string()


REAL_MIN_RUN_BYTES = parse_elide.MIN_RUN_BYTES
LINE_ATOMS = [b"QUJDREVG", b"R0g=", b"+/", b"\r\n", b"\n", b"\r", b"\r\n\r\n", b"-", b"--b", b":", b" ", b"From ",
              b"\xc3\xa4", b"M2Telided0x", b"Content-Type: text/plain\r\n", b"\r\n--b\r\n", b"\r\n--b--\r\n"]
HEADS = [
    b"Subject: x\r\n",
    b"Content-Type: multipart/mixed; boundary=b\r\n",
    b"Content-Type: message/rfc822\r\n",
    b"Content-Type: message/delivery-status\r\n",
    b"Content-Type: multipart/report; report-type=delivery-status; boundary=b\r\n",
    b"Content-Type: text/plain; charset=utf-7\r\nContent-Transfer-Encoding: 8bit\r\n",
    b"Content-Type: text/plain; charset=utf-16\r\n",
]
PART_HEADS = [b"Content-Type: message/delivery-status\r\n", b"Content-Type: message/rfc822\r\n",
              b"Content-Transfer-Encoding: base64\r\n", b"Content-Type: text/plain; charset=utf-7\r\n", b""]


@settings(max_examples=600, deadline=None)
@given(head=st.sampled_from(HEADS), part_head=st.sampled_from(PART_HEADS),
       body=st.lists(st.sampled_from(LINE_ATOMS), max_size=50).map(b"".join),
       separator=st.sampled_from([b"\r\n", b"", b"\r\n--b\r\n"]))
def test_generated_structures_parse_to_the_same_tree(head: bytes, part_head: bytes, body: bytes,
                                                     separator: bytes) -> None:
    """Runs in headers, preambles, epilogues, nested messages and delivery-status blocks, with empty lines, bare
    CR and LF, 8-bit bytes, odd charsets and text that looks like a token."""
    raw = b"From: a@b.example\r\n" + head + separator + part_head + body
    for size in (1, 4, 8):
        parse_elide.MIN_RUN_BYTES = size
        try:
            assert same_tree(raw)
        finally:
            parse_elide.MIN_RUN_BYTES = REAL_MIN_RUN_BYTES


@pytest.mark.usefixtures("short_runs")
def test_a_run_with_an_empty_line_in_a_delivery_status_part_keeps_its_blocks() -> None:
    """In message/delivery-status an empty line ends a block of fields: the run's two halves are two blocks."""
    raw = (b"From: a@b.example\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; x\r\n\r\n"
           b"QUJDREVGR0g=\r\n\r\nQUJDREVGR0g=\r\n")
    assert parse_elide._elide(raw)[1] is not None
    assert same_tree(raw)
    assert len(parse_bytes(raw, new_policy()).get_payload()) == 3


@pytest.mark.usefixtures("short_runs")
def test_a_run_in_an_8bit_part_reads_as_the_parser_decoded_it() -> None:
    """A run in a text that holds 8-bit bytes reads as the stdlib reads it. (Some versions of the parser decode
    such a text by its charset before a boundary, and in UTF-7 a "+" starts an encoded sequence; a token found in
    such a text makes the mail be parsed whole.)"""
    raw = (b"From: a@b.example\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n"
           b"Content-Type: text/plain; charset=utf-7\r\n\r\n\xc3\xa4\r\nQUJD+REVGR0g\r\n--b--\r\n")
    assert parse_elide._elide(raw)[1] is not None
    assert same_tree(raw)


@pytest.mark.usefixtures("short_runs")
def test_hundreds_of_runs_in_one_text_and_in_many_parts_are_all_put_back() -> None:
    """A text may hold hundreds of runs (a hostile mail: runs split by a dash each); each goes back where it was."""
    run = b"QUJDREVGR0g=\r\n" * 2
    one_text = b"From: a@b.example\r\nContent-Type: text/plain\r\n\r\n" + (run + b"-\r\n") * 500
    many_parts = (b"From: a@b.example\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
                  + (b"--b\r\nContent-Type: text/plain\r\n\r\n" + run) * 300 + b"--b--\r\n")
    for raw in (one_text, many_parts):
        runs = parse_elide._elide(raw)[1]
        assert runs is not None and len(runs.texts) >= 300
        assert same_tree(raw)
