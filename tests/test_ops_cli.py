"""Admin commands for operators: outbox list/retry, stats, and the shared progress bar and log setup."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest
import structlog

from mail2ticket import log as logsetup
from mail2ticket.progress import Progress
from tests.support.app import App, wait_until
from tests.support.mails import citizen_mail
from tests.support.smtp_sink import SmtpSink


def test_outbox_list_and_retry_resends_a_failed_mail(app: App, smtp_sink: SmtpSink) -> None:
    """A mail the smarthost refused permanently is listed as failed; `outbox retry` sends it once the relay accepts."""
    app.set("smtp_out", delivery="smtp", host="127.0.0.1", port=smtp_sink.port)
    smtp_sink.fail_with("550 5.7.1 Relaying denied")
    daemon = app.start()
    try:
        daemon.send(citizen_mail(subject="Abgelehnte Bestätigung"))
        failed = wait_until(lambda: [r for r in app.json("outbox", "list") if r["state"] == "failed"],
                            message="failed mail")
        assert failed[0]["template"] == "ack" and "550" in failed[0]["last_error"]
        smtp_sink.fail_with(None)
        retried = app.json("outbox", "retry", "--all-failed")
        assert retried == [{"id": failed[0]["id"], "previous_state": "failed", "state": "queued"}]
        delivered = smtp_sink.wait_for(1)
    finally:
        assert daemon.stop() == 0
    assert delivered[0].msg["Message-ID"] == failed[0]["message_id"]  # the same mail, not a new one
    assert app.json("outbox", "list") == []
    sent = app.json("outbox", "list", "--state", "sent")
    assert [r["id"] for r in sent] == [failed[0]["id"]]
    events = [e["type"] for e in app.ticket(sent[0]["ticket"])["events"]]
    assert "mail_retried" in events


def test_outbox_retry_names_unknown_ids(app: App, capsys: pytest.CaptureFixture[str]) -> None:
    """`outbox retry` names ids it does not know and asks for ids or --all-failed."""
    assert app.run_inprocess("outbox", "retry", "999") == 1
    assert "999" in capsys.readouterr().err
    assert app.run_inprocess("outbox", "retry") == 64


def test_stats_per_queue(app: App) -> None:
    """`stats` shows open tickets, median age and tickets per day per queue."""
    for i in range(3):
        app.run_inprocess("ingest", "--recipient", "bauamt@stadt.example", str(_eml(app, i)))
    data = app.json("stats", "--days", "10")
    by_queue = {q["queue"]: q for q in data["queues"]}
    assert by_queue["bauamt"]["open"] == 3 and by_queue["bauamt"]["tickets_per_day"] == 0.3
    assert by_queue["bauamt"]["median_open_age_days"] == 0.0
    assert by_queue["buergerbuero"]["open"] == 0 and by_queue["buergerbuero"]["median_open_age_days"] is None
    assert app.run_inprocess("stats") == 0


def _eml(app: App, i: int) -> Path:
    path = app.root / f"m{i}.eml"
    path.write_bytes(citizen_mail(subject=f"Statistik {i}", to="bauamt@stadt.example"))
    return path


class FakeTty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_on_a_tty_shows_rate_and_eta() -> None:
    """On a terminal the bar shows count, percentage, rate and ETA; off a terminal nothing is written."""
    clock = iter([0.0, 1.0, 2.0, 2.0]).__next__
    tty = FakeTty()
    with Progress(4, "importing", stream=tty, clock=clock) as bar:
        bar.advance()
        bar.advance()
    last = tty.getvalue().rsplit("\r\x1b[2K", 1)[1]
    assert "2/4" in last and "50%" in last and "1.0/s" in last and "ETA 00:02" in last
    pipe = io.StringIO()
    with Progress(4, "importing", stream=pipe) as bar:
        bar.advance(4)
    assert pipe.getvalue() == ""


def test_logs_are_json_without_bodies_or_secrets() -> None:
    """JSON log lines mask keys that could carry a mail body or a secret and shorten huge values."""
    stream = io.StringIO()
    structlog.configure(processors=logsetup.processors(json_output=True),
                        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
                        logger_factory=structlog.PrintLoggerFactory(file=stream))
    try:
        structlog.get_logger().info("message_processed", inbound_id=7, body="Sehr geehrte…", password="hunter2",
                                    reply_token="abc", subject="x" * 5000, raw=b"\x00" * 10)
    finally:
        structlog.reset_defaults()
    line = json.loads(stream.getvalue())
    assert line["event"] == "message_processed" and line["inbound_id"] == 7
    assert line["body"] == line["password"] == line["reply_token"] == line["raw"] == "[redacted]"
    assert len(line["subject"]) < 2100
    assert "hunter2" not in stream.getvalue()


def test_log_format_follows_journal_and_tty(monkeypatch: pytest.MonkeyPatch) -> None:
    """auto means JSON under systemd (JOURNAL_STREAM) or off a terminal, console text on a terminal."""
    mp = monkeypatch
    mp.delenv("JOURNAL_STREAM", raising=False)
    assert logsetup.wants_json("auto", FakeTty()) is False
    assert logsetup.wants_json("auto", io.StringIO()) is True
    mp.setenv("JOURNAL_STREAM", "8:1234")
    assert logsetup.wants_json("auto", FakeTty()) is True
    assert logsetup.wants_json("console", io.StringIO()) is False
