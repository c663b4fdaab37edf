"""Large bytes on PostgreSQL (psycopg 3), in pieces: written by binary COPY, read by `substring`.

A bound parameter goes to the server as one protocol message, which libpq copies whole into the connection's send
buffer; a value read comes as one message, which libpq keeps whole in its receive buffer and again in its result
before Python copies it. For a mail with a 25 MB attachment (34 MB of base64) that made the daemon's peak: 98 MB above
its RSS while processing read the mail back, 65 MB while intake stored it (the parts, their join for the parameter,
libpq's copy). COPY takes a row's data as a stream of messages instead, which psycopg sends in pieces of at most
128 KiB and flushes every 1 MiB, so the value never exists whole in this process or in libpq; reading `substring`s
of a stored value does the same the other way. Both stay inside the session's transaction and savepoint, as any
statement of it.

libpq keeps its buffers at the largest size they reached for the connection's life (1-2 MiB after such a COPY, a
slice's size after a read), so a connection that carried a value of `engine.POSTGRES_KEEP_LIMIT` or more still
closes when its session ends (`engine.release_after`): kept in the pool, such connections grew the daemon by 10 MB
over 20 mails with a 25 MB attachment.
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from mail2ticket.db.direct import Direct
from mail2ticket.db.engine import release_after

if TYPE_CHECKING:  # an optional dependency (the postgres extra)
    import psycopg

# PostgreSQL's binary COPY format: signature, flags, header extension length; a tuple is its field count, then
# each field as its length and its bytes; -1 as the field count ends the data.
_SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)
_TRAILER = struct.pack("!h", -1)


def streams(session: Session) -> bool:
    """Whether the session's database takes large values in pieces here (PostgreSQL through psycopg 3)."""
    dialect = session.get_bind().dialect
    return dialect.name == "postgresql" and dialect.driver == "psycopg"


def bigint(value: int) -> bytes:
    """A bigint field in the binary format."""
    return struct.pack("!q", value)


def copy_row(session: Session, table: str, columns: Sequence[str], fields: Sequence[bytes], size: int,
             pieces: Iterable[bytes | memoryview]) -> None:
    """Insert one row into `table` by binary COPY: `fields` (in the binary format, see `bigint`) for all but the last
    of `columns`, then the last column's `size` bytes as they come from `pieces`.

    Errors are SQLAlchemy's (IntegrityError, OperationalError, ...), as a statement of the session raises them. When
    the pieces do not add up to `size`, the COPY is cancelled and ValueError raised: the row is never stored.
    """
    head = bytearray(_SIGNATURE)
    head += struct.pack("!h", len(columns))
    for field in fields:
        head += struct.pack("!i", len(field)) + field
    head += struct.pack("!i", size)
    statement = f"COPY {table} ({', '.join(columns)}) FROM STDIN (FORMAT BINARY)"
    dbapi = cast("psycopg.Connection[Any]", session.connection().connection.dbapi_connection)
    with _as_sqlalchemy_errors(session, statement), dbapi.cursor() as cursor, cursor.copy(statement) as copy:
        copy.write(head)
        written = 0
        for piece in pieces:
            copy.write(piece)
            written += len(piece)
        if written != size:
            raise ValueError(f"{table}: {written} bytes arrived for a value of {size}")
        copy.write(_TRAILER)
    release_after(session, size)


def read_slices(session: Session, query: Direct, params: dict[str, Any], size: int, piece: int) -> Iterator[bytes]:
    """The `size` bytes of a stored value in slices of `piece`: `query` (with binary results) selects
    ``substring(value from :start for :length)``; `params` names the row. Read lazily, inside the session's
    transaction: once that has ended, the session would begin another one, on another connection."""
    for start in range(0, size, piece):
        if not session.in_transaction():
            raise RuntimeError("slices of a stored value read after the transaction that found it ended")
        data = query.scalar(session, {**params, "start": start + 1, "length": piece})
        if data is None or len(data) != min(piece, size - start):
            raise LookupError(f"stored value changed while it was read (at byte {start} of {size})")
        yield bytes(data)


@contextlib.contextmanager
def _as_sqlalchemy_errors(session: Session, statement: str) -> Iterator[None]:
    dbapi_error = session.connection().dialect.loaded_dbapi.Error
    try:
        yield
    except dbapi_error as exc:
        raise DBAPIError.instance(statement, None, exc, dbapi_error,
                                  dialect=session.connection().dialect) from exc
