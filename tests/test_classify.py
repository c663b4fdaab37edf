"""Tests for the classify stage: human / auto-reply / bounce / list, the suppress flag and bounce details."""

from __future__ import annotations

import email
import email.policy
import json
from email.message import EmailMessage

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mail2ticket import _bounce
from mail2ticket.classify import DEFAULT_NOREPLY_PATTERNS, Classification, classify
from tests.support.corpus import corpus_dir, iter_messages, load_message

KINDS = {"human", "auto-reply", "bounce", "list"}


def parse(raw: str | bytes) -> EmailMessage:
    data = raw.encode("utf-8") if isinstance(raw, str) else raw
    msg = email.message_from_bytes(data.replace(b"\r\n", b"\n"), policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def mail(*headers: str, body: str = "Sehr geehrte Damen und Herren,\nbitte um Rückruf.\n") -> EmailMessage:
    base = [
        "From: Erika Mustermann <erika@example.org>",
        "To: buergerbuero@stadt.example",
        "Message-ID: <m1@example.org>",
        "Date: Mon, 6 May 2024 10:00:00 +0200",
    ]
    names = {h.split(":", 1)[0].lower() for h in headers}
    lines = [*headers, *(h for h in base if h.split(":", 1)[0].lower() not in names)]
    return parse("\n".join(lines) + "\nMIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\n\n" + body)


def human_sender(msg: EmailMessage) -> Classification:
    return classify(msg, envelope_from="erika@example.org", envelope_to=["buergerbuero@stadt.example"])


DSN = """\
From: Mail Delivery System <MAILER-DAEMON@mx.stadt.example>
To: bounces+17-a1b2c3@stadt.example
Subject: Undelivered Mail Returned to Sender
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="B"

--B
Content-Type: text/plain

The mail system could not deliver your message.

--B
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.stadt.example

Final-Recipient: rfc822; Max.Muster@Example.NET
Original-Recipient: rfc822;max.muster@example.net
Action: {action}
Status: {status}
Diagnostic-Code: smtp; 550 5.1.1 user unknown

--B
Content-Type: {original_type}

From: buergerbuero@stadt.example
To: max.muster@example.net
Message-ID: <ack-4711@stadt.example>
Subject: Ihre Anfrage

--B--
"""


def dsn(action: str = "failed", status: str = "5.1.1", original_type: str = "message/rfc822") -> EmailMessage:
    return parse(DSN.format(action=action, status=status, original_type=original_type))


# --- human and list --------------------------------------------------------------------------


def test_plain_human_mail() -> None:
    """An ordinary citizen's mail is human, carries no reasons and may be acknowledged."""
    result = human_sender(mail("Subject: Frage zum Bauantrag"))
    assert result == Classification("human", (), False)


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        ("List-Id: Stadtrat <stadtrat.lists.example>", "list_id"),
        ("List-Unsubscribe: <mailto:unsub@lists.example>", "list_unsubscribe"),
        ("List-Post: <mailto:rat@lists.example>", "list_post"),
        ("Precedence: bulk", "precedence:bulk"),
        ("Precedence: list", "precedence:list"),
        ("Precedence: junk", "precedence:junk"),
    ],
)
def test_list_and_bulk_signals(header: str, reason: str) -> None:
    """Mailing-list and bulk mail is kind "list" and never acknowledged."""
    result = human_sender(mail(header, "Subject: Newsletter Mai"))
    assert result.kind == "list"
    assert reason in result.reasons
    assert result.suppress_autoreply


@pytest.mark.parametrize("value", ["All", "OOF", "AutoReply", "DR, NDR, OOF"])
def test_x_auto_response_suppress_only_suppresses(value: str) -> None:
    """X-Auto-Response-Suppress asks us not to answer but the mail stays a human ticket."""
    result = human_sender(mail(f"X-Auto-Response-Suppress: {value}", "Subject: Antrag"))
    assert result.kind == "human"
    assert result.suppress_autoreply
    assert any(r.startswith("x_auto_response_suppress:") for r in result.reasons)


