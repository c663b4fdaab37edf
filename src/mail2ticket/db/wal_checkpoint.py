"""SQLite: WAL checkpoints in a thread of their own, not inside somebody's commit.

By default SQLite copies the WAL back into the database file inside the commit that takes the WAL past 1,000
pages, so every ~4 MB of writes one commit also copies them and fsyncs the database. Whoever's commit that is
waits for it: a relay for its 250, or a processing run holding the write lock that the relay's intake commit
waits for. Measured on a processing drain: commits took 10-25 ms, the checkpointing ones 150-250 ms.

`WalCheckpointer` runs PASSIVE checkpoints on its own connection, `min_interval` seconds after a commit woke
it (SQLAlchemy's "commit" event comes just before the COMMIT), and once more FOLLOW_UP_SECONDS later.
PASSIVE never waits for readers or writers and never blocks them, so a commit only appends to the WAL. A commit
still checkpoints itself when the WAL passes BACKSTOP_PAGES (set on the process's connections by
`make_engine(..., background_checkpoints=True)`): should the thread fall behind, or writers never leave it a
moment to finish, the WAL stays bounded as before, only at a larger size.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from typing import Any

import structlog
from sqlalchemy import Engine, event
from sqlalchemy.engine import URL, make_url

log = structlog.get_logger("mail2ticket.db")

BACKSTOP_PAGES = 8192  # 32 MiB of 4 KiB pages
MIN_INTERVAL_SECONDS = 0.5
FOLLOW_UP_SECONDS = 10.0
TRUNCATE_SECONDS = 30.0


def has_wal_file(url: str | URL) -> bool:
    """Whether `url` is an SQLite database in a file (whose WAL a `WalCheckpointer` can checkpoint)."""
    parsed = make_url(url)
    return parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:")


class WalNotTruncated(RuntimeError):
    """The WAL could not be emptied: what was deleted may stay readable in it until a later checkpoint."""


def truncate_wal(cursor: Any) -> None:
    """Copy the whole WAL into the database and empty it (after an erase, so deleted bytes leave the disk).

    While another connection checkpoints (a daemon's `WalCheckpointer`) SQLite answers busy at once, without
    its busy handler, and does nothing: so this asks again until it is done, or raises WalNotTruncated.
    """
    deadline = time.monotonic() + TRUNCATE_SECONDS
    while True:
        busy, _, _ = cursor.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        if not busy:
            return
        if time.monotonic() > deadline:
            raise WalNotTruncated(f"the WAL could not be emptied within {TRUNCATE_SECONDS:.0f} s: other "
                                  "connections kept reading or checkpointing; run the command again")
        time.sleep(0.05)


class WalCheckpointer:
    """Checkpoints the WAL of `engine`'s SQLite file soon after its commits; `start()`, then `stop()`."""

    def __init__(self, engine: Engine, *, min_interval: float = MIN_INTERVAL_SECONDS) -> None:
        if not has_wal_file(engine.url) or engine.url.database is None:
            raise ValueError(f"no SQLite database file to checkpoint: {engine.url!r}")
        self.engine = engine
        self.path = engine.url.database
        self.min_interval = min_interval
        self.checkpoints = 0  # completed PASSIVE checkpoints (for tests and curiosity)
        self._failing = False
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="wal-checkpoint", daemon=True)

    def start(self) -> None:
        event.listen(self.engine, "commit", self._on_commit)
        self._thread.start()

    def stop(self) -> None:
        if event.contains(self.engine, "commit", self._on_commit):
            event.remove(self.engine, "commit", self._on_commit)
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def _on_commit(self, _connection: Any) -> None:
        self._wake.set()

    def _run(self) -> None:
        connection: sqlite3.Connection | None = None
        follow_up = False
        try:
            while True:
                woken = self._wake.wait(timeout=FOLLOW_UP_SECONDS if follow_up else None)
                # The "commit" event fires before the COMMIT itself: let it land first.
                if self._stop.wait(self.min_interval):
                    return
                self._wake.clear()
                connection = connection or self._connect()
                behind = connection is None or self._checkpoint(connection)
                # Once more a while later: for frames a reader's snapshot held back, or a commit slower than
                # min_interval; then idle until the next commit.
                follow_up = woken or behind
        finally:
            if connection is not None:
                connection.close()

    def _connect(self) -> sqlite3.Connection | None:
        """Its own connection, opened once the database is in WAL mode (one opened before sees no WAL)."""
        try:  # autocommit: no transaction of its own, which would pin a snapshot
            connection = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            self._failed(exc)
            return None
        try:
            if connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
                # Whether the database file is synced before the WAL is reused is this connection's setting.
                connection.execute("PRAGMA synchronous=FULL")
                return connection
        except sqlite3.Error as exc:
            self._failed(exc)
        connection.close()
        return None

    def _checkpoint(self, connection: sqlite3.Connection) -> bool:
        """One PASSIVE checkpoint; whether frames were left in the WAL (or it failed)."""
        try:
            _, log_frames, copied = connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error as exc:
            self._failed(exc)
            return True
        self._failing = False
        self.checkpoints += 1
        return bool(log_frames > copied)

    def _failed(self, exc: sqlite3.Error) -> None:
        if not self._failing:  # once per spell of failures, not once per commit
            log.warning("wal_checkpoint_failed", error=str(exc), note="commits checkpoint at the backstop")
        self._failing = True
