"""Large bytes (raw messages, attachment contents): written and read in pieces, never as one more copy.

Intake hands the bytes over as a sequence of parts (SMTP DATA arrives in ~1 MiB pieces). On SQLite a large
message is inserted as `zeroblob(size)` and then filled part by part through SQLite's incremental blob I/O,
so neither a joined copy nor SQLite's own bound-parameter and record copies of the whole message exist at
any moment (a 34 MB mail held three such copies before). On PostgreSQL (psycopg 3) a large value is written by
binary COPY in pieces and a large raw mail read in slices (`pg_pieces`). Small values, and psycopg2, take the
ordinary bound-parameter path.

On PostgreSQL, libpq keeps a connection's send and receive buffers at the size of the largest message they
carried, for the connection's life, and the pool keeps its connections for the daemon's: every pooled connection
that once carried a 25 MB mail held 25-75 MB from then on (the daemon grew from 327 to 524 MB over 100 such mails).
A connection that carried a value (or a slice) of `engine.POSTGRES_KEEP_LIMIT` or more is therefore closed when its
session ends instead of going back to the pool (`engine.carrying`, `engine.release_after`), and raw bytes are read
in binary format (hex text is twice the size).
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, cast

from sqlalchemy import ColumnElement, Integer, bindparam, case, func, insert, literal_column, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from mail2ticket.db import pg_pieces
from mail2ticket.db.direct import Direct
from mail2ticket.db.engine import POSTGRES_KEEP_LIMIT, carrying, release_after, room_for_blob
from mail2ticket.db.models import AttachmentContent, InboundMessage, RawMessage

# Below this a single bound parameter is cheaper than insert + blob open; above it the copies start to count.
STREAM_THRESHOLD = 1 << 20


def add_raw(session: Session, inbound_id: int, parts: Sequence[bytes], size: int) -> None:
    """Insert the raw bytes of inbound row `inbound_id` (already flushed) inside the current transaction."""
    if size >= STREAM_THRESHOLD and pg_pieces.streams(session):
        pg_pieces.copy_row(session, RawMessage.__tablename__, ("inbound_id", "data"), (pg_pieces.bigint(inbound_id),),
                           size, parts)
    elif size >= STREAM_THRESHOLD and _on_sqlite(session):
        _stream_into_zeroblob(session, _INSERT_ZEROBLOB, {"inbound_id": inbound_id, "size": size},
                              RawMessage, RawMessage.inbound_id == inbound_id, parts)
    else:
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        with carrying(session, size):
            _INSERT_RAW.execute(session, {"inbound_id": inbound_id, "data": data})


_INSERT_RAW = Direct(insert(RawMessage).values(inbound_id=bindparam("inbound_id"), data=bindparam("data")))
_INSERT_ZEROBLOB = Direct(
    insert(RawMessage).values(inbound_id=bindparam("inbound_id"), data=func.zeroblob(bindparam("size"))))


def read_raw(session: Session, inbound_id: int, piece: int = STREAM_THRESHOLD) -> tuple[int, Iterator[bytes]]:
    """Size and bytes (in pieces of `piece`, read lazily) of a stored message; LookupError if it is gone.

    On SQLite the pieces come from incremental blob I/O, so neither SQLite nor this process holds the whole
    message at once (reading the column would: SQLite assembles the blob, Python copies it). On PostgreSQL a message
    of `engine.POSTGRES_KEEP_LIMIT` or more comes in slices of that size (`pg_pieces.read_slices`), a smaller one whole.
    """
    if pg_pieces.streams(session):  # a large value in slices, so that libpq never holds it whole
        row = _RAW_SIZE_OR_DATA.first(session, {"inbound_id": inbound_id})
        if row is None:
            raise LookupError(f"raw bytes of inbound message {inbound_id} are missing")
        size, data = int(row[0]), row[1]
        if data is not None:
            return size, iter((bytes(data),))
        release_after(session, POSTGRES_KEEP_LIMIT)  # libpq keeps its receive buffer at the slice size
        return size, pg_pieces.read_slices(session, _RAW_SLICE, {"inbound_id": inbound_id}, size,
                                           POSTGRES_KEEP_LIMIT)
    if not _on_sqlite(session):  # psycopg2: whole, in text format
        data = _RAW_DATA.scalar(session, {"inbound_id": inbound_id})
        if data is None:
            raise LookupError(f"raw bytes of inbound message {inbound_id} are missing")
        release_after(session, len(data))
        return len(data), iter((bytes(data),))
    row = _RAW_ROWID.first(session, {"inbound_id": inbound_id})
    if row is None:
        raise LookupError(f"raw bytes of inbound message {inbound_id} are missing")
    rowid, size = int(row[0]), int(row[1])
    dbapi = _dbapi(session)

    def pieces() -> Iterator[bytes]:
        with _blob_errors(f"read {RawMessage.__tablename__}.data rowid {rowid}"), \
                dbapi.blobopen(RawMessage.__tablename__, "data", rowid, readonly=True) as blob:
            while chunk := blob.read(piece):
                yield chunk

    return size, pieces()


def read_ahead(session: Session, ids: Sequence[int], below: int) -> dict[int, tuple[tuple[str | None, list[str]],
                                                                           int | None, bytes | None]]:
    """Envelope, raw size and (for messages smaller than `below`) the raw bytes of the stored messages `ids`, in one
    query per 8 ids; an id without an intake row is left out, a size of None means the raw bytes are missing.

    For the parse-ahead reader, which asks for 8 at a time: one compiled statement, run on the DBAPI connection, instead
    of a snapshot and three statements per message.
    """
    found: dict[int, tuple[tuple[str | None, list[str]], int | None, bytes | None]] = {}
    for start in range(0, len(ids), READ_AHEAD_IDS):
        chunk = list(ids[start:start + READ_AHEAD_IDS])
        # A shorter chunk repeats its last id: one compiled statement serves every call.
        params: dict[str, Any] = {f"id{i}": chunk[min(i, len(chunk) - 1)] for i in range(READ_AHEAD_IDS)}
        params["below"] = below
        for inbound_id, envelope_from, envelope_to, size, data in _READ_AHEAD.all(session, params):
            found[inbound_id] = ((envelope_from, list(envelope_to or ())), None if size is None else int(size),
                                 None if data is None else bytes(data))
    return found


READ_AHEAD_IDS = 8  # ids per query of read_ahead (the parse-ahead reader asks for this many at a time)
_READ_AHEAD = Direct(
    select(InboundMessage.id, InboundMessage.envelope_from, InboundMessage.envelope_to, func.length(RawMessage.data),
           case((func.length(RawMessage.data) < bindparam("below", type_=Integer), RawMessage.data)))
    .outerjoin(RawMessage, RawMessage.inbound_id == InboundMessage.id)
    .where(InboundMessage.id.in_([bindparam(f"id{i}", type_=Integer) for i in range(READ_AHEAD_IDS)])),
    binary_results=True)

_RAW_DATA = Direct(select(RawMessage.data).where(RawMessage.inbound_id == bindparam("inbound_id")),
                   binary_results=True)
_RAW_SIZE_OR_DATA = Direct(
    select(func.length(RawMessage.data), case((func.length(RawMessage.data) < POSTGRES_KEEP_LIMIT, RawMessage.data)))
    .where(RawMessage.inbound_id == bindparam("inbound_id")), binary_results=True)
_RAW_SLICE = Direct(select(func.substring(RawMessage.data, bindparam("start", type_=Integer),
                                          bindparam("length", type_=Integer)))
                    .where(RawMessage.inbound_id == bindparam("inbound_id")), binary_results=True)
_RAW_ROWID = Direct(select(literal_column("rowid"), func.length(RawMessage.data))
                    .where(RawMessage.inbound_id == bindparam("inbound_id")))


def add_content(session: Session, sha256: str, data: bytes) -> None:
    """Store attachment bytes once per sha256 (nothing happens when they are stored already).

    A large attachment is streamed into a zeroblob on SQLite: binding it whole would make SQLite copy it twice
    (the bound value and the record it builds), 50 MB more peak memory for a 25 MB file.
    """
    if _CONTENT_KNOWN.scalar(session, {"sha256": sha256}) is not None:
        return
    size = len(data)
    if size >= STREAM_THRESHOLD and pg_pieces.streams(session):
        pg_pieces.copy_row(session, AttachmentContent.__tablename__, ("sha256", "size", "data"),
                           (sha256.encode(), pg_pieces.bigint(size)), size, _pieces_of(data))
    elif size >= STREAM_THRESHOLD and _on_sqlite(session):
        _stream_into_zeroblob(session, _INSERT_CONTENT_ZEROBLOB, {"sha256": sha256, "size": size},
                              AttachmentContent, AttachmentContent.sha256 == sha256, _pieces_of(data))
    else:
        with carrying(session, size):
            _INSERT_CONTENT.execute(session, {"sha256": sha256, "size": size, "data": data})


def _pieces_of(data: bytes) -> Iterator[memoryview]:
    view = memoryview(data)
    return (view[start : start + STREAM_THRESHOLD] for start in range(0, len(data), STREAM_THRESHOLD))


def _on_sqlite(session: Session) -> bool:
    return session.get_bind().dialect.name == "sqlite"


_CONTENT_KNOWN = Direct(select(AttachmentContent.sha256).where(AttachmentContent.sha256 == bindparam("sha256")))
_INSERT_CONTENT = Direct(insert(AttachmentContent).values(
    sha256=bindparam("sha256"), size=bindparam("size"), data=bindparam("data")))
_INSERT_CONTENT_ZEROBLOB = Direct(insert(AttachmentContent).values(
    sha256=bindparam("sha256"), size=bindparam("size"), data=func.zeroblob(bindparam("size"))))


def _stream_into_zeroblob(session: Session, insert_zeroblob: Direct, params: dict[str, Any],
                          table: type[RawMessage] | type[AttachmentContent], where: ColumnElement[bool],
                          pieces: Iterable[bytes | memoryview]) -> None:
    """Insert the row with a zeroblob of ``params["size"]`` bytes (a page cache raised to hold them first), then
    write `pieces` into its `data`, found by `where`, by SQLite incremental blob I/O.

    The rowid is asked rather than assumed (one indexed lookup), even where the key is an INTEGER PRIMARY KEY.
    """
    room_for_blob(session, params["size"])
    insert_zeroblob.execute(session, params)
    rowid = session.scalar(select(literal_column("rowid")).select_from(table).where(where))
    if rowid is None:
        raise RuntimeError(f"{table.__tablename__} row vanished inside its own transaction")
    with _blob_errors(f"write {table.__tablename__}.data rowid {rowid}"), \
            _dbapi(session).blobopen(table.__tablename__, "data", int(rowid)) as blob:
        for piece in pieces:
            blob.write(piece)


@contextlib.contextmanager
def _blob_errors(operation: str) -> Iterator[None]:
    """sqlite3's errors of blob I/O as SQLAlchemy's, as every statement raises them: callers tell a transient
    fault (OperationalError: a disk or lock error, tried again later) from a bug by the same exception types."""
    try:
        yield
    except sqlite3.Error as exc:
        raise DBAPIError.instance(f"blob {operation}", None, exc, sqlite3.Error) from exc


def _dbapi(session: Session) -> sqlite3.Connection:
    return cast(sqlite3.Connection, session.connection().connection.dbapi_connection)