def test_x_auto_response_suppress_for_receipts_only_allows_ack() -> None:
    """Suppressing only read/delivery receipts (RN, NRN, DR, NDR) does not block our acknowledgement."""
    result = human_sender(mail("X-Auto-Response-Suppress: DR, NDR, RN, NRN", "Subject: Antrag"))
    assert (result.kind, result.suppress_autoreply) == ("human", False)


@pytest.mark.parametrize(
    "sender",
    [
        "noreply@portal.example",
        "No-Reply@bund.example",
        "do-not-reply@x.example",
        "nicht-antworten@amt.example",
        "news-bounces@lists.example",
    ],
)
def test_noreply_sender_suppresses(sender: str) -> None:
    """A no-reply style sender still makes a ticket, but gets no acknowledgement."""
    result = human_sender(mail(f"From: Portal <{sender}>", "Subject: Ihr Bescheid"))
    assert result.kind == "human"
    assert result.suppress_autoreply
    assert "noreply_sender" in result.reasons


def test_noreply_patterns_are_configurable() -> None:
    """Operators can pass their own no-reply globs; the defaults then no longer apply."""
    msg = mail("From: system@fachverfahren.example", "Subject: Export")
    assert classify(msg, "system@fachverfahren.example", noreply_patterns=("system@*",)).suppress_autoreply
    assert not classify(msg, "system@fachverfahren.example").suppress_autoreply
    assert "noreply@*" in DEFAULT_NOREPLY_PATTERNS


def test_exchange_inbox_rules_loop_alone_only_suppresses() -> None:
    """A mail forwarded by an Exchange inbox rule stays human but is not acknowledged."""
    result = human_sender(mail("X-MS-Exchange-Inbox-Rules-Loop: amt@stadt.example", "Subject: WG: Antrag"))
    assert (result.kind, result.suppress_autoreply) == ("human", True)
    assert "exchange_inbox_rules_loop" in result.reasons


# --- auto-replies ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        (["Auto-Submitted: auto-replied"], "auto_submitted:auto-replied"),
        (["Auto-Submitted: auto-generated (failure)"], "auto_submitted:auto-generated"),
        (["Auto-Submitted: auto-notified; owner-email=x@y.example"], "auto_submitted:auto-notified"),
        (["X-Autoreply: yes"], "x_autoreply"),
        (["X-Autorespond: Urlaub"], "x_autorespond"),
        (["X-Autogenerated: Reply"], "x_autogenerated:reply"),
        (["X-POST-MessageClass: 9; Autoresponder"], "x_post_messageclass"),
        (["Precedence: auto_reply"], "precedence:auto_reply"),
        (["X-Precedence: auto_reply"], "x_precedence:auto_reply"),
        (["X-MS-Exchange-Generated-Message-Source: Mailbox Rules Agent"], "exchange_oof"),
        (
            ["X-MS-Exchange-Inbox-Rules-Loop: a@stadt.example", "X-Auto-Response-Suppress: All"],
            "exchange_oof",
        ),
        (["X-MS-Exchange-Generated-Message-Source: Transport Rule Agent"], "exchange_generated"),
    ],
)
def test_auto_reply_headers(headers: list[str], reason: str) -> None:
    """Each standard or vendor auto-reply marker makes the mail an auto-reply that is never answered."""
    result = human_sender(mail(*headers, "Subject: Ihre Anfrage", "In-Reply-To: <ack-1@stadt.example>"))
    assert result.kind == "auto-reply"
    assert reason in result.reasons
    assert result.suppress_autoreply
    assert result.original_message_id == "<ack-1@stadt.example>"


def test_auto_submitted_no_is_human() -> None:
    """``Auto-Submitted: no`` explicitly marks a human-written mail."""
    assert human_sender(mail("Auto-Submitted: no", "Subject: Antrag")).kind == "human"


