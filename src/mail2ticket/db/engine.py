"""Database engine and transactions: durable settings per backend, one short unit of work at a time.

SQLite runs in WAL mode with synchronous=FULL and takes the write lock at BEGIN (BEGIN IMMEDIATE), so
concurrent writers queue on busy_timeout instead of failing half-way. PostgreSQL must run with
synchronous_commit on: a 250 or an IMAP flag after a commit that is not on disk would break promise 1.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

SQLITE_BUSY_TIMEOUT_MS = 10_000


class DurabilityError(RuntimeError):
    """The database is configured so that a committed message could be lost on a crash."""


def make_engine(url: str, *, pool_size: int = 5) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}, poolclass=NullPool)
        _configure_sqlite(engine)
        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    return create_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Take over transaction control from the sqlite3 module so BEGIN IMMEDIATE works.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextlib.contextmanager
def unit_of_work(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One transaction: commit on success, roll back on any exception."""
    with factory() as session, session.begin():
        yield session


def check_durability(engine: Engine, *, allow_unsafe: bool) -> None:
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            mode = conn.exec_driver_sql("PRAGMA journal_mode").scalar()
            sync = conn.exec_driver_sql("PRAGMA synchronous").scalar()
            problems = []
            if str(mode).lower() != "wal":
                problems.append(f"journal_mode={mode} (need wal)")
            if sync != 2 and sync != 3:
                problems.append(f"synchronous={sync} (need FULL)")
        else:
            setting = conn.execute(text("SHOW synchronous_commit")).scalar()
            fsync = conn.execute(text("SHOW fsync")).scalar()
            problems = []
            if setting in ("off", "local"):
                problems.append(f"synchronous_commit={setting} (need on)")
            if fsync == "off":
                problems.append("fsync=off (need on)")
        conn.rollback()
    if problems and not allow_unsafe:
        raise DurabilityError(
            "the database does not guarantee durable commits: "
            + ", ".join(problems)
            + "; fix the server setting, or set daemon.allow_unsafe_durability = true to accept losing mail on a crash"
        )
