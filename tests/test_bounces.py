"""Bounces of our own mail (T24): matched to the outbound row, never a ticket, never a reopen, staff told."""

from __future__ import annotations

import email
import email.policy
from collections.abc import Iterator

import pytest

from mail2ticket.config import load_config
from mail2ticket.runtime import Runtime
from mail2ticket.verp import verp_address
from tests.support.app import QUEUES, App
from tests.support.mails import citizen_mail
from tests.test_loops import Installation

STAFF = "sachbearbeitung@stadt.example"


@pytest.fixture
def inst(app: App) -> Iterator[Installation]:
    app.queues_toml = QUEUES.replace('staff = ["@stadt.example"]', f'staff = ["@stadt.example", "{STAFF}"]', 1)
    installation = Installation(app)
    yield installation
    installation.close()


def dsn(original: bytes, *, to: str, status: str = "5.1.1", action: str = "failed", with_headers: bool = True) -> bytes:
    """A Postfix-style RFC 3464 delivery status notification for `original`."""
    msg = email.message_from_bytes(original, policy=email.policy.default)
    rcpt = str(msg["To"]).rpartition("<")[2].rstrip(">")
    returned = original.split(b"\n\n", 1)[0].decode() if with_headers else "Subject: (omitted)"
    return (
        "From: Mail Delivery System <MAILER-DAEMON@mx.example.org>\n"
        f"To: {to}\n"
        "Subject: Undelivered Mail Returned to Sender\n"
        "Auto-Submitted: auto-replied\n"
        "Message-ID: <dsn.1@mx.example.org>\n"
        "MIME-Version: 1.0\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\n\n'
        "--B\nContent-Type: text/plain\n\nThe mail system could not deliver your message.\n\n"
        "--B\nContent-Type: message/delivery-status\n\n"
        "Reporting-MTA: dns; mx.example.org\n\n"
        f"Final-Recipient: rfc822; {rcpt}\nAction: {action}\nStatus: {status}\n"
        "Diagnostic-Code: smtp; 550 5.1.1 user unknown\n\n"
        f"--B\nContent-Type: text/rfc822-headers\n\n{returned}\n\n--B--\n"
    ).encode()


def first_ack(inst: Installation) -> tuple[int, bytes, str]:
    inst.ingest(citizen_mail())
    (row,) = [r for r in inst.outbound() if r.recipient == "erika@example.org"]
    (number,) = [t["number"] for t in inst.app.tickets()]
    return row.id, row.raw, number


def test_bounce_to_verp_address_marks_the_ack_failed_and_tells_staff(inst: Installation) -> None:
    """A DSN sent to the VERP return path of our ack fails that row, logs an event and notifies staff (T24)."""
    outbound_id, ack, number = first_ack(inst)
    secret = Runtime.build(load_config(inst.app.config_path)).secret
    address = verp_address(outbound_id, secret, "stadt.example")
    inst.ingest(dsn(ack, to=address, with_headers=False), sender="", recipient=address)
    rows = inst.outbound()
    ack_row = next(r for r in rows if r.id == outbound_id)
    assert ack_row.state == "failed" and ack_row.last_error is not None and "bounced" in ack_row.last_error
    (event,) = inst.events("mail_bounced")
    assert event.detail["matched_by"] == "verp" and event.detail["outbound_id"] == outbound_id
    notices = [r for r in rows if r.template == "bounce_notice"]
    assert [n.recipient for n in notices] == [STAFF]
    ticket = inst.app.ticket(number)
    assert ticket["status"] == "new" and len(ticket["articles"]) == 1
    assert len(inst.app.tickets()) == 1
    inbound = inst.inbound()[-1]
    assert inbound.state == "ignored" and inbound.classification == "bounce"
    sent = [email.message_from_bytes(raw, policy=email.policy.default) for raw in inst.send_outbox()]
    (notice,) = [m for m in sent if "Unzustellbar" in str(m["Subject"])]
    assert notice["To"] == STAFF and "erika@example.org" in notice.get_body(("plain",)).get_content()
    assert notice["Auto-Submitted"] == "auto-generated"


def test_bounce_matched_by_original_message_id_and_only_once(inst: Installation) -> None:
    """Without VERP the DSN's returned Message-ID finds the row; a second copy adds no second staff notice."""
    outbound_id, ack, _number = first_ack(inst)
    inst.ingest(dsn(ack, to="buergerbuero@stadt.example"), sender="")
    inst.ingest(dsn(ack, to="buergerbuero@stadt.example").replace(b"<dsn.1@", b"<dsn.2@"), sender="")
    rows = inst.outbound()
    assert next(r for r in rows if r.id == outbound_id).state == "failed"
    assert [e.detail["matched_by"] for e in inst.events("mail_bounced")] == ["message_id", "message_id"]
    assert len([r for r in rows if r.template == "bounce_notice"]) == 1
    assert len(inst.app.tickets()) == 1


def test_delay_report_keeps_the_mail_queued(inst: Installation) -> None:
    """A "delayed" DSN (4.x.x) is only recorded; the mail is not marked failed."""
    outbound_id, ack, _ = first_ack(inst)
    inst.ingest(dsn(ack, to="buergerbuero@stadt.example", status="4.4.1", action="delayed"), sender="")
    assert next(r for r in inst.outbound() if r.id == outbound_id).state != "failed"
    assert len(inst.events("mail_delayed")) == 1


def test_bounce_of_a_closed_ticket_does_not_reopen_it(inst: Installation) -> None:
    """A bounce arriving after the ticket was closed leaves it closed and creates no new ticket."""
    _, ack, number = first_ack(inst)
    inst.app.cli("tickets", "set-status", number, "closed", "--no-mail")
    inst.ingest(dsn(ack, to="buergerbuero@stadt.example"), sender="")
    assert inst.app.ticket(number)["status"] == "closed"
    assert len(inst.app.tickets()) == 1


def test_forged_verp_and_unknown_bounces_are_ignored(inst: Installation) -> None:
    """A bounce to a VERP address with a wrong HMAC, or about mail we never sent, changes nothing."""
    outbound_id, _ack, _ = first_ack(inst)
    forged = f"bounces+{outbound_id}-0000000000@stadt.example"
    other = citizen_mail(sender="Someone <someone@example.net>", to="friend@example.com")
    inst.ingest(dsn(other, to=forged, with_headers=True), sender="", recipient=forged)
    row = inst.inbound()[-1]
    assert row.state == "ignored" and row.reason is not None and "not matching" in row.reason
    assert next(r for r in inst.outbound() if r.id == outbound_id).state != "failed"
    assert len(inst.app.tickets()) == 1