@pytest.mark.parametrize(
    ("subject", "reason"),
    [
        ("=?iso-8859-1?Q?Abwesenheitsnotiz:_Ihre_Anfrage_zum_Bauantrag?=", "subject:abwesenheitsnotiz"),
        ("=?utf-8?B?QXV0b21hdGlzY2hlIEFudHdvcnQ6IElocmUgQW5mcmFnZQ==?=", "subject:automatische_antwort"),
        ("=?utf-8?Q?Autom=2E_Antwort=3A_Stra=C3=9Fensperrung?=", "subject:autom_antwort"),
        ("Abwesend: bis 12.05.", "subject:abwesend"),
        ("Out of Office: Ihre Anfrage", "subject:out_of_office"),
        ("Automatic reply: Your request", "subject:automatic_reply"),
        ("Auto reply: Nyaan", "subject:auto_reply"),
    ],
)
def test_auto_reply_subjects(subject: str, reason: str) -> None:
    """Out-of-office subjects in German and English (also RFC 2047 encoded) mark auto-replies."""
    result = human_sender(mail(f"Subject: {subject}"))
    assert result.kind == "auto-reply"
    assert reason in result.reasons


@pytest.mark.parametrize(
    "subject",
    [
        "Re: Frage zu Abwesenheitsnotiz in Ihrem Bescheid",
        "AW: Automatische Antwort: Ihre Anfrage",
        "Abwesenheitsnotizen im Rathaus einrichten",
        "Wie richte ich eine automatische Antwort ein?",
    ],
)
def test_subject_heuristics_only_at_start(subject: str) -> None:
    """Out-of-office words inside a citizen's subject do not turn the mail into an auto-reply."""
    assert human_sender(mail(f"Subject: {subject}")).kind == "human"


def test_mdn_read_receipt_is_auto_reply() -> None:
    """A read receipt (MDN) is an auto-reply pointing at the mail that was read."""
    msg = parse(
        "From: erika@example.org\nTo: buergerbuero@stadt.example\nSubject: Gelesen: Ihr Bescheid\n"
        "MIME-Version: 1.0\n"
        'Content-Type: multipart/report; report-type=disposition-notification; boundary="R"\n\n'
        "--R\nContent-Type: text/plain\n\nIhre Nachricht wurde gelesen.\n\n"
        "--R\nContent-Type: message/disposition-notification\n\n"
        "Final-Recipient: rfc822;erika@example.org\nOriginal-Message-ID: <bescheid-9@stadt.example>\n"
        "Disposition: manual-action/MDN-sent-manually; displayed\n\n--R--\n"
    )
    result = classify(msg, envelope_from="")
    assert result.kind == "auto-reply"
    assert "mdn" in result.reasons
    assert result.original_message_id == "<bescheid-9@stadt.example>"


def test_null_sender_auto_reply_stays_auto_reply() -> None:
    """An RFC 3834 auto-reply sent with the null sender is an auto-reply, not a bounce."""
    msg = mail("Auto-Submitted: auto-replied", "Subject: Urlaub", "References: <a@x> <ack-2@stadt.example>")
    result = classify(msg, envelope_from="")
    assert result.kind == "auto-reply"
    assert "null_sender" in result.reasons
    assert result.original_message_id == "<ack-2@stadt.example>"


# --- bounces ---------------------------------------------------------------------------------


def test_dsn_bounce_details() -> None:
    """A DSN names the failed recipient, a permanent failure and the Message-ID of our mail."""
    result = classify(dsn(), envelope_from="", envelope_to=["bounces+17-a1b2c3@stadt.example"])
    assert result.kind == "bounce"
    assert result.reasons[0] == "dsn_report"
    assert result.failed_recipients == ("max.muster@example.net",)
    assert result.permanent_failure is True
    assert result.original_message_id == "<ack-4711@stadt.example>"
    assert result.verp_recipient == "bounces+17-a1b2c3@stadt.example"
    assert result.suppress_autoreply


