"""The SMTP listener as the relay sees it: real daemon subprocess, real smtplib client, real database."""

from __future__ import annotations

import email
import email.policy
import smtplib
import sqlite3
import threading

import pytest

from tests.support.app import App, wait_until
from tests.support.mails import citizen_mail
from tests.support.smtp_sink import SmtpSink


def test_unknown_recipient_is_refused_at_rcpt_with_550(app: App) -> None:
    """Mail for an address that is no queue is refused at RCPT, so the relay bounces it at once."""
    daemon = app.start()
    try:
        with daemon.smtp() as client:
            client.ehlo()
            client.mail("erika@example.org")
            code, text = client.rcpt("nobody@stadt.example")
            assert code == 550
            assert text.startswith(b"5.1.1")
            code, _ = client.rcpt("buergerbuero@stadt.example")
            assert code == 250
    finally:
        assert daemon.stop() == 0


def test_oversize_message_is_refused_with_552(app: App) -> None:
    """A message over the configured size limit is refused with 552, declared in MAIL or discovered in DATA."""
    app.set("smtp_in", max_message_size=50_000)
    daemon = app.start()
    try:
        big = citizen_mail(body="x" * 80 + "\n" * 1 + ("Zeile mit Inhalt\n" * 5000))
        with daemon.smtp() as client:
            client.ehlo()
            code, _ = client.mail("erika@example.org", ["SIZE=900000"])
            assert code == 552
        with daemon.smtp() as client:
            client.ehlo()
            assert client.mail("erika@example.org")[0] == 250  # no SIZE declared
            assert client.rcpt("buergerbuero@stadt.example")[0] == 250
            code, _ = client.data(big)
            assert code == 552
        assert app.tickets() == []
    finally:
        daemon.stop()


def test_mail_becomes_one_ticket_and_an_ack_file(app: App) -> None:
    """One mail over SMTP makes exactly one ticket and one German acknowledgement in the outbox folder."""
    daemon = app.start()
    try:
        daemon.send(citizen_mail(subject="Frage zur Hundesteuer"))
        wait_until(lambda: app.outbox_files(), message="ack file")
        tickets = app.tickets()
        assert len(tickets) == 1
        assert tickets[0]["queue"] == "buergerbuero"
        assert tickets[0]["requester"] == "erika@example.org"
        ack = email.message_from_bytes(app.outbox_files()[0].read_bytes(), policy=email.policy.default)
        assert f"[Stadt#{tickets[0]['number']}]" in ack["Subject"]
        assert "Eingangsbestätigung" in ack["Subject"]
        assert ack["Auto-Submitted"] == "auto-replied"
        assert ack["To"].addresses[0].addr_spec == "erika@example.org"
        assert "Vorgangsnummer" in ack.get_body(("plain",)).get_content()
    finally:
        assert daemon.stop() == 0


def test_ack_arrives_at_a_real_smtp_sink(app: App, smtp_sink: SmtpSink) -> None:
    """With delivery = "smtp" the acknowledgement reaches the smarthost with the ticket tag and our loop header."""
    app.set("smtp_out", delivery="smtp", host=smtp_sink.host, port=smtp_sink.port)
    daemon = app.start()
    try:
        daemon.send(citizen_mail(message_id="<sink-1@example.org>"))
        [delivered] = smtp_sink.wait_for(1)
        assert delivered.rcpt_tos == ["erika@example.org"]
        msg = delivered.msg
        assert msg["In-Reply-To"] == "<sink-1@example.org>"
        assert msg["X-Mail2Ticket-Loop"] == "stadt.example"
        assert msg["Message-ID"].endswith("@stadt.example>")
    finally:
        daemon.stop()


def test_redelivery_makes_no_second_ticket_or_ack(app: App) -> None:
    """The relay re-sending the same message (same Message-ID and bytes) creates no second ticket and no second ack."""
    daemon = app.start()
    try:
        raw = citizen_mail(message_id="<twice@example.org>")
        daemon.send(raw)
        wait_until(lambda: app.outbox_files(), message="first ack")
        daemon.send(b"Received: from relay2.example (relay2 [192.0.2.1]) by mx; Tue, 24 Nov 2026 10:00:00 +0100\r\n"
                    + raw)
        daemon.send(raw)
        wait_until(lambda: "smtp_received" in daemon.log() and daemon.log().count('"duplicate": true') >= 2,
                   message="duplicates recorded")
    finally:
        daemon.stop()
    assert len(app.tickets()) == 1
    assert len(app.outbox_files()) == 1


