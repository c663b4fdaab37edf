"""SQLite: WAL checkpoints in a thread of their own, not inside somebody's commit.

By default SQLite copies the WAL back into the database file inside the commit that takes the WAL past 1,000
pages, so every ~4 MB of writes one commit also copies them and fsyncs the database. Whoever's commit that is
waits for it: a relay for its 250, or a processing run holding the write lock that the relay's intake commit
waits for. Measured on a processing drain: commits took 10-25 ms, the checkpointing ones 150-250 ms.

`WalCheckpointer` runs PASSIVE checkpoints on its own connection, woken by commits and at most every
`min_interval` seconds. PASSIVE never waits for readers or writers and never blocks them, so a commit only
appends to the WAL. A commit still checkpoints itself when the WAL passes BACKSTOP_PAGES (set on the
process's connections by `make_engine(..., background_checkpoints=True)`): should the thread fall behind, or
writers never leave it a moment to finish, the WAL stays bounded as before, only at a larger size.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from typing import Any

import structlog
from sqlalchemy import Engine, event

log = structlog.get_logger("mail2ticket.db")

BACKSTOP_PAGES = 8192  # 32 MiB of 4 KiB pages
MIN_INTERVAL_SECONDS = 0.5
TRUNCATE_SECONDS = 30.0


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
        path = engine.url.database
        if engine.dialect.name != "sqlite" or not path or path == ":memory:":
            raise ValueError(f"no SQLite database file to checkpoint: {engine.url!r}")
        self.engine = engine
        self.path = path
        self.min_interval = min_interval
        self.checkpoints = 0  # completed PASSIVE checkpoints (for tests and curiosity)
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
        # Autocommit (no transaction of its own, which would pin a snapshot), and no busy wait: PASSIVE takes
        # what it can get and the next commit brings it back.
        connection = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        failing = False
        try:
            while True:
                self._wake.wait()
                if self._stop.is_set():
                    return
                self._wake.clear()
                try:
                    connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                except sqlite3.Error as exc:
                    if not failing:  # once per spell of failures, not once per commit
                        log.warning("wal_checkpoint_failed", error=str(exc))
                    failing = True
                else:
                    failing = False
                    self.checkpoints += 1
                self._stop.wait(self.min_interval)
        finally:
            connection.close()