def test_delayed_dsn_is_temporary() -> None:
    """A "delayed" DSN with only the original headers is a temporary failure."""
    result = classify(dsn("delayed", "4.2.2", "text/rfc822-headers"), envelope_from="")
    assert result.kind == "bounce"
    assert result.permanent_failure is False
    assert result.failed_recipients == ("max.muster@example.net",)
    assert result.original_message_id == "<ack-4711@stadt.example>"


def test_success_dsn_is_bounce_without_failures() -> None:
    """A delivery-success report is still a report (no ticket), but names no failed recipient."""
    result = classify(dsn("delivered", "2.0.0"), envelope_from="")
    assert (result.kind, result.failed_recipients, result.permanent_failure) == ("bounce", (), None)


def test_bounce_beats_auto_reply() -> None:
    """A DSN carrying Auto-Submitted is a bounce: bounce outranks auto-reply."""
    result = classify(dsn(), envelope_from=None)
    assert result.kind == "bounce"
    assert "auto_submitted:auto-replied" in result.reasons


def test_auto_reply_beats_list() -> None:
    """An auto-reply from a list-managed address is an auto-reply: auto-reply outranks list."""
    assert human_sender(mail("Auto-Submitted: auto-replied", "List-Id: <x.example>")).kind == "auto-reply"


def test_plain_text_mailer_daemon_bounce() -> None:
    """A non-DSN bounce from MAILER-DAEMON is found, with the recipient named in its text."""
    msg = mail(
        "From: MAILER-DAEMON@mx.example.net",
        "Subject: failure notice",
        body="Hi. This is the qmail-send program at mx.example.net.\n"
        "I'm afraid I wasn't able to deliver your message to the following addresses.\n"
        "This is a permanent error; I've given up. Sorry it didn't work out.\n\n"
        "<max.muster@example.net>:\nSorry, no mailbox here by that name. (#5.1.1)\n\n"
        "--- Below this line is a copy of the message.\n\nMessage-ID: <ack-5@stadt.example>\n"
        "Subject: Ihre Anfrage\n",
    )
    result = classify(msg, envelope_from="")
    assert result.kind == "bounce"
    assert "max.muster@example.net" in result.failed_recipients
    assert result.original_message_id == "<ack-5@stadt.example>"


@pytest.mark.parametrize("envelope_from", ["", "<>"])
def test_null_sender_alone_is_bounce(envelope_from: str) -> None:
    """Mail from the null sender without any auto-reply marker is treated as a bounce."""
    result = classify(mail("Subject: Notification"), envelope_from=envelope_from)
    assert (result.kind, result.reasons) == ("bounce", ("null_sender",))


def test_return_path_used_when_envelope_unknown() -> None:
    """For IMAP-fetched mail the Return-Path header stands in for the SMTP envelope sender."""
    assert classify(mail("Return-Path: <>", "Subject: x"), envelope_from=None).kind == "bounce"
    assert (
        classify(mail("Return-Path: <erika@example.org>", "Subject: x"), envelope_from=None).kind == "human"
    )


def test_verp_found_in_delivered_to_for_imap_mail() -> None:
    """Without an SMTP envelope, our VERP return address is read from Delivered-To."""
    result = classify(dsn(), envelope_from=None)
    assert result.verp_recipient == "bounces+17-a1b2c3@stadt.example"
    msg = mail("Delivered-To: Bounces+99-ffee@stadt.example", "Subject: x")
    assert classify(msg, None).verp_recipient == "Bounces+99-ffee@stadt.example"


def test_forwarded_bounce_attachment_stays_human() -> None:
    """A citizen forwarding a bounce as an attachment gets a ticket, not a bounce classification."""
    inner = DSN.format(action="failed", status="5.1.1", original_type="message/rfc822")
    msg = parse(
        "From: erika@example.org\nTo: buergerbuero@stadt.example\nSubject: Fwd: Ihre Mail kam zurück\n"
        'MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary="OUT"\n\n'
        "--OUT\nContent-Type: text/plain\n\nMeine Mail an Sie kam zurück, siehe Anhang.\n\n"
        f"--OUT\nContent-Type: message/rfc822\n\n{inner}\n--OUT--\n"
    )
    result = human_sender(msg)
    assert (result.kind, result.failed_recipients) == ("human", ())


