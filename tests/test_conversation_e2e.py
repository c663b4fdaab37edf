"""End to end through the real SMTP listener and a real SMTP sink: a whole conversation by email."""

from __future__ import annotations

from tests.support.app import App, wait_until
from tests.support.conversation import CITIZEN, STAFF, configure, header, mail, staff_mail, text_of
from tests.support.smtp_sink import SmtpSink


def test_full_conversation_by_email(app: App, smtp_sink: SmtpSink) -> None:
    """Citizen mail → ack + staff notification → staff reply with #status → citizen reply → #close → status mail."""
    configure(app, smtp_sink)
    daemon = app.start()
    try:
        first = mail(message_id="<erste@example.org>")
        daemon.send(first, sender=CITIZEN)
        smtp_sink.wait_for(2)
        ack = smtp_sink.to(CITIZEN)[0]
        notification = smtp_sink.to(STAFF)[0]
        number = app.tickets()[0]["number"]
        tag = f"[Stadt#{number}]"
        assert tag in header(ack, "Subject")
        assert header(ack, "In-Reply-To") == "<erste@example.org>"
        assert header(ack, "Auto-Submitted") == "auto-replied"
        assert "buergerbuero+" in header(ack, "Reply-To")
        assert smtp_sink.messages[0].mail_from.startswith("bounces+")
        assert tag in header(notification, "Subject")
        assert header(notification, "From").endswith("<buergerbuero@stadt.example>")
        note_text = text_of(notification)
        assert "Müllerstraße" in note_text and number in note_text and "#status" in note_text
        assert "http" not in note_text

        # Staff answer the notification with a command on top; the citizen gets only the text.
        answer = staff_mail(
            "#status in_progress\n\nGuten Tag Frau Mustermann,\n\nder Sperrmüll wird am Montag abgeholt.\n\n"
            "> Neuer Vorgang in Bürgerbüro Musterstadt.\n> Vorgangsnummer: " + number + "\n",
            in_reply_to=header(notification, "Message-ID"), subject="AW: " + header(notification, "Subject"),
        )
        daemon.send(answer, sender=STAFF)
        smtp_sink.wait_for(3)
        reply = smtp_sink.to(CITIZEN)[1]
        reply_text = text_of(reply)
        assert "Montag" in reply_text
        assert "#status" not in reply_text and "Vorgangsnummer: " not in reply_text.split("--")[0]
        assert "anna" not in reply.raw.decode("utf-8", "replace").lower()
        assert header(reply, "From").endswith("<buergerbuero@stadt.example>")
        assert tag in header(reply, "Subject")
        assert header(reply, "In-Reply-To") == "<erste@example.org>"
        assert "Auto-Submitted" not in reply.msg
        ticket = app.ticket(number)
        assert ticket["status"] == "in_progress"
        assert [a["direction"] for a in ticket["articles"]] == ["in", "in", "out"]
        assert ticket["articles"][1]["internal"] is True

        # The citizen answers the staff reply: same ticket, no second ack.
        follow = mail(subject="AW: " + header(reply, "Subject"), in_reply_to=header(reply, "Message-ID"),
                      references=header(reply, "Message-ID"), body="Danke, ich stelle ihn raus.\n")
        daemon.send(follow, sender=CITIZEN)
        wait_until(lambda: len(app.ticket(number)["articles"]) == 4, message="citizen reply stored")
        assert len(app.tickets()) == 1

        # Staff close the ticket with a command only: the citizen gets the closing status mail.
        close = staff_mail("#close\n", in_reply_to=header(notification, "Message-ID"))
        daemon.send(close, sender=STAFF)
        smtp_sink.wait_for(4)
        closing = smtp_sink.to(CITIZEN)[2]
        assert "abgeschlossen" in header(closing, "Subject") and tag in header(closing, "Subject")
        assert header(closing, "Auto-Submitted") == "auto-replied"
        ticket = app.ticket(number)
        assert ticket["status"] == "closed"
        changes = [(e["detail"]["old"], e["detail"]["new"]) for e in ticket["events"] if e["type"] == "status_changed"]
        assert changes == [("new", "in_progress"), ("in_progress", "closed")]
        assert len(smtp_sink.messages) == 4
    finally:
        daemon.stop()
