"""Delivery journal: where the SQLite outbox records a sent mail, durably, without the database's write lock.

A sent mail must be recorded durably before the next one is sent, so that a crash doubles at most that one mail
(T20). Recorded in the database, every mail cost a write transaction of its own, and on SQLite, with one write
lock, each waited for a processing run to yield it: during a backlog the outbox sent 15-20 mails/s while the
acknowledgements piled up. The journal is a file beside the database, written only by the outbox worker: one
line per sent mail, synced before the next send. The worker folds the lines into the database (state `sent`, a
`mail_sent` event) once per batch (after a full batch in the next claim's transaction), at start-up before it
claims anything, and when the daemon stops, then empties the file.

Folding is idempotent: a line whose row is no longer `sending` under the owner named in the line (already
folded, or taken over after its lease ran out) changes nothing. A line torn by a crash has no line end and is
ignored: its mail is sent again once its lease runs out, as a mail sent but not yet recorded always was.
PostgreSQL needs none of this: its writers do not wait for each other, and several instances share the outbox.

The daemon holds an exclusive lock on the journal: a second daemon on the same database would empty the first
one's lines. `outbox retry` folds the lines too (without emptying the file), so that it never takes a sent mail
for a stuck one.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import os
from dataclasses import dataclass
from pathlib import Path

import structlog
from sqlalchemy import Engine

from mail2ticket.db.wal_checkpoint import has_wal_file

log = structlog.get_logger("mail2ticket.outbox")


@dataclass(frozen=True, slots=True)
class Sent:
    outbound_id: int
    owner: str
    sent_at: dt.datetime


class JournalInUse(Exception):
    """Another process holds the delivery journal: a second daemon on the same SQLite database."""


def journal_path(engine: Engine) -> Path | None:
    """Where the journal of a SQLite database file lies; None for PostgreSQL or an in-memory database."""
    database = engine.url.database
    if not has_wal_file(engine.url) or database is None or database.startswith("file:"):
        return None
    return Path(database + "-outbox-journal")


def read_entries(path: Path) -> list[Sent]:
    """Every complete line; a torn last line (a crash mid-write) and lines that do not parse are left out."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    out: list[Sent] = []
    for line in data.split(b"\n")[:-1]:
        try:
            outbound_id, owner, sent_at = line.decode().split("\t")
            out.append(Sent(int(outbound_id), owner, dt.datetime.fromisoformat(sent_at)))
        except ValueError:
            if line:
                log.warning("outbox_journal_line_skipped", path=str(path), line_bytes=len(line))
    return out


class DeliveryJournal:
    def __init__(self, path: Path, database: Path | None = None) -> None:
        self.path = path
        created = not path.exists()
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise JournalInUse(f"{path} is held by another process: is a second daemon running on this "
                               f"database? Stop it, or give each daemon its own database_url") from None
        if created:
            _owned_like(self._fd, database)
            _sync_directory(path.parent)
        self._size = os.fstat(self._fd).st_size
        if self._size and os.pread(self._fd, 1, self._size - 1) != b"\n":
            self._append(b"\n")  # end a torn line, so that it does not swallow the next one

    @classmethod
    def for_engine(cls, engine: Engine) -> DeliveryJournal | None:
        path = journal_path(engine)
        return None if path is None else cls(path, Path(str(engine.url.database)))

    def pending(self) -> bool:
        return self._size > 0

    def record(self, sent: Sent) -> None:
        """Append one sent mail and sync it: when this returns, a crash no longer sends that mail again."""
        self._append(f"{sent.outbound_id}\t{sent.owner}\t{sent.sent_at.isoformat()}\n".encode())

    def entries(self) -> list[Sent]:
        return read_entries(self.path)

    def clear(self) -> None:
        """Empty the journal once its lines are folded into the database (committed)."""
        os.ftruncate(self._fd, 0)
        os.fsync(self._fd)
        self._size = 0

    def close(self) -> None:
        os.close(self._fd)

    def _append(self, data: bytes) -> None:
        """All of `data`, synced, or nothing of it and an OSError (a short write on a full disk included)."""
        try:
            if os.write(self._fd, data) != len(data):
                raise OSError(errno.ENOSPC, "short write", str(self.path))
            os.fdatasync(self._fd)
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._size)
            raise
        self._size += len(data)


def _owned_like(fd: int, database: Path | None) -> None:
    """Give a journal that root created the database file's owner, as SQLite does with its -wal and -shm."""
    if database is None or os.geteuid() != 0:
        return
    with contextlib.suppress(OSError):
        st = database.stat()
        os.fchown(fd, st.st_uid, st.st_gid)


def _sync_directory(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