# --- robustness ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "from_header",
    ["From: unlisted-recipients:; (no To-header on input)", "From: Erika <erika@[192.0.2.1"],
)
def test_broken_from_header_does_not_raise(from_header: str) -> None:
    """A From header the stdlib cannot render is reported as header_error instead of crashing."""
    result = human_sender(mail(from_header, "Subject: Antrag"))
    assert result.kind == "human"
    assert "header_error:from" in result.reasons


def test_broken_subject_encoding_is_tolerated() -> None:
    """A subject in an unknown charset is classified from its raw text."""
    result = human_sender(mail("Subject: =?x-bogus?q?Abwesenheitsnotiz?= test"))
    assert result.kind in KINDS


def test_internal_error_becomes_safe_human(monkeypatch: pytest.MonkeyPatch) -> None:
    """If classification itself fails, the mail still becomes a ticket and nothing is sent."""

    def boom(msg: object) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(_bounce, "iter_parts", boom)
    result = human_sender(mail("Subject: Antrag"))
    assert result == Classification("human", ("classify_error:RuntimeError",), True)


_HEADER_NAMES = st.sampled_from(
    [
        "From",
        "To",
        "Subject",
        "Return-Path",
        "Auto-Submitted",
        "Content-Type",
        "List-Id",
        "Precedence",
        "X-Auto-Response-Suppress",
        "Delivered-To",
        "In-Reply-To",
        "References",
        "X-Autogenerated",
    ]
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    headers=st.lists(st.tuples(_HEADER_NAMES, st.binary(max_size=60)), max_size=8),
    body=st.binary(max_size=200),
    envelope=st.one_of(st.none(), st.text(max_size=20)),
)
def test_classify_never_raises(headers: list[tuple[str, bytes]], body: bytes, envelope: str | None) -> None:
    """Arbitrary header bytes never make classify raise; it always returns a known kind."""
    raw = b"".join(
        name.encode() + b": " + value.replace(b"\n", b" ").replace(b"\r", b" ") + b"\n"
        for name, value in headers
    )
    try:
        msg = email.message_from_bytes(raw + b"\n" + body, policy=email.policy.default)
    except Exception:  # noqa: BLE001 - the daemon quarantines unparsable mail before classify
        return
    result = classify(msg, envelope)
    assert result.kind in KINDS
    assert not any(r.startswith("classify_error") for r in result.reasons)


# --- real-world corpora ----------------------------------------------------------------------

# maildir/bsd files that are not bounces of our mail (identified by reading them):
SISIMAI_NON_BOUNCES = {
    *(f"rfc3834-0{i}.eml" for i in range(1, 7)),  # RFC 3834 auto-replies
    "arf-22.eml", "arf-23.eml", "arf-24.eml",  # free-text abuse complaints, not ARF reports
    "arf-26.eml",  # an Auto-Submitted "unsubscribe" request
    *(f"lhost-amazonses-{i:02d}.eml" for i in range(9, 14)),  # AWS SNS JSON notifications, not DSNs
    "lhost-fml-02.eml", "lhost-fml-03.eml",  # list-manager notices ("not member", "loop alert")
    "lhost-kddi-01.eml",  # Japanese-only error notice from a no-reply address
    "lhost-sendmail-14.eml",  # a person forwarding a bounce ("Fwd: Returned mail")
}  # fmt: skip


@pytest.mark.corpus
def test_sisimai_rfc3834_are_auto_replies() -> None:
    """Every RFC 3834 auto-reply sample (LF, CRLF and bare-CR copies) is an auto-reply."""
    maildir = corpus_dir("sisimai-set-of-emails", "maildir")
    files = sorted(maildir.glob("*/rfc3834-*.eml"))
    assert len(files) >= 6
    for path in files:
        result = classify(load_message(path), envelope_from=None)
        assert result.kind == "auto-reply", (path.name, result.reasons)


