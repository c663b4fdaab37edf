"""A backlog streams through processing: parsing runs on from one batch into the next, and nothing is lost,
doubled or taken out of order on the way.

On SQLite the parse-ahead pipeline outlives a batch and reads on into the messages that wait after it. What an
operator must still see: every message once, tickets numbered in arrival order, replies on their tickets, mail
that arrives meanwhile processed too, a message deferred behind the stream taken up once it is due, and a
backlog of large mails never read ahead further than the batch's byte budget.
"""

from __future__ import annotations

import datetime as dt
import logging
import sqlite3
import time
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs
from sqlalchemy import event, text
from sqlalchemy.exc import OperationalError

from mail2ticket.cli.common import open_services
from mail2ticket.config import load_config
from mail2ticket.db import repo
from mail2ticket.db.engine import make_engine
from mail2ticket.parse_guard import ParseGuard
from mail2ticket.pipeline import process, stream
from mail2ticket.pipeline.parse_ahead import ParseAhead, Prepared
from mail2ticket.pipeline.process import Processor, Result
from tests.support.app import App
from tests.support.mails import citizen_mail


@pytest.fixture(autouse=True)
def _sqlite_only(app: App) -> None:
    if not app.database_url.startswith("sqlite"):
        pytest.skip("the stream is SQLite's (PostgreSQL claims small batches with SKIP LOCKED)")


@pytest.fixture
def small_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    """Batches of 3 and streams of 7 messages: a short backlog crosses several of both."""
    monkeypatch.setattr(process, "SQLITE_BATCH", 3)
    monkeypatch.setattr(stream, "STREAM_MESSAGES", 7)


@contextmanager
def processor_of(app: App) -> Iterator[Processor]:
    runtime, services = open_services(load_config(app.write_config()))
    processor = Processor(services, lambda: runtime)
    try:
        yield processor
    finally:
        processor.close()
        services.close()


def store(app: App, tmp_path: Path, name: str, mails: list[bytes]) -> None:
    folder = tmp_path / name
    folder.mkdir()
    for index, raw in enumerate(mails):
        (folder / f"{index:03d}.eml").write_bytes(raw)
    app.cli("ingest", "--queue-only", *sorted(str(p) for p in folder.iterdir()))


def process_all(processor: Processor) -> list[list[Result]]:
    batches = []
    while results := processor.process_batch():
        batches.append(results)
    return batches


def sql(app: App, statement: str) -> list[Any]:
    engine = make_engine(app.database_url)
    try:
        with engine.begin() as conn:
            result = conn.execute(text(statement))
            return list(result) if result.returns_rows else []
    finally:
        engine.dispose()


def mails(prefix: str, count: int) -> list[bytes]:
    return [citizen_mail(subject=f"{prefix} {i}", message_id=f"<{prefix}{i}@example.org>",
                         sender=f"{prefix}{i}@example.org") for i in range(count)]


def test_a_backlog_over_several_batches_is_processed_once_and_in_order(app: App, tmp_path: Path,
                                                                       small_batches: None) -> None:
    first = mails("anliegen", 8)
    replies = [citizen_mail(subject=f"Re: anliegen {i}", message_id=f"<re{i}@example.org>",
                            sender=f"anliegen{i}@example.org", headers={"In-Reply-To": f"<anliegen{i}@example.org>"})
               for i in range(8)]
    store(app, tmp_path, "backlog", [m for pair in zip(first, replies) for m in pair])

    with processor_of(app) as processor:
        batches = process_all(processor)

    assert all(len(batch) <= 3 for batch in batches)
    assert sorted(r.inbound_id for batch in batches for r in batch) == list(range(1, 17))
    assert sql(app, "SELECT state, count(*) FROM inbound_message GROUP BY state") == [("done", 16)]
    tickets = sorted(app.tickets(), key=lambda t: str(t["number"]))
    assert [t["subject"] for t in tickets] == [f"anliegen {i}" for i in range(8)]
    assert [t["articles"] for t in tickets] == [2] * 8
    assert sql(app, "SELECT count(*) FROM outbound_mail") == [(8,)]  # one acknowledgement per ticket


def test_mail_that_arrives_while_a_backlog_is_processed_is_processed_too(app: App, tmp_path: Path,
                                                                         small_batches: None) -> None:
    store(app, tmp_path, "early", mails("frueh", 5))
    with processor_of(app) as processor:
        first = processor.process_batch()
        store(app, tmp_path, "late", mails("spaet", 5))
        rest = process_all(processor)

    handled = [r.inbound_id for r in first] + [r.inbound_id for batch in rest for r in batch]
    assert handled == list(range(1, 11))
    assert sql(app, "SELECT state, count(*) FROM inbound_message GROUP BY state") == [("done", 10)]
    assert len(app.tickets()) == 10


def test_a_deferred_message_behind_the_stream_is_processed_once_it_is_due(app: App, tmp_path: Path,
                                                                           small_batches: None) -> None:
    store(app, tmp_path, "backlog", mails("anliegen", 12))
    later = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).strftime("%Y-%m-%d %H:%M:%S.%f")
    sql(app, f"UPDATE inbound_message SET not_before = '{later}' WHERE id = 2")  # as if a retry were pending

    with processor_of(app) as processor:
        first = processor.process_batch()
        assert 2 not in [r.inbound_id for r in first]
        sql(app, "UPDATE inbound_message SET not_before = NULL WHERE id = 2")  # its retry is due
        rest = process_all(processor)

    handled = [r.inbound_id for r in first] + [r.inbound_id for batch in rest for r in batch]
    assert sorted(handled) == list(range(1, 13))  # each once
    assert sql(app, "SELECT state, count(*) FROM inbound_message GROUP BY state") == [("done", 12)]


