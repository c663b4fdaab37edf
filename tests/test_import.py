"""`mail2ticket import`: an mbox/Maildir backlog goes through the normal intake, so a re-import is harmless."""

from __future__ import annotations

import datetime as dt
import mailbox
from email import message_from_bytes, policy
from email.utils import format_datetime
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select

from mail2ticket.db.models import OutboundMail
from tests.support.app import App
from tests.support.mails import citizen_mail


def old_mail(i: int, when: dt.datetime) -> bytes:
    raw = citizen_mail(subject=f"Altanfrage {i}", sender=f"Person {i} <person{i}@example.org>",
                       body=f"Anfrage Nummer {i}.\n")
    msg = message_from_bytes(raw, policy=policy.SMTP)
    msg.replace_header("Date", format_datetime(when))
    return msg.as_bytes(policy=policy.SMTP)


def write_mbox(path: Path, mails: list[bytes]) -> Path:
    box = mailbox.mbox(path, create=True)
    box.lock()
    for raw in mails:
        box.add(raw)
    box.flush()
    box.unlock()
    box.close()
    return path


def outbound_count(app: App) -> int:
    engine = create_engine(app.database_url)
    with engine.connect() as conn:
        count = conn.scalar(select(func.count()).select_from(OutboundMail)) or 0
    engine.dispose()
    return int(count)


@pytest.mark.slow
def test_import_of_2000_messages_twice_gives_2000_tickets(app: App, tmp_path: Path) -> None:
    """Importing the same 2,000-message mbox twice creates 2,000 tickets; the second run finds only duplicates."""
    start = dt.datetime(2024, 3, 1, 9, 0, tzinfo=dt.UTC)
    box = write_mbox(tmp_path / "alt.mbox", [old_mail(i, start + dt.timedelta(hours=i)) for i in range(2000)])
    first = app.json("import", "--archive", "--queue", "bauamt", str(box))
    assert first["messages"] == 2000 and first["stored"] == 2000 and first["processed"] == 2000
    second = app.json("import", "--archive", "--queue", "bauamt", str(box))
    assert second["stored"] == 0 and second["duplicates"] == 2000 and second["processed"] == 0
    tickets = app.tickets()
    assert len(tickets) == 2000 and {t["queue"] for t in tickets} == {"bauamt"}
    assert outbound_count(app) == 0  # archive: no acknowledgement to anybody
    first_ticket = next(t for t in tickets if t["subject"] == "Altanfrage 0")
    assert first_ticket["created_at"].startswith("2024-03-01T09:00")  # the mail's own date


def test_import_without_archive_acknowledges_and_skips_non_mail(app: App, tmp_path: Path) -> None:
    """A live import (no --archive) acknowledges like arriving mail; a file that is no mail is reported, exit 65."""
    folder = tmp_path / "backlog"
    maildir = mailbox.Maildir(folder, create=True)
    for i in range(3):
        maildir.add(citizen_mail(subject=f"Neu {i}", sender=f"n{i}@example.org"))
    (tmp_path / "junk.eml").write_bytes(b"\x00\x01 not a mail")
    proc = app.cli("import", str(folder), str(tmp_path / "junk.eml"), "--json", check=False)
    assert proc.returncode == 65 and "not an email message" in proc.stderr
    assert len(app.tickets()) == 3
    assert outbound_count(app) == 3
    assert "\r" not in proc.stderr  # no progress bar when stderr is not a terminal


def test_import_processes_every_message_even_when_a_batch_is_cut_short_by_size(
        app: App, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A processing batch is bounded in bytes; the import must still turn every stored message into a ticket."""
    from mail2ticket.pipeline import process

    monkeypatch.setattr(process, "BATCH_BYTES", 1)  # every batch takes exactly one message
    start = dt.datetime(2024, 3, 1, 9, 0, tzinfo=dt.UTC)
    box = write_mbox(tmp_path / "alt.mbox", [old_mail(i, start) for i in range(5)])
    summary = app.json("import", "--archive", str(box))
    assert summary["stored"] == 5 and summary["processed"] == 5 and summary["deferred"] == 0
    assert len(app.tickets()) == 5


def test_import_reports_its_own_messages_and_mail_that_waited_is_processed_too(app: App, tmp_path: Path) -> None:
    """Mail already waiting (stored with `ingest --queue-only`) is processed along with the import, but the
    import's summary counts only the messages it read."""
    waiting = tmp_path / "waiting.eml"
    waiting.write_bytes(citizen_mail(subject="Wartet schon", message_id="<wartet@example.org>"))
    app.cli("ingest", "--queue-only", str(waiting))
    start = dt.datetime(2024, 3, 1, 9, 0, tzinfo=dt.UTC)
    box = write_mbox(tmp_path / "alt.mbox", [old_mail(i, start + dt.timedelta(hours=i)) for i in range(3)])

    summary = app.json("import", "--archive", str(box))

    assert summary["stored"] == 3 and summary["processed"] == 3 and summary["tickets_touched"] == 3
    assert sorted(t["subject"] for t in app.tickets()) == ["Altanfrage 0", "Altanfrage 1", "Altanfrage 2",
                                                           "Wartet schon"]
