"""Start-up guards: `run` refuses a database that could lose acknowledged mail or whose schema is not current."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, event, text

from mail2ticket.db.engine import DurabilityError, check_durability, make_engine
from mail2ticket.db.schema import downgrade, ensure_schema, upgrade
from tests.conftest import PostgresServer
from tests.support.app import App


def _db_name(url: str) -> str:
    return url.rsplit("/", 1)[1]


@pytest.mark.postgres
def test_run_refuses_postgres_with_synchronous_commit_off(
    tmp_path: Path, postgres_database_url: str, postgres_server: PostgresServer
) -> None:
    """With synchronous_commit=off the daemon exits 2 naming the setting and the override, and accepts nothing."""
    with postgres_server.admin() as conn:
        conn.execute(f'ALTER DATABASE "{_db_name(postgres_database_url)}" SET synchronous_commit = off')
    app = App(root=tmp_path, database_url=postgres_database_url)
    proc = app.cli("run", check=False)
    assert proc.returncode == 2
    assert "synchronous_commit=off" in proc.stderr
    assert "daemon.allow_unsafe_durability" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.postgres
def test_explicit_override_starts_on_unsafe_postgres_with_a_warning(
    tmp_path: Path, postgres_database_url: str, postgres_server: PostgresServer
) -> None:
    """daemon.allow_unsafe_durability = true starts the daemon anyway and logs the accepted risk."""
    with postgres_server.admin() as conn:
        conn.execute(f'ALTER DATABASE "{_db_name(postgres_database_url)}" SET synchronous_commit = off')
    app = App(root=tmp_path, database_url=postgres_database_url).set("daemon", allow_unsafe_durability=True)
    daemon = app.start()
    try:
        warnings = [e for e in daemon.events() if e.get("event") == "durability_unsafe"]
        assert warnings and "synchronous_commit=off (need on)" in warnings[0]["problems"]
    finally:
        assert daemon.stop() == 0


@pytest.mark.postgres
def test_synchronous_commit_local_counts_as_durable(postgres_database_url: str,
                                                    postgres_server: PostgresServer) -> None:
    """synchronous_commit=local (HA set-ups) still flushes locally before COMMIT returns, so it is accepted."""
    with postgres_server.admin() as conn:
        conn.execute(f'ALTER DATABASE "{_db_name(postgres_database_url)}" SET synchronous_commit = local')
    engine = make_engine(postgres_database_url)
    try:
        check_durability(engine, allow_unsafe=False)
    finally:
        engine.dispose()


def test_sqlite_check_refuses_synchronous_normal(tmp_path: Path) -> None:
    """A SQLite connection with synchronous=NORMAL (which loses the last commits on power loss) is refused."""
    engine = create_engine(f"sqlite:///{tmp_path / 'weak.db'}")

    @event.listens_for(engine, "connect")
    def _weak(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.execute("PRAGMA journal_mode=WAL")
        dbapi_conn.execute("PRAGMA synchronous=NORMAL")

    try:
        with pytest.raises(DurabilityError, match=r"synchronous=1 \(need FULL\)"):
            check_durability(engine, allow_unsafe=False)
        check_durability(engine, allow_unsafe=True)
    finally:
        engine.dispose()


def test_sqlite_check_refuses_rollback_journal(tmp_path: Path) -> None:
    """A SQLite file outside WAL mode is refused: the daemon's engine never produces one, but a foreign one could."""
    engine = create_engine(f"sqlite:///{tmp_path / 'plain.db'}")
    try:
        with pytest.raises(DurabilityError, match=r"journal_mode=delete \(need wal\)"):
            check_durability(engine, allow_unsafe=False)
    finally:
        engine.dispose()


def test_engine_settings_pass_the_durability_check(database_url: str) -> None:
    """The engine mail2ticket builds is durable on every backend (WAL + FULL on SQLite, the server's default on PG)."""
    engine = make_engine(database_url)
    try:
        check_durability(engine, allow_unsafe=False)
        if engine.dialect.name == "sqlite":
            with engine.connect() as conn:
                assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2
                assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_run_refuses_an_outdated_postgres_schema_until_db_upgrade(tmp_path: Path, postgres_database_url: str) -> None:
    """On a shared PostgreSQL, `run` never migrates by itself: it exits 2 naming `mail2ticket db upgrade`."""
    engine = make_engine(postgres_database_url)
    downgrade(engine, "base")
    engine.dispose()
    app = App(root=tmp_path, database_url=postgres_database_url)
    proc = app.cli("run", check=False)
    assert proc.returncode == 2
    assert "run `mail2ticket db upgrade`" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert "database schema: empty ->" in app.cli("db", "upgrade").stdout
    daemon = app.start()
    assert daemon.stop() == 0


def test_database_from_a_newer_release_is_refused(empty_database_url: str) -> None:
    """A schema revision this release does not know (a newer release upgraded it) is refused, never 'upgraded'."""
    engine = make_engine(empty_database_url)
    try:
        upgrade(engine)
        with engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = 'ffff_from_the_future'"))
        for auto_upgrade in (True, False):
            with pytest.raises(Exception, match="does not know") as info:
                ensure_schema(engine, auto_upgrade=auto_upgrade)
            assert type(info.value).__name__ == "SchemaOutdated"
    finally:
        engine.dispose()
