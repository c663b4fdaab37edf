"""Staff by email: notifications, replies to the citizen, commands, and who may give them."""

from __future__ import annotations

from email.message import EmailMessage
from email.policy import SMTP

from tests.support.app import App
from tests.support.conversation import (
    AUTHSERV,
    CITIZEN,
    STAFF,
    configure,
    ingest,
    mail,
    outbound_mails,
    plain,
    staff_mail,
)


def _new_ticket(app: App) -> tuple[str, str]:
    """A citizen's ticket and the Message-ID of the staff notification about it."""
    number = str(ingest(app, mail())["ticket"])
    note = next(m for t, r, m in outbound_mails(app, number) if t == "staff_new" and r == STAFF)
    return number, str(note["Message-ID"])


def _to_citizen(app: App, number: str) -> list[str]:
    return [t for t, r, _ in outbound_mails(app, number) if r == CITIZEN]


def test_notification_holds_number_text_routing_and_help(app: App) -> None:
    """Staff get the number, the citizen's text, a link-free routing summary and the command help."""
    configure(app)
    app.extra_toml = '[[rule]]\nname = "sperrmuell"\nmatch.subject = "Sperrmüll"\ncategory = "Abfall"\ntags = ["muell"]\n'
    number = str(ingest(app, mail(body="Siehe https://evil.example/x bitte.\n"))["ticket"])
    _template, recipient, note = next(x for x in outbound_mails(app, number) if x[0] == "staff_new")
    text = plain(note)
    assert recipient == STAFF and number in str(note["Subject"])
    assert "sperrmuell" in text and "Abfall" in text and "#status" in text and CITIZEN in text
    assert "https://evil.example/x" in text.split("----- Ende der Nachricht -----")[0]
    assert "http" not in text.split("----- Ende der Nachricht -----")[1]
    assert str(note["Auto-Submitted"]) == "auto-generated"


def test_spoofed_staff_commands_are_ignored(app: App) -> None:
    """A mail that only claims a staff From changes nothing, reaches nobody, and an event says why."""
    configure(app)
    number, note_id = _new_ticket(app)
    for auth in (None, "dmarc=fail header.from=stadt.example"):
        ingest(app, staff_mail("#close\n#priority urgent\nIhr Antrag ist abgelehnt.\n", in_reply_to=note_id,
                               auth=auth), sender=STAFF)
    ticket = app.ticket(number)
    assert ticket["status"] == "new" and ticket["priority"] == "normal"
    assert _to_citizen(app, number) == ["ack"]
    reasons = [e["detail"]["reason"] for e in ticket["events"] if e["type"] == "staff_mail_not_authenticated"]
    assert reasons == ["no_authentication_results_from_trusted_relay", "dmarc_fail"]
    assert all(a["internal"] for a in ticket["articles"][1:])


def test_forged_authentication_results_below_the_relays_are_ignored(app: App) -> None:
    """A sender-written A-R with our authserv-id under the relay's real (failing) one is not believed (T38 d)."""
    configure(app)
    number, note_id = _new_ticket(app)
    msg = EmailMessage()
    msg["Authentication-Results"] = f"{AUTHSERV}; dmarc=fail header.from=stadt.example"
    msg["Received"] = "from evil.example by mx.stadt.example; Tue, 24 Nov 2026 10:00:00 +0000"
    msg["Authentication-Results"] = f"{AUTHSERV}; dmarc=pass header.from=stadt.example"
    msg["From"] = f"Anna <{STAFF}>"
    msg["To"] = "buergerbuero@stadt.example"
    msg["Subject"] = "AW: Vorgang"
    msg["Message-ID"] = "<forged@evil.example>"
    msg["In-Reply-To"] = note_id
    msg.set_content("#close\n")
    ingest(app, msg.as_bytes(policy=SMTP), sender=STAFF)
    # And the same forged header alone, with no relay header above it from another authserv-id: still ignored.
    other = staff_mail("#close\n", in_reply_to=note_id, auth=None,
                       headers={"X-Note": "x"}).replace(b"From:", b"Authentication-Results: other.example; "
                                                           b"dmarc=pass\r\nFrom:", 1)
    ingest(app, other, sender=STAFF)
    assert app.ticket(number)["status"] == "new"


def test_internal_channel_counts_as_authenticated(app: App) -> None:
    """Mail through a channel marked internal is trusted without Authentication-Results."""
    configure(app, internal_channels=["cli"])
    number, note_id = _new_ticket(app)
    ingest(app, staff_mail("#status waiting\n", in_reply_to=note_id, auth=None), sender=STAFF)
    assert app.ticket(number)["status"] == "waiting"
    assert _to_citizen(app, number) == ["ack", "status"]