def test_reply_to_the_ack_becomes_second_article(app: App) -> None:
    """A citizen's reply with In-Reply-To set to the ack's Message-ID is appended to the same ticket, without a new ack."""
    daemon = app.start()
    try:
        daemon.send(citizen_mail(message_id="<q1@example.org>"))
        [ack_file] = wait_until(lambda: app.outbox_files(), message="ack")
        ack = email.message_from_bytes(ack_file.read_bytes(), policy=email.policy.default)
        reply = citizen_mail(subject="Re: " + str(ack["Subject"]), body="Danke, noch eine Frage: gilt das auch samstags?\n",
                             headers={"In-Reply-To": ack["Message-ID"], "References": f"<q1@example.org> {ack['Message-ID']}"})
        daemon.send(reply)
        number = app.tickets()[0]["number"]
        wait_until(lambda: app.ticket(number)["articles"] and len(app.ticket(number)["articles"]) == 2,
                   message="second article")
    finally:
        daemon.stop()
    assert len(app.tickets()) == 1
    assert len(app.outbox_files()) == 1
    articles = app.ticket(number)["articles"]
    assert "samstags" in articles[1]["text"]


def test_auto_reply_gets_no_ack(app: App) -> None:
    """An out-of-office reply (Auto-Submitted: auto-replied) is stored, but never acknowledged."""
    daemon = app.start()
    try:
        daemon.send(citizen_mail(subject="Abwesenheitsnotiz: Ihre Anfrage", headers={"Auto-Submitted": "auto-replied"}))
        daemon.send(citizen_mail(subject="Echte Frage", sender="hans@example.org"))
        wait_until(lambda: len(app.outbox_files()) == 1 and len(app.tickets()) == 2, message="processing")
    finally:
        daemon.stop()
    ack = email.message_from_bytes(app.outbox_files()[0].read_bytes(), policy=email.policy.default)
    assert ack["To"].addresses[0].addr_spec == "hans@example.org"


@pytest.mark.parametrize("form", ["encoded-word", "8bit"])
def test_umlauts_survive_from_mail_to_ticket_to_ack(app: App, form: str) -> None:
    """German umlauts in subject and body survive intake, the ticket and the acknowledgement, in both header forms."""
    subject = "Anfrage: Straßenbeleuchtung in der Görlitzer Allee defekt – Öffnungszeiten?"
    body = "Sehr geehrte Damen und Herren,\n\ndie Laterne vor Hausnummer 12 ist seit Tagen aus. Grüße, Jürgen Weiß\n"
    if form == "encoded-word":
        raw = citizen_mail(subject=subject, body=body, sender="Jürgen Weiß <juergen@example.org>")
        assert b"=?utf-8?" in raw
    else:
        raw = ("From: Jürgen Weiß <juergen@example.org>\r\nTo: buergerbuero@stadt.example\r\n"
               f"Subject: {subject}\r\nMessage-ID: <umlaut-8bit@example.org>\r\nMIME-Version: 1.0\r\n"
               "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
               + body.replace("\n", "\r\n")).encode("utf-8")
    daemon = app.start()
    try:
        daemon.send(raw, sender="juergen@example.org")
        [ack_file] = wait_until(lambda: app.outbox_files(), message="ack")
    finally:
        daemon.stop()
    [summary] = app.tickets()
    assert summary["subject"] == subject
    shown = app.ticket(summary["number"])
    assert "Jürgen Weiß" in shown["articles"][0]["text"]
    ack = email.message_from_bytes(ack_file.read_bytes(), policy=email.policy.default)
    assert "Straßenbeleuchtung in der Görlitzer Allee" in ack["Subject"]
    assert ack["To"].addresses[0].display_name == "Jürgen Weiß"
    assert "Straßenbeleuchtung" in ack.get_body(("plain",)).get_content()


