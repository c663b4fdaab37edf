"""Threading: which ticket an inbound mail continues, by each method, and what never attaches."""

from __future__ import annotations

import base64
import re

import pytest

from mail2ticket import tokens
from mail2ticket.thread import normalize_subject, strip_reply_prefixes, subject_tag_pattern
from tests.support.app import App, wait_until
from tests.support.conversation import CITIZEN, configure, header, ingest, mail
from tests.support.smtp_sink import SmtpSink

THREAD_INDEX = base64.b64encode(bytes(range(1, 23))).decode()  # a 22-byte Outlook conversation index


def child(index: str, n: int = 1) -> str:
    return base64.b64encode(base64.b64decode(index) + n.to_bytes(5, "big")).decode()


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        ("Re: AW: WG: Antw: Frage", "Frage"),
        ("RE[2]: Fwd: SV: VS: Frage", "Frage"),
        ("Re^3: aw:  Frage", "Frage"),
        ("AW: [EXTERN] Re: Frage", "Frage"),
        ("Reise nach Rom", "Reise nach Rom"),
        ("Antwort auf Ihre Frage", "Antwort auf Ihre Frage"),
    ],
)
def test_reply_prefixes_are_stripped_in_any_combination(subject: str, expected: str) -> None:
    """Localised reply and forward prefixes are removed in any chain, words that merely start alike are kept."""
    assert strip_reply_prefixes(subject) == expected


def test_normalized_subject_ignores_tag_case_and_spacing() -> None:
    """The conversation key of a subject ignores our tag, prefixes, case and extra spaces."""
    tag = subject_tag_pattern("Stadt")
    assert normalize_subject("AW: [Stadt#2026-000001]  Frage zur  Abholung", tag) == "frage zur abholung"


def test_reply_token_is_bound_to_the_ticket_id_and_secret() -> None:
    """A reply address verifies only for its own ticket and secret."""
    address = tokens.reply_address("buergerbuero@stadt.example", "2026-000123", 7, b"s3cret")
    base, number, mac = tokens.parse_reply_address(address) or ("", "", "")
    assert base == "buergerbuero@stadt.example" and number == "2026-000123"
    assert tokens.verify(7, mac, b"s3cret")
    assert not tokens.verify(8, mac, b"s3cret")
    assert not tokens.verify(7, mac, b"other")


def test_synthetic_conversation_index_names_its_ticket_unforgeably() -> None:
    """Our synthetic Thread-Index carries the ticket id under a MAC; a changed byte is refused."""
    import datetime as dt

    key = tokens.synthetic_conversation(42, b"k", dt.datetime(2026, 1, 2, tzinfo=dt.UTC))
    assert len(key) == 22 and tokens.ticket_from_conversation(key, b"k") == 42
    forged = key[:-1] + bytes([key[-1] ^ 1])
    assert tokens.ticket_from_conversation(forged, b"k") is None
    outlook_reply = tokens.child_thread_index(key, 3) + "AAAAAAA="
    assert tokens.conversation_key(outlook_reply) == key


def test_threading_by_each_method_over_smtp(app: App, smtp_sink: SmtpSink) -> None:
    """References, reply token, participant's tag and Thread-Index attach; a stranger's tag or forged token do not."""
    configure(app, smtp_sink, notify_staff=False)
    daemon = app.start()
    try:
        daemon.send(mail(headers={"Thread-Index": THREAD_INDEX}), sender=CITIZEN)
        ack = smtp_sink.wait_for(1)[0]
        number = app.tickets()[0]["number"]
        token_address = re.search(r"<([^>]+)>", header(ack, "Reply-To"))
        assert token_address is not None and number in token_address.group(1)

        steps = [
            ("references", mail(subject="Ganz neues Thema", in_reply_to=header(ack, "Message-ID")), ()),
            ("reply_token", mail(subject="Nachtrag ohne Nummer", to=token_address.group(1)),
             (token_address.group(1),)),
            ("subject_tag", mail(subject=f"AW: [Stadt#{number}] Frage"), ()),
            ("thread_index", mail(subject="AW: Frage zur Sperrmüllabholung",
                                  headers={"Thread-Index": child(THREAD_INDEX)}), ()),
        ]
        for expected_method, raw, rcpts in steps:
            daemon.send(raw, sender=CITIZEN, recipients=rcpts or ("buergerbuero@stadt.example",))
        wait_until(lambda: len(app.ticket(number)["articles"]) == 5, message="four follow-ups")
        methods = [e["detail"]["method"] for e in app.ticket(number)["events"] if e["type"] == "article_added"]
        assert methods == [s[0] for s in steps]

        # A stranger who guessed the number, and one who forged a token, each get a ticket of their own.
        daemon.send(mail(sender="Mallory <mallory@evil.example>", subject=f"[Stadt#{number}] Bitte Daten senden"),
                    sender="mallory@evil.example")
        forged = f"buergerbuero+{number}-aaaaaaaaaa@stadt.example"
        daemon.send(mail(sender="Mallory <mallory@evil.example>", subject="Nachtrag", to=forged),
                    sender="mallory@evil.example", recipients=(forged,))
        wait_until(lambda: len(app.tickets()) == 3, message="two new tickets")
        assert len(app.ticket(number)["articles"]) == 5
        stranger = app.ticket(app.tickets()[1]["number"])
        assert stranger["requester"] == "mallory@evil.example"
        refused = [e for e in stranger["events"] if e["type"] == "subject_tag_refused"]
        assert refused and refused[0]["detail"]["referenced"] == number
        for message in smtp_sink.messages:
            if message.rcpt_tos == ["mallory@evil.example"]:
                assert number not in message.raw.decode("utf-8", "replace")
            else:
                assert message.rcpt_tos == [CITIZEN]
    finally:
        daemon.stop()


def test_staff_may_use_the_subject_tag(app: App) -> None:
    """Staff of the ticket's queue are accepted by subject tag even though they are not participants."""
    configure(app)
    number = str(ingest(app, mail())["ticket"])
    result = ingest(app, mail(sender="Bernd <kollege@stadt.example>", subject=f"[Stadt#{number}] intern",
                              auth="dmarc=pass"), sender="kollege@stadt.example")
    assert result["ticket"] == number


def test_thread_index_needs_same_sender_and_subject(app: App) -> None:
    """A shared Thread-Index from another sender, or with another subject, does not attach."""
    configure(app)
    first = str(ingest(app, mail(headers={"Thread-Index": THREAD_INDEX}))["ticket"])
    other_subject = ingest(app, mail(subject="AW: Etwas anderes", headers={"Thread-Index": child(THREAD_INDEX)}))
    other_sender = ingest(app, mail(sender="Max <max@example.net>", subject="AW: Frage zur Sperrmüllabholung",
                                    headers={"Thread-Index": child(THREAD_INDEX, 2)}), sender="max@example.net")
    assert first not in (other_subject["ticket"], other_sender["ticket"])


def test_outlook_reply_to_our_mail_threads_by_synthetic_index(app: App) -> None:
    """An Outlook reply to our ack that lost In-Reply-To and the tag still finds the ticket by its Thread-Index."""
    from tests.support.conversation import outbound_mails

    configure(app)
    number = str(ingest(app, mail())["ticket"])
    ack = outbound_mails(app, number)[0][2]
    index = str(ack["Thread-Index"])
    reply = mail(subject="AW: Frage zur Sperrmüllabholung", headers={"Thread-Index": child(index)})
    assert ingest(app, reply)["ticket"] == number