@pytest.mark.corpus
def test_sisimai_bsd_bounces() -> None:
    """Every sisimai bounce sample is a bounce except the identified non-bounces; most name a recipient."""
    bsd = corpus_dir("sisimai-set-of-emails", "maildir", "bsd")
    wrong, with_recipients, bounces = [], 0, 0
    for path in sorted(bsd.glob("*.eml")):
        result = classify(load_message(path), envelope_from=None)
        if (result.kind == "bounce") == (path.name in SISIMAI_NON_BOUNCES):
            wrong.append((path.name, result.kind, result.reasons))
        if result.kind == "bounce":
            bounces += 1
            with_recipients += bool(result.failed_recipients)
    assert wrong == []
    assert with_recipients / bounces >= 0.75  # measured 495 / 610 = 81 %


@pytest.mark.corpus
def test_flufl_expected_failed_recipients() -> None:
    """flufl.bounce's oracle cases are bounces naming the expected recipients (>= 95 %, measured 97.4 %)."""
    base = corpus_dir("flufl-bounce")
    cases = json.loads((base / "expected.json").read_text())["cases"]
    hits, permanence_agrees, misses = 0, 0, []
    for case in cases:
        result = classify(load_message(base / case["file"]), envelope_from=None)
        expected = {address.lower() for address in case["failed_addresses"]}
        if result.kind == "bounce" and expected <= set(result.failed_recipients):
            hits += 1
        else:
            misses.append(case["file"])
        want_permanent = case["kind"] == "permanent"
        permanence_agrees += result.permanent_failure is want_permanent
    print(f"flufl-bounce: {hits}/{len(cases)} hit; permanence agrees {permanence_agrees}; misses {misses}")
    assert hits / len(cases) >= 0.95
    assert permanence_agrees / len(cases) >= 0.9  # measured 112 / 116


@pytest.mark.corpus
def test_mimekit_reports() -> None:
    """MimeKit's DSN (with a To header the stdlib cannot render) and MDN samples are classified."""
    messages = corpus_dir("mimekit", "messages")
    result = classify(load_message(messages / "delivery-status.txt"), envelope_from=None)
    assert result.kind == "bounce"
    assert result.failed_recipients
    mdn = classify(load_message(messages / "disposition-notification.txt"), envelope_from=None)
    assert mdn.kind == "auto-reply"
    assert mdn.original_message_id is not None


@pytest.mark.corpus
@pytest.mark.parametrize("folder", ["django-helpdesk", "reply-quote-fixtures"])
def test_person_written_corpora_are_not_automated(folder: str) -> None:
    """Mail written by people (helpdesk fixtures, reply samples) is never a bounce or auto-reply."""
    for path in iter_messages(corpus_dir(folder)):
        result = classify(load_message(path), envelope_from=None)
        assert result.kind in ("human", "list"), (path.name, result.reasons)


@pytest.mark.corpus
@pytest.mark.parametrize(
    "folder",
    [
        "cpython-test-email",
        "django-helpdesk",
        "flufl-bounce",
        "james-mime4j",
        "mimekit",
        "otobo-samples",
        "reply-quote-fixtures",
        "sisimai-set-of-emails",
    ],
)
def test_every_corpus_message_classifies(folder: str) -> None:
    """Every parseable corpus file classifies without raising and without an internal error."""
    count = 0
    for path in iter_messages(corpus_dir(folder)):
        try:
            msg = load_message(path)
        except Exception:  # noqa: BLE001, S112 - the daemon quarantines what the parser rejects
            continue
        result = classify(msg, envelope_from=None)
        assert result.kind in KINDS
        assert not any(r.startswith("classify_error") for r in result.reasons), (path, result.reasons)
        count += 1
    assert count > 0
