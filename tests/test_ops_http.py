"""The operator endpoint of the running daemon: /metrics and /healthz report real values after traffic."""

from __future__ import annotations

import json

from tests.support.app import App, free_port, wait_until
from tests.support.http_get import get, sample
from tests.support.mails import citizen_mail


def test_metrics_and_healthz_after_traffic(app: App) -> None:
    """After two mails, /metrics counts them (received, processed, acks sent, latencies) and /healthz is 200."""
    port = free_port()
    app.set("operations", http_enabled=True, http_listen=f"127.0.0.1:{port}", status_interval=0.2)
    daemon = app.start()
    base = f"http://127.0.0.1:{port}"
    try:
        daemon.send(citizen_mail(subject="Erste Anfrage"))
        daemon.send(citizen_mail(subject="Zweite Anfrage", sender="Max <max@example.org>"))
        wait_until(lambda: len(app.outbox_files()) == 2, message="two acknowledgements delivered")

        def settled() -> str | None:
            _, text = get(base + "/metrics")
            done = sample(text, "mail2ticket_mails_sent_total", queue="buergerbuero", template="ack") == 2
            idle = sample(text, "mail2ticket_backlog", stage="outbox") == 0  # gauges follow every 0.2 s
            return text if done and idle and sample(text, "mail2ticket_tickets_created_today") == 2 else None

        try:
            metrics = wait_until(settled, message="metrics settled")
        except AssertionError:
            raise AssertionError(get(base + "/metrics")[1]) from None
        status, body = get(base + "/healthz")
        missing, _ = get(base + "/nothing")
    finally:
        assert daemon.stop() == 0
    assert sample(metrics, "mail2ticket_messages_received_total", mailbox="smtp", duplicate="false") == 2
    assert sample(metrics, "mail2ticket_messages_processed_total", mailbox="smtp", queue="buergerbuero",
                  classification="human") == 2
    assert sample(metrics, "mail2ticket_receipt_to_ticket_seconds_count", queue="buergerbuero") == 2
    assert sample(metrics, "mail2ticket_ticket_to_ack_seconds_count", queue="buergerbuero") == 2
    assert sample(metrics, "mail2ticket_backlog", stage="process") == 0
    assert sample(metrics, "mail2ticket_backlog", stage="outbox") == 0
    assert sample(metrics, "mail2ticket_stage_up", stage="process") == 1
    assert sample(metrics, "mail2ticket_database_up") == 1
    if app.database_url.startswith("sqlite"):  # the one write lock, and who held it
        assert sample(metrics, "mail2ticket_sqlite_write_lock_held_seconds_total", holder="intake-commit") > 0
        assert sample(metrics, "mail2ticket_sqlite_write_lock_held_seconds_total", holder="process") > 0
    else:
        assert "mail2ticket_sqlite_write_lock_held_seconds_total{" not in metrics
    assert status == 200
    health = json.loads(body)
    assert health["status"] == "ok" and health["stages"]["outbox"]["alive"] is True
    assert missing == 404


def test_healthz_is_503_with_detail_when_a_stage_fails(app: App) -> None:
    """/healthz answers 503 and names the failing stage and its failure count."""
    port = free_port()
    app.set("operations", http_enabled=True, http_listen=f"127.0.0.1:{port}", stage_max_failures=2,
            stage_backoff_max_seconds=0.5)
    daemon = app.start(env={"M2T_FAILPOINT": "process.step:raise"})
    try:
        _, body = wait_until(lambda: (r := get(f"http://127.0.0.1:{port}/healthz"))[0] == 503 and r,
                                  message="503")
        _, metrics = get(f"http://127.0.0.1:{port}/metrics")
    finally:
        assert daemon.stop() == 0
    detail = json.loads(body)
    assert detail["status"] == "unhealthy"
    assert detail["stages"]["process"]["alive"] is False and detail["stages"]["process"]["failures"] >= 2
    assert detail["stages"]["outbox"]["alive"] is True
    assert sample(metrics, "mail2ticket_stage_failures_total", stage="process") >= 2
