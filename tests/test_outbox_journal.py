"""On SQLite a sent mail is recorded in the delivery journal first: a crash after that never sends it again (T20)."""

from __future__ import annotations

import contextlib
import datetime as dt
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from mail2ticket.outbox.journal import DeliveryJournal, Sent
from tests.support.app import App, free_port, wait_until
from tests.support.http_get import get, sample
from tests.support.mails import citizen_mail
from tests.support.smtp_sink import SmtpSink

NOW = dt.datetime(2026, 12, 5, 10, 0, tzinfo=dt.UTC)


def _sqlite_file(app: App) -> str:
    if not app.database_url.startswith("sqlite"):
        pytest.skip("the delivery journal is SQLite's; on PostgreSQL each sent mail is its own commit")
    return app.database_url.split("sqlite:///", 1)[1]


def _claims_run_out(database: str) -> None:
    """What the passing of the claim's lease (over a minute) would do."""
    with contextlib.closing(sqlite3.connect(database)) as db, db:
        db.execute("UPDATE outbound_mail SET claim_expires_at = '2000-01-01 00:00:00.000000' WHERE state = 'sending'")


def test_an_ack_recorded_in_the_journal_is_not_sent_again_after_kill_9(app: App, smtp_sink: SmtpSink) -> None:
    """Killed between recording the sent ack and writing it into the database: the next start, after the claim
    ran out, records it as sent, once, and does not send it again."""
    database = _sqlite_file(app)
    app.set("smtp_out", delivery="smtp", host=smtp_sink.host, port=smtp_sink.port)
    daemon = app.start(env={"M2T_FAILPOINT": "outbox.after_record_before_fold:kill"})
    try:
        daemon.send(citizen_mail(message_id="<journal-1@example.org>"))
        wait_until(lambda: daemon.proc.poll() is not None, timeout=30, message="the daemon to die after the record")
    finally:
        daemon.kill()
    assert len(smtp_sink.wait_for(1)) == 1
    assert [row["state"] for row in app.json("outbox", "list", "--all")] == ["sending"]
    _claims_run_out(database)

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


def test_outbox_retry_refuses_a_mail_sent_just_before_a_crash(app: App, smtp_sink: SmtpSink) -> None:
    """Mails the crashed daemon had sent look stuck (`sending`, claim run out): retry refuses them as sent, and
    retries only the one that was not sent. Every citizen gets exactly one acknowledgement."""
    database = _sqlite_file(app)
    app.set("smtp_out", delivery="smtp", host=smtp_sink.host, port=smtp_sink.port)
    daemon = app.start(env={"M2T_FAILPOINT": "outbox.step:sleep=600"})  # the acks wait, to go in one batch
    try:
        for i in range(3):
            daemon.send(citizen_mail(message_id=f"<retry-{i}@example.org>", sender=f"B{i} <b{i}@example.org>"),
                        sender=f"b{i}@example.org")
        wait_until(lambda: len(app.json("outbox", "list")) == 3, timeout=30, message="three queued acks")
    finally:
        daemon.kill()
    daemon = app.start(env={"M2T_FAILPOINT": "outbox.after_record_before_fold:sleep=5"})
    try:
        smtp_sink.wait_for(2, timeout=30)
        time.sleep(0.5)  # the second one recorded in the journal
    finally:
        daemon.kill()
    _claims_run_out(database)
    stuck = sorted(row["id"] for row in app.json("outbox", "list") if row["state"] == "sending")
    assert len(stuck) == 3

    refused = app.cli("outbox", "retry", *map(str, stuck), check=False)
    assert refused.returncode == 1 and "already sent" in refused.stderr
    assert app.cli("outbox", "retry", str(stuck[-1])).returncode == 0
    daemon = app.start()
    try:
        wait_until(lambda: {row["state"] for row in app.json("outbox", "list", "--all")} == {"sent"},
                   message="every ack sent")
    finally:
        daemon.stop()
    assert sorted(m.msg["In-Reply-To"] for m in smtp_sink.messages) == [f"<retry-{i}@example.org>" for i in range(3)]


