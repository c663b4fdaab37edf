"""On SQLite a sent mail is recorded in the delivery journal first: a crash after that never sends it again (T20)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from mail2ticket.outbox.journal import DeliveryJournal, Sent
from tests.support.app import App, wait_until
from tests.support.mails import citizen_mail
from tests.support.smtp_sink import SmtpSink

NOW = dt.datetime(2026, 12, 5, 10, 0, tzinfo=dt.UTC)


def test_an_ack_recorded_in_the_journal_is_not_sent_again_after_kill_9(app: App, smtp_sink: SmtpSink) -> None:
    """Killed between recording the sent ack and writing it into the database: the next start records it as
    sent, once, and does not send it again (it would, once the claim ran out, if the record were lost)."""
    if not app.database_url.startswith("sqlite"):
        pytest.skip("the delivery journal is SQLite's; on PostgreSQL each sent mail is its own commit")
    app.set("smtp_out", delivery="smtp", host=smtp_sink.host, port=smtp_sink.port)
    daemon = app.start(env={"M2T_FAILPOINT": "outbox.after_record_before_fold:kill"})
    daemon.send(citizen_mail(message_id="<journal-1@example.org>"))
    wait_until(lambda: daemon.proc.poll() is not None, timeout=30, message="the daemon to die after the record")
    assert len(smtp_sink.wait_for(1)) == 1
    assert [row["state"] for row in app.json("outbox", "list", "--all")] == ["sending"]

    daemon = app.start()
    try:
        wait_until(lambda: [row["state"] for row in app.json("outbox", "list", "--all")] == ["sent"],
                   message="the ack recorded as sent")
    finally:
        daemon.stop()
    assert len(smtp_sink.messages) == 1
    assert daemon.log().count('"outbound_sent"') == 1


def test_a_line_torn_by_a_crash_is_skipped_and_the_next_record_kept(tmp_path: Path) -> None:
    """A crash in the middle of a write leaves a line without its end; the records after it still count."""
    path = tmp_path / "mail2ticket.db-outbox-journal"
    path.write_bytes(b"12\tdaemon-a\t2026-12-05T10:00:00+00:00\n13\tdaemon-a\t2026-12")
    journal = DeliveryJournal(path)
    try:
        journal.record(Sent(14, "daemon-b", NOW))
        assert [(s.outbound_id, s.owner) for s in journal.entries()] == [(12, "daemon-a"), (14, "daemon-b")]
        journal.clear()
        assert journal.entries() == [] and not journal.pending()
    finally:
        journal.close()