def test_unknown_command_changes_nothing_and_answers_staff(app: App) -> None:
    """An unknown command gets a short error mail to the staff member; status and citizen stay untouched."""
    configure(app)
    number, note_id = _new_ticket(app)
    ingest(app, staff_mail("#status in_progress\n#frobnicate now\n\nText für den Bürger.\n", in_reply_to=note_id),
           sender=STAFF)
    ticket = app.ticket(number)
    assert ticket["status"] == "new" and _to_citizen(app, number) == ["ack"]
    template, recipient, error = outbound_mails(app, number)[-1]
    assert (template, recipient) == ("command_error", STAFF)
    assert "#frobnicate now: unknown command" in plain(error)
    assert any(e["type"] == "staff_commands_rejected" for e in ticket["events"])


def test_german_aliases_and_field_commands(app: App) -> None:
    """#priorität, #tag, #assign, #take and #erledigt work, each recorded as an event."""
    configure(app)
    app.extra_toml = '[conversation.staff_names]\nbernd = "bernd.meier@stadt.example"\n'  # nested table
    number, note_id = _new_ticket(app)
    ingest(app, staff_mail("#priorität hoch\n#tag Sperrmüll\n#assign bernd\n", in_reply_to=note_id), sender=STAFF)
    ticket = app.ticket(number)
    assert (ticket["priority"], ticket["tags"], ticket["assignee"]) == ("high", ["Sperrmüll"],
                                                                         "bernd.meier@stadt.example")
    ingest(app, staff_mail("#take\n#erledigt\n", in_reply_to=note_id), sender=STAFF)
    ticket = app.ticket(number)
    assert ticket["assignee"] == STAFF and ticket["status"] == "closed"
    types = [e["type"] for e in ticket["events"]]
    assert {"priority_changed", "tag_added", "assigned", "status_changed"} <= set(types)
    assert _to_citizen(app, number) == ["ack", "status_closed"]


def test_note_stays_internal(app: App) -> None:
    """#note keeps the whole mail internal: nothing goes to the citizen."""
    configure(app)
    number, note_id = _new_ticket(app)
    ingest(app, staff_mail("#notiz\nBürger ist bekannt, bitte Rückruf.\n", in_reply_to=note_id), sender=STAFF)
    ticket = app.ticket(number)
    assert _to_citizen(app, number) == ["ack"]
    assert ticket["articles"][-1]["internal"] is True and "Rückruf" in ticket["articles"][-1]["text"]


def test_queue_move_notifies_the_new_queue(app: App) -> None:
    """#queue moves the ticket and the new queue's staff get a notification."""
    configure(app)
    number, note_id = _new_ticket(app)
    ingest(app, staff_mail("#queue bauamt\n", in_reply_to=note_id), sender=STAFF)
    assert app.ticket(number)["queue"] == "bauamt"
    template, recipient, moved = outbound_mails(app, number)[-1]
    assert (template, recipient) == ("staff_new", "bernd.bau@stadt.example")
    assert "moved" in str(moved["Subject"]).lower()


def test_staff_address_shown_only_when_configured(app: App) -> None:
    """With show_staff_address the reply names the staff member; without it, only the queue."""
    configure(app)
    app.queues_toml = app.queues_toml.replace('staff = ["anna.schmidt@stadt.example", "@stadt.example"]',
                                              'staff = ["anna.schmidt@stadt.example"]\nshow_staff_address = true')
    number, note_id = _new_ticket(app)
    ingest(app, staff_mail("Wir kümmern uns.\n", in_reply_to=note_id), sender=STAFF)
    reply = outbound_mails(app, number)[-1][2]
    assert STAFF in plain(reply) and "Anna Schmidt" in plain(reply)
    assert str(reply["From"]).endswith("<buergerbuero@stadt.example>")


def test_staff_out_of_office_is_not_sent_to_the_citizen(app: App) -> None:
    """A staff auto-reply to a notification is kept internal and never forwarded."""
    configure(app)
    number, note_id = _new_ticket(app)
    ingest(app, staff_mail("Ich bin bis Montag nicht im Haus.\n", in_reply_to=note_id,
                           headers={"Auto-Submitted": "auto-replied"}), sender=STAFF)
    assert _to_citizen(app, number) == ["ack"]
    assert app.ticket(number)["articles"][-1]["internal"] is True


FORWARD_INLINE = """Bitte übernehmen.

Gruß Anna

-----Ursprüngliche Nachricht-----
Von: Erika Mustermann [mailto:erika@example.org]
Gesendet: Montag, 23. November 2026 09:12
An: Anna Schmidt
Betreff: Sperrmüll Müllerstraße

Guten Tag, wann wird der Sperrmüll abgeholt?
"""