def test_a_second_daemon_on_the_same_database_is_refused(app: App) -> None:
    """It would empty the first one's journal; it stops at start with a message that names the fix."""
    _sqlite_file(app)
    daemon = app.start()
    try:
        second = app.cli("run", check=False)
        assert second.returncode == 1
        assert "second daemon" in second.stderr and "Traceback" not in second.stderr
    finally:
        daemon.stop()


def test_a_short_write_on_a_full_disk_is_an_error_and_leaves_no_torn_line(tmp_path: Path) -> None:
    """The record of a sent mail either is complete and synced, or fails (the mail counts as not recorded);
    the records after it are kept. A file size limit stands in for the full disk."""
    script = textwrap.dedent(f"""
        import datetime as dt, resource
        from pathlib import Path
        from mail2ticket.outbox.journal import DeliveryJournal, Sent
        now = dt.datetime(2026, 12, 5, 10, 0, tzinfo=dt.UTC)
        journal = DeliveryJournal(Path({str(tmp_path / "db-outbox-journal")!r}))
        journal.record(Sent(1, "host:1:aaaaaa", now))
        resource.setrlimit(resource.RLIMIT_FSIZE, (60, resource.RLIM_INFINITY))
        try:
            journal.record(Sent(2, "host:1:aaaaaa", now))
        except OSError as exc:
            print("record(2) failed:", exc)
        resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        journal.record(Sent(3, "host:1:aaaaaa", now))
        print("entries:", [s.outbound_id for s in journal.entries()])
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert "record(2) failed" in out.stdout, out.stderr
    assert "entries: [1, 3]" in out.stdout


def test_acks_of_several_full_batches_are_recorded_and_counted_once_and_the_journal_is_empty_after_stop(
        app: App, smtp_sink: SmtpSink) -> None:
    """A full batch leaves its journal lines to the next claim; /metrics still counts every ack as sent (not as
    deferred), and the last batch and the stop fold the rest."""
    database = _sqlite_file(app)
    port = free_port()
    app.set("smtp_out", delivery="smtp", host=smtp_sink.host, port=smtp_sink.port)
    app.set("operations", http_enabled=True, http_listen=f"127.0.0.1:{port}", status_interval=0.2)
    # Each outbox step waits 1 s first, so all 25 acks are queued when it claims: batches of 10, 10 and 5.
    daemon = app.start(env={"M2T_FAILPOINT": "outbox.step:sleep=1"})
    try:
        for i in range(25):
            daemon.send(citizen_mail(sender=f"Bürger {i} <buerger{i}@example.org>",
                                     message_id=f"<batch-{i}@example.org>"))
        smtp_sink.wait_for(25, timeout=60)

        def counted() -> str | None:
            _, text = get(f"http://127.0.0.1:{port}/metrics")
            return text if sample(text, "mail2ticket_mails_sent_total", queue="buergerbuero", template="ack") == 25 else None

        try:
            metrics = wait_until(counted, timeout=20, message="25 acks counted as sent")
        except AssertionError:
            raise AssertionError(get(f"http://127.0.0.1:{port}/metrics")[1]) from None
    finally:
        daemon.stop()
    assert sample(metrics, "mail2ticket_mails_deferred_total", queue="buergerbuero", template="ack") == 0
    assert sample(metrics, "mail2ticket_ticket_to_ack_seconds_count", queue="buergerbuero") == 25
    assert [row["state"] for row in app.json("outbox", "list", "--all")] == ["sent"] * 25
    assert sorted(m.msg["In-Reply-To"] for m in smtp_sink.messages) == sorted(
        f"<batch-{i}@example.org>" for i in range(25))
    assert Path(f"{database}-outbox-journal").read_bytes() == b""
    assert daemon.log().count('"outbound_sent"') == 25