def test_header_injection_in_subject_cannot_add_headers_to_the_ack(app: App) -> None:
    """A subject carrying CR/LF (raw or RFC 2047-encoded) cannot add a Bcc or any other header to the ack."""
    raw = (b"From: erika@example.org\r\nTo: buergerbuero@stadt.example\r\nMessage-ID: <inj@example.org>\r\n"
           b"Subject: =?utf-8?q?Hallo=0D=0ABcc:_evil@attacker.example=0D=0AX-Evil:_1?=\r\n\r\nText\r\n")
    daemon = app.start()
    try:
        daemon.send(raw)
        [ack_file] = wait_until(lambda: app.outbox_files(), message="ack")
    finally:
        daemon.stop()
    data = ack_file.read_bytes()
    ack = email.message_from_bytes(data, policy=email.policy.default)
    names = {k.lower() for k in ack.keys()}
    assert "bcc" not in names and "x-evil" not in names
    assert [a.addr_spec for a in ack["To"].addresses] == ["erika@example.org"]
    head = data.split(b"\r\n\r\n", 1)[0]
    assert b"\nBcc:" not in head and b"\nX-Evil:" not in head


def test_locked_database_answers_451_never_5xx(app: App) -> None:
    """While another process holds an exclusive lock on the SQLite database, DATA is answered 451 (relay retries)."""
    if not app.database_url.startswith("sqlite"):
        pytest.skip("exclusive file lock is the SQLite form of 'database unavailable'")
    daemon = app.start()
    path = app.database_url.removeprefix("sqlite:///")
    locker = sqlite3.connect(path, timeout=1, isolation_level=None)
    try:
        locker.execute("BEGIN EXCLUSIVE")
        with daemon.smtp() as client:
            with pytest.raises(smtplib.SMTPDataError) as exc:
                client.sendmail("erika@example.org", ["buergerbuero@stadt.example"], citizen_mail())
        assert exc.value.smtp_code == 451
        assert b"Error" not in exc.value.smtp_error and b"Exception" not in exc.value.smtp_error
        locker.execute("ROLLBACK")
        daemon.send(citizen_mail(message_id="<after-lock@example.org>"))
        wait_until(lambda: len(app.tickets()) == 1, message="ticket after the lock is gone")
    finally:
        locker.close()
        daemon.stop()


def test_lmtp_mode_answers_per_recipient(app: App) -> None:
    """In LMTP mode the listener gives one reply per accepted recipient, and both queues' mail is stored once."""
    app.set("smtp_in", protocol="lmtp")
    daemon = app.start()
    try:
        client = smtplib.LMTP("127.0.0.1", app.smtp_port)
        try:
            refused = client.sendmail("erika@example.org", ["buergerbuero@stadt.example", "bauamt@stadt.example"],
                                      citizen_mail(to="buergerbuero@stadt.example, bauamt@stadt.example"))
            assert refused == {}
        finally:
            client.quit()
        wait_until(lambda: len(app.tickets()) == 1, message="ticket")
    finally:
        daemon.stop()


def test_sigterm_exits_zero_and_keeps_every_acknowledged_mail(app: App) -> None:
    """SIGTERM while mail arrives exits 0, and every mail that got 250 is a ticket after the restart."""
    daemon = app.start()
    accepted: list[str] = []
    stop = threading.Event()

    def sender() -> None:
        n = 0
        while not stop.is_set() and n < 200:
            n += 1
            mid = f"<load-{n}@example.org>"
            try:
                with daemon.smtp() as client:
                    client.sendmail("erika@example.org", ["buergerbuero@stadt.example"],
                                    citizen_mail(message_id=mid, sender=f"b{n}@example.org"))
                accepted.append(mid)
            except (smtplib.SMTPException, OSError):
                pass

    thread = threading.Thread(target=sender)
    thread.start()
    wait_until(lambda: len(accepted) >= 10, message="some accepted mail")
    assert daemon.stop() == 0
    stop.set()
    thread.join()
    again = app.start()
    try:
        wait_until(lambda: len(app.tickets()) >= len(accepted), message="all accepted mail processed")
    finally:
        again.stop()
    assert len(app.tickets()) == len(accepted)
