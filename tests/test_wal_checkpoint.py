"""SQLite WAL checkpoints run in the background, so a relay's 250 does not wait for one (db/wal_checkpoint.py).

What an operator relies on: what was committed reaches the database file itself soon after (a file-level copy
of the database is not left weeks behind), the WAL beside it stays bounded however long the writes go on, and
stopping the daemon leaves no thread behind.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from mail2ticket.config import load_config
from mail2ticket.db.engine import unit_of_work
from mail2ticket.db.wal_checkpoint import BACKSTOP_PAGES, MIN_INTERVAL_SECONDS
from mail2ticket.retention import compact
from mail2ticket.runtime import Services
from tests.support.app import App, wait_until

PAGE = 4096


@pytest.fixture
def services(app: App) -> Iterator[Services]:
    if not app.database_url.startswith("sqlite"):
        pytest.skip("WAL checkpoints are SQLite's")
    built = Services.build(load_config(app.write_config()))
    with built.engine.begin() as conn:
        conn.execute(text("CREATE TABLE scratch (data BLOB)"))
    yield built
    built.close()


def database_file(services: Services) -> Path:
    assert services.engine.url.database is not None
    return Path(services.engine.url.database)


def rows_in_the_file_alone(path: Path) -> int:
    """Rows of `scratch` that a copy of the database file without its WAL holds (what reached the file)."""
    copy = path.with_name("copy-of-the-file-alone.db")
    shutil.copyfile(path, copy)
    connection = sqlite3.connect(copy)
    try:
        return int(connection.execute("SELECT count(*) FROM scratch").fetchone()[0])
    except sqlite3.OperationalError:  # not even the table has reached the file
        return -1
    finally:
        connection.close()
        copy.unlink()


def write(services: Services, size: int) -> None:
    with unit_of_work(services.factory) as session:
        session.execute(text("INSERT INTO scratch (data) VALUES (:data)"), {"data": os.urandom(size)})


def test_each_commit_reaches_the_database_file_without_a_commit_checkpointing(services: Services) -> None:
    """Commits with pauses between them (a quiet day): each reaches the file, and the WAL starts over instead
    of growing to the backstop."""
    with services.engine.connect() as conn:  # a connection of the daemon's pool
        assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == BACKSTOP_PAGES
    path = database_file(services)
    wal = path.with_name(path.name + "-wal")
    for count in range(1, 4):
        write(services, 200_000)  # far below the backstop: no commit checkpoints by itself
        wait_until(lambda: rows_in_the_file_alone(path) == count, timeout=10,  # noqa: B023 - used at once
                   message=f"commit {count} copied into the database file")
        time.sleep(2 * MIN_INTERVAL_SECONDS)  # quiet: the next commit finds the checkpoint thread idle
    assert wal.stat().st_size < 4 << 20


def test_the_wal_stays_bounded_under_writes_that_never_pause(services: Services) -> None:
    """Two writers back to back leave the background checkpoint no moment to restart the WAL; the backstop does."""
    path = database_file(services)
    wal = path.with_name(path.name + "-wal")
    largest = 0
    stop = threading.Event()

    def other_writer() -> None:
        while not stop.is_set():
            write(services, 256 << 10)

    thread = threading.Thread(target=other_writer)
    thread.start()
    try:
        for _ in range(3 * BACKSTOP_PAGES * PAGE // (1 << 20)):  # three backstops' worth of 1 MiB commits
            write(services, 1 << 20)
            largest = max(largest, wal.stat().st_size)
    finally:
        stop.set()
        thread.join()
    assert largest < 2 * BACKSTOP_PAGES * PAGE


def test_closing_the_services_stops_the_checkpoint_thread(app: App) -> None:
    if not app.database_url.startswith("sqlite"):
        pytest.skip("WAL checkpoints are SQLite's")
    services = Services.build(load_config(app.write_config()))
    checkpointer = services.checkpointer
    assert checkpointer is not None and checkpointer.running
    services.close()
    assert not checkpointer.running


def test_compacting_after_an_erase_empties_the_wal_while_another_connection_checkpoints(services: Services) -> None:
    """`person erase` and `purge` truncate the WAL so erased bytes leave the disk. A checkpoint of another
    connection (the running daemon's background one) holding the checkpoint lock at that moment makes SQLite
    answer busy at once: that must not turn the truncation into a silent no-op."""
    for _ in range(24):
        write(services, 1 << 20)
    with unit_of_work(services.factory) as session:
        session.execute(text("DELETE FROM scratch WHERE rowid % 2 = 0"))
    stop = threading.Event()

    def daemon_checkpoints() -> None:
        connection = sqlite3.connect(database_file(services), isolation_level=None)
        try:
            while not stop.is_set():
                connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        finally:
            connection.close()

    thread = threading.Thread(target=daemon_checkpoints)
    thread.start()
    try:
        compact(services.engine)
        wal = database_file(services).with_name(database_file(services).name + "-wal")
        assert wal.stat().st_size == 0
    finally:
        stop.set()
        thread.join()
