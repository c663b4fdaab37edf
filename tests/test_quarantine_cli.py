"""`mail2ticket quarantine`: an admin can list, inspect, retry, release and export parked mail."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.support.app import App
from tests.support.mails import citizen_mail
from tests.test_loops import Installation

BROKEN = (b"From: Erika <erika@example.org>\nTo: bauamt@stadt.example\nSubject: Bauantrag\n"
          b"Message-ID: <q1@example.org>\nX-Padding: " + b"p" * 2000 + b"\n\nBitte um R\xfcckruf.\n")


@pytest.fixture
def inst(app: App) -> Iterator[Installation]:
    app.set("limits", max_line_length=1000)
    installation = Installation(app)
    yield installation
    installation.close()


def test_list_show_and_export_keep_the_exact_bytes(inst: Installation) -> None:
    """A quarantined mail is listed with its reason, shown with headers, and exported byte for byte."""
    inst.ingest(BROKEN)
    (row,) = inst.inbound()
    assert row.state == "quarantined"
    listed = inst.app.json("quarantine", "list")
    assert [(e["id"], e["state"]) for e in listed] == [(row.id, "quarantined")]
    assert "line of 2011 bytes exceeds the limit of 1000" in listed[0]["reason"]
    shown = inst.app.cli("quarantine", "show", str(row.id)).stdout
    assert "reason:" in shown and "Subject: Bauantrag" in shown
    assert json.loads(inst.app.cli("quarantine", "show", str(row.id), "--json").stdout)["message_id"] == "<q1@example.org>"
    exported = __import__("subprocess").run(
        [__import__("sys").executable, "-m", "mail2ticket", "--config", str(inst.app.config_path), "quarantine",
         "export", str(row.id)], capture_output=True, check=True).stdout
    assert exported == BROKEN
    assert inst.app.tickets() == []


def test_retry_after_raising_the_limit_makes_the_ticket(inst: Installation) -> None:
    """After an admin raises the limit, `retry --all` processes the parked mail into a ticket."""
    inst.ingest(BROKEN, citizen_mail())
    assert inst.app.cli("quarantine", "retry", "1").stdout.startswith("1: quarantined")
    inst.app.set("limits", max_line_length=100_000)
    result = inst.app.json("quarantine", "retry", "--all")
    assert [(e["id"], e["state"]) for e in result] == [(1, "done")]
    tickets = inst.app.tickets()
    assert sorted(t["subject"] for t in tickets) == ["Bauantrag", "Frage zur Sperrmüllabholung"]
    assert inst.app.json("quarantine", "list") == []


def test_release_as_ticket_bypasses_limits_and_sends_nothing(inst: Installation) -> None:
    """`release --as-ticket` makes a ticket in the addressed queue without an acknowledgement."""
    inst.ingest(BROKEN)
    released = inst.app.json("quarantine", "release", "1", "--as-ticket")
    assert released["queue"] == "bauamt"
    ticket = inst.app.ticket(released["ticket"])
    assert ticket["subject"] == "Bauantrag" and "Rückruf" in ticket["articles"][0]["text"]
    assert inst.outbound() == []
    assert inst.inbound()[0].state == "done"
    again = inst.app.cli("quarantine", "release", "1", "--as-ticket", check=False)
    assert again.returncode == 1 and "only quarantined or ignored" in again.stderr


def test_release_of_unparseable_mail_attaches_the_original(inst: Installation) -> None:
    """Mail the parser cannot read even with raised limits becomes a stub ticket with original.eml attached."""
    inst.app.set("limits", parse_timeout=1, max_line_length=100_000)
    bomb = (b"From: Erika <erika@example.org>\nTo: bauamt@stadt.example\nSubject: Anhang\nMIME-Version: 1.0\n"
            b"Content-Type: text/plain" + b";" * 95_000 + b"\n\nx\n")
    inst.ingest(bomb)
    row = inst.inbound()[0]
    assert row.state == "quarantined" and row.reason is not None and "budget exceeded" in row.reason
    released = inst.app.json("quarantine", "release", str(row.id), "--as-ticket")
    ticket = inst.app.ticket(released["ticket"])
    assert "original.eml" in json.dumps(ticket)
    assert ticket["subject"] == "Anhang" and ticket["requester"] == "erika@example.org"
    assert inst.outbound() == []


def test_unknown_id_and_missing_arguments_are_clear_errors(inst: Installation) -> None:
    """Unknown ids and a retry without ID or --all exit non-zero with a one-line message, no traceback."""
    missing = inst.app.cli("quarantine", "show", "42", check=False)
    assert missing.returncode == 1 and "no stored message with id 42" in missing.stderr
    usage = inst.app.cli("quarantine", "retry", check=False)
    assert usage.returncode == 64 and "Traceback" not in usage.stderr
