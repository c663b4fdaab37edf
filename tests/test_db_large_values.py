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

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from mail2ticket.db.engine import make_engine, make_sessionmaker, unit_of_work
from mail2ticket.db.repo_raw import POSTGRES_KEEP_LIMIT, add_content, read_raw
from mail2ticket.intake import Envelope, store
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


def _backend_pid(factory: sessionmaker[Session]) -> int:
    with unit_of_work(factory) as session:
        return int(session.scalar(text("SELECT pg_backend_pid()")))


def _alive(engine: Engine, pid: int) -> bool:
    with engine.connect() as conn:
        return bool(conn.scalar(text("SELECT count(*) FROM pg_stat_activity WHERE pid = :pid"), {"pid": pid}))


def test_large_mail_is_stored_and_read_back_whole_by_a_connection_that_then_closes(engine: Engine) -> None:
    factory = make_sessionmaker(engine)
    raw = _large_mail()
    pid = _backend_pid(factory)
    stored = store(factory, raw, Envelope("smtp", mail_from="buerger@example.org", rcpt_to=("bauamt@stadt.example",)))
    assert not _alive(engine, pid)  # the connection of the INSERT was the pooled one: closed with its session

    with unit_of_work(factory) as session:
        reader = int(session.scalar(text("SELECT pg_backend_pid()")))
        size, pieces = read_raw(session, stored.inbound_id)
        assert (size, b"".join(pieces)) == (len(raw), raw)
    assert not _alive(engine, reader)


def test_large_attachment_content_closes_its_connection(engine: Engine) -> None:
    factory = make_sessionmaker(engine)
    data = os.urandom(POSTGRES_KEEP_LIMIT)
    with unit_of_work(factory) as session:
        pid = int(session.scalar(text("SELECT pg_backend_pid()")))
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
