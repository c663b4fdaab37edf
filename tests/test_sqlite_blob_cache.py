"""SQLite: a transaction that writes a mail of a few MB has a page cache that holds it, and gives that memory back.

SQLite's default page cache (2,000 KiB) is smaller than a mail with a 2 MB attachment, so its pages spilled to the
WAL before the commit and were written twice: the relay waited 3 ms longer for the 250 of such a mail. The cache
is raised for the transaction only; a pooled connection that carried a large mail must not keep megabytes of pages
for the daemon's life, and a mail larger than the limit (25 MB) spills rather than grow the cache by its size.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from mail2ticket.db.engine import BLOB_CACHE_LIMIT, SQLITE_CACHE_KIB, make_engine, make_sessionmaker, unit_of_work
from mail2ticket.db.models import InboundMessage
from mail2ticket.db.repo_raw import add_content, read_raw
from mail2ticket.db.schema import upgrade
from mail2ticket.intake import Envelope, store
from tests.support.mails import citizen_mail


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path / 'mail2ticket.db'}", pool_size=1)
    upgrade(engine)
    yield engine
    engine.dispose()


def _mail(size: int) -> bytes:
    body = os.urandom(size // 2).hex().encode()
    lines = b"\r\n".join(body[i:i + 76] for i in range(0, len(body), 76))
    return citizen_mail(subject="Bauantrag mit Plänen").replace(b"\r\n\r\n", b"\r\n\r\n" + lines + b"\r\n", 1)


def _cache_kib(session: Session) -> int:
    return -int(session.scalar(text("PRAGMA cache_size")))


def _store_and_watch(factory: sessionmaker[Session], raw: bytes) -> tuple[int, int]:
    """Store `raw` by intake; the cache (KiB) inside its transaction, after the blob was written, and its id."""
    seen: list[int] = []

    def watch(session: Session, _row: InboundMessage) -> None:
        seen.append(_cache_kib(session))

    stored = store(factory, raw, Envelope(source="cli"), extra=watch)
    return seen[0], stored.inbound_id


def test_a_mail_of_a_few_mb_is_written_with_a_cache_that_holds_it_and_the_cache_shrinks_after(engine: Engine) -> None:
    factory = make_sessionmaker(engine)
    raw = _mail(3 << 20)
    during, inbound_id = _store_and_watch(factory, raw)
    assert during * 1024 > len(raw) + SQLITE_CACHE_KIB * 1024
    with unit_of_work(factory) as session:  # the same pooled connection (pool of one)
        assert _cache_kib(session) == SQLITE_CACHE_KIB
        size, pieces = read_raw(session, inbound_id)
        assert size == len(raw) and b"".join(pieces) == raw


def test_a_mail_over_the_limit_leaves_the_cache_as_it_is(engine: Engine) -> None:
    factory = make_sessionmaker(engine)
    during, _ = _store_and_watch(factory, _mail(BLOB_CACHE_LIMIT + (1 << 20)))
    assert during == SQLITE_CACHE_KIB


def test_blobs_of_one_transaction_add_up_until_the_limit(engine: Engine) -> None:
    factory = make_sessionmaker(engine)
    size = BLOB_CACHE_LIMIT * 2 // 5
    with unit_of_work(factory) as session:
        add_content(session, "a" * 64, os.urandom(size))
        first = _cache_kib(session)
        add_content(session, "b" * 64, os.urandom(size))
        second = _cache_kib(session)
        add_content(session, "c" * 64, os.urandom(size))  # past the limit: no further growth
        last = _cache_kib(session)
    assert SQLITE_CACHE_KIB < first < second == last
    assert (second - SQLITE_CACHE_KIB) * 1024 >= 2 * size
    with unit_of_work(factory) as session:
        assert _cache_kib(session) == SQLITE_CACHE_KIB
