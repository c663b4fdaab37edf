"""Delivery journal: where the SQLite outbox records a sent mail, durably, without the database's write lock.

A sent mail must be recorded durably before the next one is sent, so that a crash doubles at most that one mail
(T20). Recorded in the database, every mail cost a write transaction of its own, and on SQLite, with one write
lock, each waited for a processing run to yield it: during a backlog the outbox sent 15-20 mails/s while the
acknowledgements piled up. The journal is a file beside the database, written only by the outbox worker: one
line per sent mail, synced before the next send. The worker folds the lines into the database (state `sent`, a
`mail_sent` event) once per batch, and at start-up before it claims anything, then empties the file.

Folding is idempotent: a line whose row is no longer `sending` under the owner named in the line (already
folded, or taken over after its lease ran out) changes nothing. A line torn by a crash has no line end and is
ignored: its mail is sent again once its lease runs out, as a mail sent but not yet recorded always was.
PostgreSQL needs none of this: its writers do not wait for each other, and several instances share the outbox.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path

import structlog
from sqlalchemy import Engine

log = structlog.get_logger("mail2ticket.outbox")


@dataclass(frozen=True, slots=True)
class Sent:
    outbound_id: int
    owner: str
    sent_at: dt.datetime


class DeliveryJournal:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        size = os.fstat(self._fd).st_size
        self._pending = bool(size)
        if size and os.pread(self._fd, 1, size - 1) != b"\n":
            os.write(self._fd, b"\n")  # end a torn line, so that it does not swallow the next one

    @classmethod
    def for_engine(cls, engine: Engine) -> DeliveryJournal | None:
        """The journal beside a SQLite database file; None for PostgreSQL or an in-memory database."""
        database = engine.url.database
        if engine.dialect.name != "sqlite" or not database or database == ":memory:" or database.startswith("file:"):
            return None
        return cls(Path(database + "-outbox-journal"))

    def pending(self) -> bool:
        return self._pending

    def record(self, sent: Sent) -> None:
        """Append one sent mail and sync it: when this returns, a crash no longer sends that mail again."""
        line = f"{sent.outbound_id}\t{sent.owner}\t{sent.sent_at.isoformat()}\n".encode()
        os.write(self._fd, line)
        os.fdatasync(self._fd)
        self._pending = True

    def entries(self) -> list[Sent]:
        """Every complete line; a torn last line (a crash mid-write) and lines that do not parse are left out."""
        with open(self.path, "rb") as file:
            data = file.read()
        out: list[Sent] = []
        for line in data.split(b"\n")[:-1]:
            try:
                outbound_id, owner, sent_at = line.decode().split("\t")
                out.append(Sent(int(outbound_id), owner, dt.datetime.fromisoformat(sent_at)))
            except ValueError:
                log.warning("outbox_journal_line_skipped", path=str(self.path), line_bytes=len(line))
        return out

    def clear(self) -> None:
        """Empty the journal once its lines are folded into the database (committed)."""
        os.ftruncate(self._fd, 0)
        os.fsync(self._fd)
        self._pending = False

    def close(self) -> None:
        os.close(self._fd)