def test_staff_forward_makes_the_citizen_requester(app: App) -> None:
    """A trusted staff forward (inline Outlook block) opens the ticket for the citizen, staff as forwarder."""
    configure(app)
    result = ingest(app, staff_mail(FORWARD_INLINE, subject="WG: Sperrmüll Müllerstraße"), sender=STAFF)
    ticket = app.ticket(str(result["ticket"]))
    assert ticket["requester"] == CITIZEN and ticket["subject"] == "Sperrmüll Müllerstraße"
    roles = {p["address"]: p["role"] for p in ticket["participants"]}
    assert roles == {CITIZEN: "requester", STAFF: "forwarder"}
    assert any(e["type"] == "forwarded_by" and e["detail"]["forwarder"] == STAFF for e in ticket["events"])
    assert [r for t, r, _ in outbound_mails(app, ticket["number"]) if t == "ack"] == [CITIZEN]


def test_staff_forward_as_attachment(app: App) -> None:
    """A forward with the citizen's mail attached as message/rfc822 takes the citizen from the attachment."""
    configure(app)
    outer = EmailMessage()
    outer["Authentication-Results"] = f"{AUTHSERV}; dmarc=pass header.from=stadt.example"
    outer["From"] = f"Anna <{STAFF}>"
    outer["To"] = "buergerbuero@stadt.example"
    outer["Subject"] = "Fwd: Baum gefallen"
    outer["Message-ID"] = "<fwd-1@stadt.example>"
    outer.set_content("Zur Bearbeitung.\n")
    inner = EmailMessage()
    inner["From"] = "Max Muster <max@example.net>"
    inner["Subject"] = "Baum gefallen"
    inner.set_content("Vor meinem Haus liegt ein Baum.\n")
    outer.add_attachment(inner)
    ticket = app.ticket(str(ingest(app, outer.as_bytes(policy=SMTP), sender=STAFF)["ticket"]))
    assert ticket["requester"] == "max@example.net"


def test_untrusted_forward_keeps_the_sender_as_requester(app: App) -> None:
    """Without authentication a claimed staff forward does not redirect the ticket (and its ack) elsewhere."""
    configure(app)
    result = ingest(app, staff_mail(FORWARD_INLINE, subject="WG: x", auth=None), sender=STAFF)
    ticket = app.ticket(str(result["ticket"]))
    assert ticket["requester"] == STAFF
    assert any(e["type"] == "forward_not_trusted" for e in ticket["events"])


def test_web_form_reply_to_rule_and_priority_headers(app: App) -> None:
    """A rule with requester = "reply-to" takes the citizen from Reply-To; X-Priority is usable in rules."""
    configure(app)
    app.extra_toml = (
        '[[rule]]\nname = "dringend"\npriority = "high"\ncontinue = true\nmatch.headers = { "X-Priority" = "^1" }\n\n'
        '[[rule]]\nname = "wichtig"\npriority = "urgent"\ncontinue = true\nmatch.headers = { "Importance" = "(?i)^high" }\n\n'
        '[[rule]]\nname = "formular"\nrequester = "reply-to"\nmatch.from = { glob = "noreply@formulare.stadt.example" }\n'
    )
    raw = mail(sender="Online-Formular <noreply@formulare.stadt.example>", subject="Antrag Anwohnerparken",
               headers={"Reply-To": "Max Muster <max@example.net>", "X-Priority": "1 (Highest)"})
    ticket = app.ticket(str(ingest(app, raw, sender="noreply@formulare.stadt.example")["ticket"]))
    assert ticket["requester"] == "max@example.net" and ticket["priority"] == "high"
    other = app.ticket(str(ingest(app, mail(sender="Lisa <lisa@example.net>", headers={"Importance": "High"}),
                                  sender="lisa@example.net")["ticket"]))
    assert other["priority"] == "urgent"


def test_x_mail2ticket_headers_are_ignored(app: App) -> None:
    """Inbound X-Mail2Ticket-* headers are stripped before rules see them."""
    configure(app)
    app.extra_toml = ('[[rule]]\nname = "falle"\nqueue = "bauamt"\npriority = "urgent"\n'
                      'match.headers = { "X-Mail2Ticket-Queue" = "bauamt" }\n')
    raw = mail(headers={"X-Mail2Ticket-Queue": "bauamt", "X-Mail2Ticket-Priority": "urgent"})
    ticket = app.ticket(str(ingest(app, raw)["ticket"]))
    assert (ticket["queue"], ticket["priority"]) == ("buergerbuero", "normal")


def test_unmarked_quote_of_the_notification_is_not_sent(app: App) -> None:
    """A staff client that copies the notification without quote marks does not leak it to the citizen."""
    configure(app)
    number, note_id = _new_ticket(app)
    body = ("Guten Tag, wir holen am Montag ab.\n\nNeuer Vorgang in Bürgerbüro Musterstadt.\n\n"
            f"Vorgangsnummer: {number}\nAbsender: Erika <erika@example.org>\nRegel: intern\n")
    ingest(app, staff_mail(body, in_reply_to=note_id), sender=STAFF)
    reply = outbound_mails(app, number)[-1][2]
    assert "Montag" in plain(reply) and "Regel: intern" not in plain(reply) and "Neuer Vorgang" not in plain(reply)
    assert app.ticket(number)["status"] == "open"
