"""The JSON contract of the admin CLI (tickets list/show, rules test) and the ingest exit codes."""

from __future__ import annotations

import mailbox
from pathlib import Path

from tests.support.app import App
from tests.support.mails import citizen_mail

LIST_KEYS = {"number", "queue", "status", "priority", "category", "subject", "requester", "created_at", "updated_at",
             "articles"}
ARTICLE_KEYS = {"direction", "sender", "message_id", "subject", "text", "created_at"}
RULES_KEYS = {"rule", "queue", "priority", "category", "tags", "reply", "followup_of", "classification"}

RULES = """
[[rule]]
name = "Bau"
match = { subject = "bauantrag" }
queue = "bauamt"
category = "Bauantrag"
tags = ["bau"]
"""


def write(tmp_path: Path, name: str, raw: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(raw)
    return path


def test_ingest_list_and_show_follow_the_json_contract(app: App, tmp_path: Path) -> None:
    """`tickets list --json` and `tickets show --json` give the documented keys with the ticket's real values."""
    app.extra_toml = RULES
    eml = write(tmp_path, "a.eml", citizen_mail(subject="Bauantrag für eine Garage", message_id="<c1@example.org>"))
    result = app.cli("ingest", str(eml))
    assert result.returncode == 0
    [ticket] = app.json("tickets", "list")
    assert LIST_KEYS <= set(ticket)
    assert ticket["queue"] == "bauamt" and ticket["category"] == "Bauantrag" and ticket["articles"] == 1
    shown = app.json("tickets", "show", ticket["number"])
    assert LIST_KEYS - {"articles"} <= set(shown) and "events" in shown
    [article] = shown["articles"]
    assert ARTICLE_KEYS <= set(article)
    assert article["direction"] == "in" and article["message_id"] == "<c1@example.org>"
    assert {e["type"] for e in shown["events"]} >= {"ticket_created", "rule_matched"}


def test_rules_test_is_a_dry_run_with_the_documented_keys(app: App, tmp_path: Path) -> None:
    """`rules test FILE --json` reports rule, queue, ack template and classification without creating anything."""
    app.extra_toml = RULES
    eml = write(tmp_path, "b.eml", citizen_mail(subject="Bauantrag Carport"))
    result = app.json("rules", "test", str(eml))
    assert RULES_KEYS <= set(result)
    assert result["rule"] == "Bau" and result["queue"] == "bauamt" and result["tags"] == ["bau"]
    assert result["reply"] == "ack" and result["classification"] == "human" and result["followup_of"] is None
    assert app.json("tickets", "list") == []


def test_rules_test_shows_followup_and_no_ack_for_auto_replies(app: App, tmp_path: Path) -> None:
    """A dry run of an out-of-office reply to a ticket names the ticket and no acknowledgement."""
    first = write(tmp_path, "c.eml", citizen_mail(message_id="<orig@example.org>"))
    app.cli("ingest", str(first))
    number = app.json("tickets", "list")[0]["number"]
    ooo = write(tmp_path, "d.eml", citizen_mail(subject="Automatische Antwort: Ihre Anfrage",
                                                headers={"Auto-Submitted": "auto-replied",
                                                         "In-Reply-To": "<orig@example.org>"}))
    result = app.json("rules", "test", str(ooo))
    assert result["followup_of"] == number
    assert result["classification"] == "auto-reply" and result["reply"] is None


def test_ingest_reads_mbox_and_maildir_and_dedupes(app: App, tmp_path: Path) -> None:
    """`ingest` takes mbox files and Maildir folders; ingesting the same mail again creates nothing new."""
    box = mailbox.mbox(tmp_path / "backlog.mbox")
    for n in range(3):
        box.add(citizen_mail(subject=f"Anfrage {n}", message_id=f"<mb{n}@example.org>"))
    box.flush()
    box.close()
    maildir = mailbox.Maildir(tmp_path / "Maildir")
    maildir.add(citizen_mail(subject="Aus dem Maildir", message_id="<md@example.org>"))
    app.cli("ingest", str(tmp_path / "backlog.mbox"), str(tmp_path / "Maildir"))
    app.cli("ingest", str(tmp_path / "backlog.mbox"))
    assert sorted(t["subject"] for t in app.json("tickets", "list")) == [
        "Anfrage 0", "Anfrage 1", "Anfrage 2", "Aus dem Maildir"]


def test_ingest_from_stdin_and_exit_codes(app: App) -> None:
    """A Postfix pipe gets 0 for a stored mail, 65 (EX_DATAERR) for empty input, and garbage is kept in quarantine."""
    ok = app.cli("ingest", stdin=citizen_mail(message_id="<pipe@example.org>"), check=False)
    assert ok.returncode == 0, ok.stderr
    empty = app.cli("ingest", stdin=b"", check=False)
    assert empty.returncode == 65 and "Traceback" not in empty.stderr
    garbage = app.cli("ingest", stdin=b"\x00\x01 this is not mail", check=False)
    assert "not an email message" in garbage.stderr and "Traceback" not in garbage.stderr
    assert len(app.json("tickets", "list")) == 1


def test_ingest_warns_exactly_when_processing_quarantines_as_not_mail(app: App) -> None:
    """The warning of `ingest` is the verdict processing reaches: a first line that is no header field (a space
    in the field name) is quarantined, and a mail saved with a byte order mark is not."""
    bad_name = app.cli("ingest", stdin=b"Sub ject: Hallo\r\n\r\nText\r\n", check=False)
    assert "not an email message; kept in quarantine" in bad_name.stderr
    with_bom = app.cli("ingest", stdin=b"\xef\xbb\xbf" + citizen_mail(message_id="<bom@example.org>"), check=False)
    assert with_bom.returncode == 0 and "kept in quarantine" not in with_bom.stderr
    assert [q["reason"] for q in app.json("quarantine", "list")] == [
        "not an email message: it does not start with a header field"]


def test_set_status_changes_status_and_records_event(app: App, tmp_path: Path) -> None:
    """`tickets set-status` changes the status, records who did it, and refuses unknown statuses with a list."""
    app.cli("ingest", str(write(tmp_path, "e.eml", citizen_mail())))
    number = app.json("tickets", "list")[0]["number"]
    app.cli("tickets", "set-status", number, "in_progress")
    shown = app.json("tickets", "show", number)
    assert shown["status"] == "in_progress"
    assert any(e["type"] == "status_changed" and e["detail"]["new"] == "in_progress" for e in shown["events"])
    bad = app.cli("tickets", "set-status", number, "vergessen", check=False)
    assert bad.returncode != 0 and "in_progress" in bad.stderr and "Traceback" not in bad.stderr
