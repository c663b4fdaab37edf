"""A storage fault while processing reads a stored mail is a retry, never a quarantine.

A large mail is read for its parse piece by piece from the database (SQLite incremental blob I/O). A disk or
lock error there says nothing about the mail: processing must try it again later, as it does when any other
statement fails, and not quarantine it as an "internal error" that an operator has to release by hand.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from mail2ticket.cli.common import open_services
from mail2ticket.config import load_config
from mail2ticket.db import repo_raw
from mail2ticket.db.engine import make_engine
from mail2ticket.db.models import InboundState
from mail2ticket.pipeline.process import Processor, Result
from tests.support.app import App
from tests.support.mails import citizen_mail


class _FailingBlob:
    """A blob handle whose reads fail as a disk fault does (the fault cannot be caused for real here)."""

    def __enter__(self) -> _FailingBlob:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def read(self, *args: Any) -> bytes:
        raise sqlite3.OperationalError("disk I/O error")


class _FaultyConnection:
    def __init__(self, real: sqlite3.Connection) -> None:
        self._real = real

    def blobopen(self, *args: Any, **kwargs: Any) -> _FailingBlob:
        return _FailingBlob()


def process_once(app: App) -> list[Result]:
    runtime, services = open_services(load_config(app.write_config()))
    processor = Processor(services, lambda: runtime)
    try:
        return processor.process_batch()
    finally:
        processor.close()
        services.close()


def test_a_disk_fault_while_reading_a_large_mail_defers_it(app: App, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    if not app.database_url.startswith("sqlite"):
        pytest.skip("incremental blob reads are SQLite's")
    large = citizen_mail(subject="Bauantrag mit Plänen", message_id="<plaene@example.org>",
                         body="Anbei die Pläne.\n" + "Zeile mit Maßen und Flächen\n" * 60_000)
    assert len(large) > repo_raw.STREAM_THRESHOLD  # read in pieces, not with the small ones
    (tmp_path / "large.eml").write_bytes(large)
    app.cli("ingest", "--queue-only", str(tmp_path / "large.eml"))

    real_dbapi = repo_raw._dbapi
    monkeypatch.setattr(repo_raw, "_dbapi", lambda session: _FaultyConnection(real_dbapi(session)))
    (result,) = process_once(app)
    assert result.state == InboundState.NEW
    assert result.reason == "deferred: OperationalError"
    engine = make_engine(app.database_url)
    try:
        with engine.begin() as conn:
            state, reason, waits_until = conn.execute(
                text("SELECT state, reason, not_before FROM inbound_message")).one()
            assert (state, reason) == ("new", None) and waits_until is not None
            conn.execute(text("UPDATE inbound_message SET not_before = NULL"))  # its retry is due
    finally:
        engine.dispose()

    monkeypatch.undo()  # the disk recovers
    (result,) = process_once(app)
    assert result.state == InboundState.DONE and result.ticket_number
    assert len(app.tickets()) == 1


def test_a_storage_fault_in_the_middle_of_a_run_defers_each_message_once(app: App, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    # The fault ends the run's transaction: every message of the run waits for its backoff, none is processed
    # again at once behind the fault (which would skip the backoff and count the message twice).
    for i in range(3):
        (tmp_path / f"{i}.eml").write_bytes(citizen_mail(subject=f"Anliegen {i}", message_id=f"<a{i}@example.org>",
                                                         sender=f"buerger{i}@example.org"))
    app.cli("ingest", "--queue-only", *sorted(str(p) for p in tmp_path.glob("*.eml")))
    real_one, failed = Processor._one, []

    def one_with_a_fault(self: Processor, session: Any, item: Any, inbound: Any, *rest: Any) -> Result | None:
        if item.inbound_id == 2 and not failed:
            failed.append(item.inbound_id)
            raise OperationalError("INSERT …", {}, sqlite3.OperationalError("disk I/O error"))
        return real_one(self, session, item, inbound, *rest)

    monkeypatch.setattr(Processor, "_one", one_with_a_fault)
    runtime, services = open_services(load_config(app.write_config()))
    processor = Processor(services, lambda: runtime)
    try:
        processor.start_workers(wait=True)  # the three arrive parsed, so they share one run
        results = []
        while batch := processor.process_batch():
            results.extend(batch)
    finally:
        processor.close()
        services.close()

    assert failed == [2]
    assert sorted(r.inbound_id for r in results) == [1, 2, 3]  # each once
    engine = make_engine(app.database_url)
    try:
        with engine.connect() as conn:
            row = conn.execute(text("SELECT state, attempts, not_before FROM inbound_message WHERE id = 2")).one()
    finally:
        engine.dispose()
    assert row[0] == "new" and row[1] == 1 and row[2] is not None  # waits for its retry
