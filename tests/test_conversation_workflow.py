"""Status workflow by CLI and by citizen replies: status mails, reopen, new ticket after the window, language."""

from __future__ import annotations

from tests.support.app import App
from tests.support.conversation import CITIZEN, configure, ingest, mail, outbound_mails, plain


def _ticket_with_ack(app: App, **kwargs: object) -> tuple[str, str]:
    result = ingest(app, mail(**kwargs))  # type: ignore[arg-type]
    number = str(result["ticket"])
    ack = next(m for t, _, m in outbound_mails(app, number) if t == "ack")
    return number, str(ack["Message-ID"])


def _citizen_templates(app: App, number: str) -> list[str]:
    return [t for t, r, _ in outbound_mails(app, number) if r == CITIZEN]


def test_set_status_mails_the_requester_and_ccs_but_not_our_addresses(app: App) -> None:
    """`tickets set-status` is an event and sends the status mail to requester and CCs, never to queue addresses."""
    configure(app)
    number, _ = _ticket_with_ack(app, cc="Max <max@example.net>, bauamt@stadt.example, kollegin@stadt.example")
    participants = {p["address"]: p["role"] for p in app.ticket(number)["participants"]}
    assert participants == {CITIZEN: "requester", "max@example.net": "cc"}

    app.json("tickets", "set-status", number, "waiting")
    status_mails = [(r, m) for t, r, m in outbound_mails(app, number) if t.startswith("status")]
    assert sorted(r for r, _ in status_mails) == [CITIZEN, "max@example.net"]
    _, first = status_mails[0]
    assert "Wartet auf Rückmeldung" in plain(first) and f"[Stadt#{number}]" in str(first["Subject"])
    assert first.get_body(preferencelist=("html",)) is not None
    event = next(e for e in app.ticket(number)["events"] if e["type"] == "status_changed")
    assert event["detail"] == {"old": "new", "new": "waiting", "via": "cli"}


def test_status_mails_can_be_turned_off_per_status_and_per_queue(app: App) -> None:
    """A status without `mail`, or a queue whose status_mails leaves it out, changes silently."""
    configure(app)
    number, _ = _ticket_with_ack(app)
    app.json("tickets", "set-status", number, "open")  # "open" sends no mail by default
    assert _citizen_templates(app, number) == ["ack"]
    app.queues_toml = app.queues_toml.replace('staff = ["anna.schmidt@stadt.example", "@stadt.example"]',
                                              'staff = ["anna.schmidt@stadt.example"]\nstatus_mails = ["closed"]')
    app.json("tickets", "set-status", number, "resolved")
    assert _citizen_templates(app, number) == ["ack"]
    app.json("tickets", "set-status", number, "closed")
    assert _citizen_templates(app, number) == ["ack", "status_closed"]


def test_unknown_status_is_a_clear_error(app: App) -> None:
    """Setting a status that is not configured fails with the list of valid statuses."""
    configure(app)
    number, _ = _ticket_with_ack(app)
    proc = app.cli("tickets", "set-status", number, "done", check=False)
    assert proc.returncode == 1 and "valid statuses" in proc.stderr and "Traceback" not in proc.stderr


def test_reply_to_resolved_ticket_reopens_it(app: App) -> None:
    """A citizen's reply to a resolved ticket reopens it, without a second ack or a status mail."""
    configure(app)
    number, ack_id = _ticket_with_ack(app)
    app.json("tickets", "set-status", number, "resolved")
    before = len(outbound_mails(app))
    result = ingest(app, mail(subject="AW: Frage", in_reply_to=ack_id, body="Leider ist noch nichts passiert.\n"))
    assert result["ticket"] == number
    ticket = app.ticket(number)
    assert ticket["status"] == "open"
    assert any(e["type"] == "reopened" for e in ticket["events"])
    assert len(outbound_mails(app)) == before


def test_auto_reply_does_not_reopen(app: App) -> None:
    """An out-of-office answer to a resolved ticket is stored as an internal note and reopens nothing."""
    configure(app)
    number, ack_id = _ticket_with_ack(app)
    app.json("tickets", "set-status", number, "resolved")
    ingest(app, mail(subject="Abwesenheitsnotiz", in_reply_to=ack_id, headers={"Auto-Submitted": "auto-replied"}))
    ticket = app.ticket(number)
    assert ticket["status"] == "resolved" and ticket["articles"][-1]["internal"] is True


def test_reply_to_closed_ticket_within_window_reopens(app: App) -> None:
    """A reply soon after closing reopens the same ticket."""
    configure(app)
    number, ack_id = _ticket_with_ack(app)
    app.json("tickets", "set-status", number, "closed")
    assert ingest(app, mail(in_reply_to=ack_id))["ticket"] == number
    assert app.ticket(number)["status"] == "open"


def test_reply_after_window_opens_a_linked_ticket(app: App) -> None:
    """A reply to a ticket closed longer than reopen_window_days makes a new ticket linked to the old one."""
    configure(app)
    app.set("daemon", reopen_window_days=0)
    number, ack_id = _ticket_with_ack(app)
    app.json("tickets", "set-status", number, "closed")
    result = ingest(app, mail(subject="AW: Frage", in_reply_to=ack_id, body="Es ist wieder Sperrmüll da.\n"))
    new_number = str(result["ticket"])
    assert new_number != number
    assert app.ticket(number)["status"] == "closed"
    new = app.ticket(new_number)
    assert new["linked_ticket"] == number and new["queue"] == "buergerbuero"
    assert any(e["type"] == "linked_to_closed" and e["detail"]["linked"] == number for e in new["events"])
    assert any(e["type"] == "followup_after_close" for e in app.ticket(number)["events"])
    assert "staff_new" in [t for t, _, _ in outbound_mails(app, new_number)]


def test_english_queue_and_english_citizen_get_english_mail(app: App) -> None:
    """The ack and status mails use the queue's language, or the citizen's Content-Language."""
    configure(app)
    number = str(ingest(app, mail(to="bauamt@stadt.example"), recipients=("bauamt@stadt.example",))["ticket"])
    ack = outbound_mails(app, number)[0][2]
    assert "We received your request" in str(ack["Subject"])
    other = str(ingest(app, mail(headers={"Content-Language": "en-GB"}))["ticket"])
    assert app.ticket(other)["language"] == "en"
    app.json("tickets", "set-status", other, "in_progress")
    status = next(m for t, _, m in outbound_mails(app, other) if t == "status")
    assert "In progress" in plain(status) and str(status["Content-Language"]) == "en"


def test_cli_reply_goes_to_the_requester_from_the_queue(app: App) -> None:
    """`tickets reply` sends the text to the requester from the queue address and opens a new ticket."""
    configure(app)
    number, _ = _ticket_with_ack(app, message_id="<frage-1@example.org>")
    app.json("tickets", "reply", number, "--text", "Der Termin ist am Montag.", "--as", "anna.schmidt@stadt.example")
    template, recipient, reply = outbound_mails(app, number)[-1]
    assert (template, recipient) == ("reply", CITIZEN)
    assert "Der Termin ist am Montag." in plain(reply) and str(reply["In-Reply-To"]) == "<frage-1@example.org>"
    assert "anna" not in reply.as_string().lower()
    ticket = app.ticket(number)
    assert ticket["articles"][-1]["direction"] == "out" and ticket["status"] == "open"