def test_large_mails_go_to_the_parser_only_as_far_as_the_byte_budget(app: App, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    body = "Anbei die Pläne.\n" + "Zeile mit Maßen und Flächen\n" * 4000  # about 110 kB each
    store(app, tmp_path, "large", [citizen_mail(subject=f"Pläne {i}", message_id=f"<p{i}@example.org>", body=body)
                                   for i in range(6)])
    sent: list[int] = []
    real_submit = ParseGuard.submit

    def counting_submit(self: ParseGuard, raw: bytes, *args: Any, **kwargs: Any) -> None:
        sent.append(len(raw))
        real_submit(self, raw, *args, **kwargs)

    monkeypatch.setattr(ParseGuard, "submit", counting_submit)
    with processor_of(app) as processor:
        processor.start_workers(wait=True)
        runtime = processor.runtime()
        limits = (runtime.limits, runtime.config.limits.parse_timeout, ())
        budget = 150_000  # one of these mails fits, two do not
        with ParseAhead(processor.services.factory, processor.guards, range(1, 7), limits=lambda: limits,
                        max_bytes=budget) as ahead:
            time.sleep(1.0)  # ample time to read and parse all six, were they not held back
            assert len(sent) == 1
            taken = [ahead.next(timeout=30) for _ in range(6)]
            assert ahead.next(timeout=30) is None

    assert all(isinstance(item, Prepared) and item.analysed is not None for item in taken)
    assert len(sent) == 6


def test_the_reader_asks_for_more_once_it_has_read_all_it_was_given(app: App, tmp_path: Path) -> None:
    store(app, tmp_path, "backlog", mails("anliegen", 7))
    asked: list[int] = []

    def more(after: int) -> list[int]:
        asked.append(after)
        return {2: [3, 4], 4: [5, 6, 7]}.get(after, [])

    with processor_of(app) as processor:
        with processor._parse_ahead([1, 2], more) as ahead:
            handed = [item.inbound_id for item in iter(lambda: ahead.next(timeout=30), None)
                      if isinstance(item, Prepared) and item.analysed is not None]
            assert ahead.following(3, 3) == [3, 4, 5]

    assert handed == [1, 2, 3, 4, 5, 6, 7]
    assert asked == [2, 4, 7]


def test_a_failing_refill_ends_the_stream_and_the_next_one_goes_on(app: App, tmp_path: Path, small_batches: None,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    store(app, tmp_path, "backlog", mails("anliegen", 10))
    real, failures = repo.waiting_inbound, list[int]()

    def waiting_inbound(session: Any, now: Any, **kwargs: Any) -> list[int]:
        if kwargs.get("after") is not None and not failures:
            failures.append(kwargs["after"])
            raise OperationalError("SELECT …", {}, sqlite3.OperationalError("database is locked"))
        return real(session, now, **kwargs)

    monkeypatch.setattr(repo, "waiting_inbound", waiting_inbound)
    with processor_of(app) as processor:
        batches = process_all(processor)

    assert failures and sorted(r.inbound_id for batch in batches for r in batch) == list(range(1, 11))
    assert sql(app, "SELECT state, count(*) FROM inbound_message GROUP BY state") == [("done", 10)]


@contextmanager
def info_lines() -> Iterator[list[MutableMapping[str, Any]]]:
    """The log lines from INFO up, whatever level an earlier in-process CLI command configured."""
    saved = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.INFO))
    try:
        with capture_logs() as logs:
            yield logs
    finally:
        structlog.configure(**saved)


def test_a_run_whose_commit_fails_logs_its_messages_as_deferred_not_processed(app: App, tmp_path: Path) -> None:
    """The log tells what was stored: when the commit of a processing run fails, its messages are logged as
    deferred, and each is logged as processed once, when a later run commits it."""
    store(app, tmp_path, "mails", [citizen_mail(subject=f"Anfrage {i}", sender=f"b{i}@example.org")
                                   for i in range(3)])
    failed: list[bool] = []

    def fail_first_commit(_conn: Any) -> None:
        if not failed:
            failed.append(True)
            raise OperationalError("COMMIT", {}, sqlite3.OperationalError("disk I/O error"))

    with processor_of(app) as processor, info_lines() as logs:
        event.listen(processor.services.engine, "commit", fail_first_commit)
        first = processor.process_batch()
        sql(app, "UPDATE inbound_message SET not_before = NULL")  # due again now, not after the backoff
        process_all(processor)

    deferred = sorted(r.inbound_id for r in first if r.reason == "deferred: OperationalError")
    assert failed and deferred
    assert sorted(line["inbound_id"] for line in logs if line["event"] == "processing_deferred") == deferred
    assert sorted(line["inbound_id"] for line in logs if line["event"] == "message_processed") == [1, 2, 3]
    assert sql(app, "SELECT state, count(*) FROM inbound_message GROUP BY state") == [("done", 3)]
