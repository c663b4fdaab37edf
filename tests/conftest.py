"""Shared fixtures: real databases (SQLite files, PostgreSQL databases), the app harness, an SMTP sink.

Backends: `--backends sqlite,postgresql` (or $M2T_TEST_BACKENDS); every test that takes `backend` (directly or
through `database_url` / `app`) runs once per backend, and its PostgreSQL variant carries the `postgres` marker.

PostgreSQL: the server at $M2T_TEST_POSTGRES_URL (default postgresql://postgres@127.0.0.1:5432/postgres; the
user must be allowed to create databases) gets one template database per session, built with `alembic upgrade
head` exactly like production (`mail2ticket db upgrade`). Each test then gets its own database cloned from that
template (`CREATE DATABASE … TEMPLATE`, ~60 ms) and dropped in the background afterwards. A SQLite test gets
a fresh empty file, which mail2ticket upgrades in place on first use, as it does for embedded installations.
`empty_database_url` gives an empty database on both backends (migration tests, outdated-schema checks);
`postgres_database_url` a migrated PostgreSQL database for tests that only make sense there (several instances,
server settings), skipped unless postgresql is among the selected backends.
"""

from __future__ import annotations

import os
import queue
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from mail2ticket.db.engine import make_engine, make_sessionmaker
from mail2ticket.db.schema import upgrade
from tests.support.app import App
from tests.support.smtp_sink import SmtpSink

pytest_plugins = ["tests.support.imap_fixtures"]

POSTGRES_ADMIN_URL = os.environ.get("M2T_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--backends", default=os.environ.get("M2T_TEST_BACKENDS", "sqlite"),
                     help="comma-separated database backends to run database tests on: sqlite,postgresql")


def _backends(config: pytest.Config) -> list[str]:
    return [b.strip() for b in str(config.getoption("--backends")).split(",") if b.strip()]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" in metafunc.fixturenames:
        params = [pytest.param(b, marks=[pytest.mark.postgres] if b == "postgresql" else []) for b in
                  _backends(metafunc.config)]
        metafunc.parametrize("backend", params, scope="function")


class PostgresServer:
    """Test databases on one PostgreSQL server: a migrated template per session, one clone per test."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self.prefix = f"m2t_t{uuid.uuid4().hex[:8]}"
        self.template: str | None = None
        self._lock = threading.Lock()
        self._drops: queue.Queue[str | None] = queue.Queue()
        self._dropper = threading.Thread(target=self._drop_loop, name="pg-drop", daemon=True)
        self._dropper.start()

    def admin(self) -> Any:
        """An autocommit psycopg connection to the admin database."""
        import psycopg

        return psycopg.connect(self.admin_url, autocommit=True, connect_timeout=5)

    def url(self, name: str) -> str:
        base = self.admin_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
        return f"{base}/{name}"

    def _ensure_template(self) -> str:
        with self._lock:
            if self.template is None:
                from mail2ticket.db.engine import make_engine
                from mail2ticket.db.schema import upgrade

                name = f"{self.prefix}_template"
                with self.admin() as conn:
                    conn.execute(f'CREATE DATABASE "{name}"')
                engine = make_engine(self.url(name))
                try:
                    upgrade(engine)
                finally:
                    engine.dispose()  # CREATE DATABASE … TEMPLATE needs the template without connections
                self.template = name
            return self.template

    def create(self, *, migrated: bool) -> str:
        template = self._ensure_template() if migrated else "template0"
        name = f"{self.prefix}_{uuid.uuid4().hex[:12]}"
        with self.admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        return name

    def drop_later(self, name: str) -> None:
        """DROP DATABASE waits for a checkpoint; doing it off the test's critical path saves ~0.1-3 s each."""
        self._drops.put(name)

    def _drop_loop(self) -> None:
        while (name := self._drops.get()) is not None:
            try:
                with self.admin() as conn:
                    conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            except Exception:  # noqa: BLE001, S110 - a leftover test database is harmless
                pass

    def close(self) -> None:
        if self.template is not None:
            self._drops.put(self.template)
        self._drops.put(None)
        self._dropper.join(timeout=120)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """The PostgreSQL server of this test session (skipped locally, failed in CI, when unreachable)."""
    server = PostgresServer(POSTGRES_ADMIN_URL)
    try:
        server.admin().close()
    except Exception as exc:  # noqa: BLE001
        server.close()
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"PostgreSQL not reachable at {POSTGRES_ADMIN_URL}: {exc}", pytrace=False)
        pytest.skip(f"PostgreSQL not reachable at {POSTGRES_ADMIN_URL}: {exc}")
    yield server
    server.close()


def _database(request: pytest.FixtureRequest, backend: str, tmp_path: Path, *, migrated: bool) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'mail2ticket.db'}"
        return
    if backend != "postgresql":
        raise pytest.UsageError(f"unknown backend {backend!r}; use sqlite or postgresql")
    server: PostgresServer = request.getfixturevalue("postgres_server")
    name = server.create(migrated=migrated)
    yield server.url(name)
    server.drop_later(name)


@pytest.fixture
def database_url(request: pytest.FixtureRequest, backend: str, tmp_path: Path) -> Iterator[str]:
    """A fresh database of the requested backend: PostgreSQL already at the head revision, SQLite empty."""
    yield from _database(request, backend, tmp_path, migrated=True)


@pytest.fixture
def factory(database_url: str) -> Iterator[sessionmaker[Session]]:
    """Sessions on a migrated database of the chosen backend (for tests of one stage without the daemon)."""
    engine = make_engine(database_url)
    upgrade(engine)
    yield make_sessionmaker(engine)
    engine.dispose()


@pytest.fixture
def empty_database_url(request: pytest.FixtureRequest, backend: str, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database (no tables, no Alembic revision) of the requested backend."""
    yield from _database(request, backend, tmp_path, migrated=False)


@pytest.fixture
def postgres_database_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh PostgreSQL database at the head revision (only when postgresql is a selected backend)."""
    if "postgresql" not in _backends(request.config):
        pytest.skip("PostgreSQL-only test; run with --backends sqlite,postgresql")
    server: PostgresServer = request.getfixturevalue("postgres_server")
    name = server.create(migrated=True)
    yield server.url(name)
    server.drop_later(name)


@pytest.fixture
def app(tmp_path: Path, database_url: str) -> App:
    """A mail2ticket installation in a temp dir with two queues, folder delivery, on the chosen backend."""
    application = App(root=tmp_path, database_url=database_url)
    application.write_config()
    return application


@pytest.fixture
def smtp_sink() -> Iterator[SmtpSink]:
    sink = SmtpSink().start()
    yield sink
    sink.stop()
