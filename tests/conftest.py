"""Shared fixtures: real databases (SQLite files, PostgreSQL databases), the app harness, an SMTP sink.

Backends: `--backends sqlite,postgresql` (or $M2T_TEST_BACKENDS); PostgreSQL tests create a fresh database
per test on the server at $M2T_TEST_POSTGRES_URL (default postgresql://postgres@127.0.0.1:5432/postgres).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.app import App
from tests.support.smtp_sink import SmtpSink

pytest_plugins = ["tests.support.imap_fixtures"]

POSTGRES_ADMIN_URL = os.environ.get("M2T_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--backends", default=os.environ.get("M2T_TEST_BACKENDS", "sqlite"),
                     help="comma-separated database backends to run database tests on: sqlite,postgresql")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" in metafunc.fixturenames:
        backends = [b.strip() for b in metafunc.config.getoption("--backends").split(",") if b.strip()]
        metafunc.parametrize("backend", backends, scope="function")


def _postgres_admin() -> object:
    import psycopg

    return psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True)


@pytest.fixture
def database_url(backend: str, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database of the requested backend."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'mail2ticket.db'}"
        return
    name = f"m2t_test_{uuid.uuid4().hex[:12]}"
    try:
        admin = _postgres_admin()
    except Exception as exc:  # noqa: BLE001
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"PostgreSQL not reachable at {POSTGRES_ADMIN_URL}: {exc}")
        pytest.skip(f"PostgreSQL not reachable: {exc}")
    with admin as conn:  # type: ignore[attr-defined]
        conn.execute(f'CREATE DATABASE "{name}"')
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    yield f"{base}/{name}"
    with _postgres_admin() as conn:  # type: ignore[attr-defined]
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


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
