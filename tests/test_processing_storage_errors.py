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
