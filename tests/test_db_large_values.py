"""Large mails on PostgreSQL: the bytes come back whole, and a connection that carried them is not pooled again.

libpq keeps a connection's buffers at the largest message it carried for as long as the connection lives, and the
pool keeps connections for the daemon's life: before, every pooled connection that once carried a 25 MB mail held
25-75 MB from then on (the daemon grew to 524 MB over 100 such mails). The server side is what a test can see: the
backend process that carried a large value is gone once the session ends, while one that carried small mails
serves the next session too.
"""

from __future__ import annotations

import hashlib
import os
import tracemalloc
from collections.abc import Callable, Iterator
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
from mail2ticket.intake import Envelope, Stored, store
from mail2ticket.pipeline import store as pipeline_store
from mail2ticket.pipeline.process import Processor
from tests.support.app import App
from tests.support.mails import citizen_mail


@pytest.fixture
def engine(postgres_database_url: str) -> Iterator[Engine]:
    engine = make_engine(postgres_database_url)
    yield engine
    engine.dispose()


def _large_mail(times: int = 1) -> bytes:
    # random base64 lines: a realistic attachment that compresses as little as the real ones
    body = os.urandom(times * POSTGRES_KEEP_LIMIT).hex().encode()
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


def _python_peak(action: Callable[[], object]) -> int:
    """Peak bytes of Python objects allocated while `action` runs (libpq's own buffers are C memory: not seen)."""
    tracemalloc.start()
    try:
        action()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_large_mail_goes_in_and_out_in_pieces_on_connections_that_then_close(engine: Engine) -> None:
    """A 25 MB mail is written by COPY and read in 4 MiB slices: this process never holds it whole (the daemon's
    peak was three copies of it, one of them libpq's), and the connections that carried it close with their
    sessions, as libpq keeps its buffers at the largest size they reached."""
    factory = make_sessionmaker(engine)
    raw = _large_mail(times=3)
    parts = [raw[i:i + (1 << 20)] for i in range(0, len(raw), 1 << 20)]
    envelope = Envelope("smtp", mail_from="buerger@example.org", rcpt_to=("bauamt@stadt.example",))
    pid = _backend_pid(factory)
    stored: list[Stored] = []
    # hashing works on 1 MiB pieces (and their normalised copies); the mail whole would be 25 MB
    assert _python_peak(lambda: stored.append(store(factory, parts, envelope))) < len(raw) // 4
    assert not _alive(engine, pid)
    pid = _backend_pid(factory)

    def read_back() -> None:
        with unit_of_work(factory) as session:
            size, pieces = read_raw(session, stored[0].inbound_id)
            digest = hashlib.sha256()
            for piece in pieces:
                digest.update(piece)
            assert (size, digest.hexdigest()) == (len(raw), hashlib.sha256(raw).hexdigest())

    assert _python_peak(read_back) < len(raw) // 2  # two slices of 4 MiB at most
    assert not _alive(engine, pid)


def test_large_attachment_content_is_written_in_pieces_on_a_connection_that_then_closes(engine: Engine) -> None:
    factory = make_sessionmaker(engine)
    data = os.urandom(3 * POSTGRES_KEEP_LIMIT)
    pid = _backend_pid(factory)

    def add() -> None:
        with unit_of_work(factory) as session:
            add_content(session, "a" * 64, data)

    assert _python_peak(add) < len(data) // 8
    assert not _alive(engine, pid)
    with unit_of_work(factory) as session:
        assert session.execute(text("SELECT size, data FROM attachment_content")).one() == (len(data), data)


def test_small_mails_keep_their_pooled_connection(engine: Engine) -> None:
    factory = make_sessionmaker(engine)
    pid = _backend_pid(factory)
    stored = store(factory, citizen_mail(), Envelope("smtp", mail_from="buerger@example.org"))
    with unit_of_work(factory) as session:
        size, pieces = read_raw(session, stored.inbound_id)
        assert size == len(b"".join(pieces))
    assert _backend_pid(factory) == pid


def test_a_large_value_refused_by_the_database_raises_what_an_insert_raises(engine: Engine) -> None:
    """The COPY of a raw mail whose intake row does not exist fails like the INSERT did: IntegrityError, which
    intake handles (another instance stored it), and nothing is stored."""
    factory = make_sessionmaker(engine)
    data = os.urandom(POSTGRES_KEEP_LIMIT)
    with pytest.raises(IntegrityError):
        with unit_of_work(factory) as session:
            add_raw(session, 999_999, [data], len(data))
    with unit_of_work(factory) as session:
        assert session.scalar(text("SELECT count(*) FROM raw_message")) == 0


def test_pieces_that_do_not_add_up_to_the_size_store_nothing(engine: Engine) -> None:
    factory = make_sessionmaker(engine)
    stored = store(factory, citizen_mail(), Envelope("smtp", mail_from="buerger@example.org"))
    data = os.urandom(2 << 20)
    with pytest.raises(ValueError, match="bytes arrived"):
        with unit_of_work(factory) as session:
            session.execute(text("DELETE FROM raw_message"))
            add_raw(session, stored.inbound_id, [data], len(data) + 1)
    with unit_of_work(factory) as session:
        assert session.scalar(text("SELECT length(data) FROM raw_message")) == len(citizen_mail())


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


def test_slices_of_a_large_mail_are_not_read_after_their_transaction_ended(engine: Engine) -> None:
    """Read after the session ended, the slices would come from a new transaction on another connection, which
    nothing closes: the reader fails loudly instead, as SQLite's blob reader does."""
    factory = make_sessionmaker(engine)
    stored = store(factory, _large_mail(times=2), Envelope("smtp", mail_from="buerger@example.org"))
    with unit_of_work(factory) as session:
        _, pieces = read_raw(session, stored.inbound_id)
    with pytest.raises(RuntimeError, match="after the transaction"):
        next(pieces)
