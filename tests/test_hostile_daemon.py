"""Hostile mail against the running daemon (T31, T35): bombs are parked, injection cannot add headers."""

from __future__ import annotations

import email
import email.policy
import smtplib
from collections.abc import Iterator

import pytest
from sqlalchemy import select

from mail2ticket.config.model import SmtpOutConfig
from mail2ticket.db.engine import make_engine, make_sessionmaker, unit_of_work
from mail2ticket.db.models import InboundMessage
from mail2ticket.outbox.deliver import PermanentDeliveryError, SmtpDeliverer
from tests.support.app import App, wait_until
from tests.support.mails import citizen_mail
from tests.support.smtp_sink import SmtpSink
from tests.test_hostile_parse import bombs
from tests.test_loops import Installation


@pytest.fixture
def inst(app: App) -> Iterator[Installation]:
    installation = Installation(app)
    yield installation
    installation.close()


def states(app: App) -> list[tuple[str, str | None]]:
    engine = make_engine(app.database_url)
    try:
        with unit_of_work(make_sessionmaker(engine)) as session:
            rows = session.execute(select(InboundMessage.state, InboundMessage.reason).order_by(InboundMessage.id))
            return [(str(s), r) for s, r in rows]
    finally:
        engine.dispose()


@pytest.mark.slow
def test_structure_bombs_are_quarantined_while_the_daemon_keeps_serving(app: App) -> None:
    """Every T35 bomb sent over SMTP is refused (5xx) or quarantined with a reason; a normal mail after them is a ticket."""
    app.set("limits", parse_timeout=2)
    daemon = app.start()
    try:
        accepted = 0
        for raw in bombs().values():
            try:
                daemon.send(raw.replace(b"\n", b"\r\n"))  # SMTP lines end in CRLF
                accepted += 1
            except smtplib.SMTPException as exc:  # e.g. "line too long": refused as framing, the relay keeps it
                assert getattr(exc, "smtp_code", 500) >= 500
        assert accepted >= 4  # the bombs with short lines pass SMTP framing and reach the parse budget
        daemon.send(citizen_mail(subject="Nach den Bomben"))
        wait_until(lambda: len(states(app)) == accepted + 1 and all(s != "new" for s, _ in states(app)),
                   timeout=120, message="all messages processed")
        result = states(app)
        assert all(state == "quarantined" and reason for state, reason in result[:-1])
        assert result[-1] == ("done", None)
        assert [t["subject"] for t in app.tickets()] == ["Nach den Bomben"]
        assert daemon.proc.poll() is None
    finally:
        assert daemon.stop() == 0


def test_subject_injection_cannot_add_headers_to_the_ack(inst: Installation) -> None:
    """CR/LF, encoded CRLF, NUL, U+2028 and an 8 kB subject from a mail never add a header to our ack (T31)."""
    raw_subjects = [
        b"Subject: =?utf-8?q?Antrag=0D=0ABcc:_evil@x.example?=",
        b"Subject: =?utf-8?b?" + __import__("base64").b64encode("x\r\nTo: evil@x.example\u2028Bcc: e@x".encode())
        + b"?=",
        b"Subject: Antrag\r\n Bcc: folded@x.example",
        b"Subject: " + b"A" * 8192,
    ]
    for i, subject in enumerate(raw_subjects):
        inst.ingest(
            f"From: =?utf-8?q?Eve=0D=0ACc:_x@y.example?= <eve{i}@example.org>\r\n".encode()
            + b"To: buergerbuero@stadt.example\r\n" + subject + b"\r\n"
            + f"Message-ID: <inj{i}@example.org>\r\n\r\nBitte bearbeiten.\r\n".encode()
        )
    acks = inst.send_outbox()
    assert len(acks) == len(raw_subjects)
    expected = {"From", "To", "Subject", "Date", "Message-ID", "In-Reply-To", "References", "Content-Language",
                "Auto-Submitted", "X-Auto-Response-Suppress", "Precedence", "X-Mail2Ticket-Loop", "MIME-Version",
                "Content-Type", "Content-Transfer-Encoding", "Reply-To", "Thread-Index"}
    for raw in acks:
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        names = set(msg.keys())
        assert names <= expected, names - expected
        assert "Bcc" not in names and "Cc" not in names
        assert len(msg.get_all("To") or []) == 1
        assert str(msg["To"]).endswith("@example.org>") or str(msg["To"]).endswith("@example.org")
        assert all(len(line) <= 998 for line in raw.split(b"\r\n"))


@pytest.mark.parametrize("bad", ["victim@example.org\r\nRCPT TO:<evil@x.example>", "a@b.example\nDATA",
                                 "a@b.example\rx", "a\x00@b.example"])
def test_envelope_with_cr_lf_is_refused_before_smtplib(smtp_sink: SmtpSink, bad: str) -> None:
    """An envelope address with CR, LF or NUL fails permanently and nothing reaches the relay (T31)."""
    deliverer = SmtpDeliverer(SmtpOutConfig(delivery="smtp", host=smtp_sink.host, port=smtp_sink.port), None)
    with pytest.raises(PermanentDeliveryError, match="unsafe envelope"):
        deliverer.deliver("", bad, b"Subject: x\r\n\r\nx\r\n", "<m@stadt.example>")
    with pytest.raises(PermanentDeliveryError, match="unsafe envelope"):
        deliverer.deliver(bad, "ok@example.org", b"Subject: x\r\n\r\nx\r\n", "<m@stadt.example>")
    deliverer.deliver("", "ok@example.org", b"Subject: x\r\n\r\nx\r\n", "<m@stadt.example>")
    assert [m.rcpt_tos for m in smtp_sink.messages] == [["ok@example.org"]]
