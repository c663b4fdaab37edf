"""Large mails on PostgreSQL: the bytes come back whole, and a connection that carried them is not pooled again.

libpq keeps a connection's buffers at the largest message it carried for as long as the connection lives, and the
pool keeps connections for the daemon's life: before, every pooled connection that once carried a 25 MB mail held
25-75 MB from then on (the daemon grew to 524 MB over 100 such mails). The server side is what a test can see: the
backend process that carried a large value is gone once the session ends, while one that carried small mails
serves the next session too.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from mail2ticket.cli.common import open_services
from mail2ticket.config import load_config
from mail2ticket.db.engine import POSTGRES_KEEP_LIMIT, make_engine, make_sessionmaker, unit_of_work
from mail2ticket.db.models import InboundState
from mail2ticket.db.repo_raw import add_content, add_raw, read_raw
from mail2ticket.intake import Envelope, store
from mail2ticket.pipeline import store as pipeline_store
from mail2ticket.pipeline.process import Processor
from tests.support.app import App
from tests.support.mails import citizen_mail


@pytest.fixture
def engine(postgres_database_url: str) -> Iterator[Engine]:
    engine = make_engine(postgres_database_url)
    yield engine
    engine.dispose()


def _large_mail() -> bytes:
    # random base64 lines: a realistic attachment that compresses as little as the real ones
    body = os.urandom(POSTGRES_KEEP_LIMIT).hex().encode()
    lines = b"\r\n".join(body[i:i + 76] for i in range(0, len(body), 76))
    return citizen_mail(subject="Bauantrag mit Plänen").replace(b"\r\n\r\n", b"\r\n\r\n" + lines + b"\r\n", 1)


def _pid(session: Session) -> int:
    return int(session.scalar(text("SELECT pg_backend_pid()")))


def _backend_pid(factory: sessionmaker[Session]) -> int:
    with unit_of_work(factory) as session:
        return _pid(session)


def _alive(engine: Engine, pid: int) -> bool:
    with engine.connect() as conn:
        return bool(conn.scalar(text("SELECT count(*) FROM pg_stat_activity WHERE pid = :pid"), {"pid": pid}))


def test_large_mail_is_stored_and_read_back_whole_by_a_connection_that_then_closes(engine: Engine) -> None:
    factory = make_sessionmaker(engine)
    raw = _large_mail()
    pid = _backend_pid(factory)
    envelope = Envelope("smtp", mail_from="buerger@example.org", rcpt_to=("bauamt@stadt.example",))
    stored = store(factory, raw, envelope)
    assert not _alive(engine, pid)  # the connection of the INSERT was the pooled one: closed with its session

    with unit_of_work(factory) as session:
        reader = _pid(session)
        size, pieces = read_raw(session, stored.inbound_id)
        assert (size, b"".join(pieces)) == (len(raw), raw)
    assert not _alive(engine, reader)


def test_large_attachment_content_closes_its_connection(engine: Engine) -> None:
    factory = make_sessionmaker(engine)
    data = os.urandom(POSTGRES_KEEP_LIMIT)
    with unit_of_work(factory) as session:
        pid = _pid(session)
        add_content(session, "a" * 64, data)
    assert not _alive(engine, pid)
    with unit_of_work(factory) as session:
        assert session.scalar(text("SELECT data FROM attachment_content")) == data


def test_small_mails_keep_their_pooled_connection(engine: Engine) -> None:
    factory = make_sessionmaker(engine)
    pid = _backend_pid(factory)
    stored = store(factory, citizen_mail(), Envelope("smtp", mail_from="buerger@example.org"))
    with unit_of_work(factory) as session:
        size, pieces = read_raw(session, stored.inbound_id)
        assert size == len(b"".join(pieces))
    assert _backend_pid(factory) == pid


def test_a_large_value_whose_insert_fails_still_closes_its_connection(engine: Engine) -> None:
    factory = make_sessionmaker(engine)
    data = os.urandom(POSTGRES_KEEP_LIMIT)
    with pytest.raises(IntegrityError):  # sent whole, then refused: there is no intake row 999999
        with unit_of_work(factory) as session:
            pid = _pid(session)
            add_raw(session, 999_999, [data], len(data))
    assert not _alive(engine, pid)


def test_a_mail_with_a_large_body_closes_the_connection_that_stored_its_article(
        engine: Engine, postgres_database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    app = App(root=tmp_path, database_url=postgres_database_url)
    body = "Anbei die Messwerte.\n" + "".join(f"Messung {i:08d}: 12,5 mm / 3,0 bar\n" for i in range(80_000))
    (tmp_path / "messung.eml").write_bytes(citizen_mail(subject="Messprotokoll", body=body))
    app.cli("ingest", "--queue-only", str(tmp_path / "messung.eml"))
    stored_by: list[int] = []
    real = pipeline_store.add_inbound_article

    def noting_the_backend(session: Session, *args: Any, **kwargs: Any) -> Any:
        stored_by.append(_pid(session))
        return real(session, *args, **kwargs)

    monkeypatch.setattr(pipeline_store, "add_inbound_article", noting_the_backend)
    runtime, services = open_services(load_config(app.write_config()))
    processor = Processor(services, lambda: runtime)
    try:
        assert [r.state for r in processor.process_batch()] == [InboundState.DONE]
        assert len(stored_by) == 1 and not _alive(engine, stored_by[0])
    finally:
        processor.close()
        services.close()
