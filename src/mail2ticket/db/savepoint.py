"""One message's savepoint, without the ORM's nested transaction.

Processing and intake give every message of a transaction its own SAVEPOINT, so a message that fails leaves the
others intact. `Session.begin_nested()` costs ~235 µs here for a savepoint that SQLite takes and releases in
~3 µs (the ORM snapshots and merges its transaction state, Core runs its events), about a tenth of the whole
processing of a mail. This savepoint is the SQL statement itself, on the session's connection, and the ORM
state is put right by hand in the rare case that the message fails:

- on success the session is flushed (as the nested transaction's commit would), so nothing of this message
  is left pending to be written, or lost, with a later message;
- on failure the database goes back to the savepoint; the objects that appeared in the session during the
  message (rows that no longer exist, and SQLite may hand their ids out again) are expunged, and everything
  else is expired, so it is read again from the database when next used.

If the failure has ended the whole transaction (a flush that failed makes the session roll back), the
exception is `TransactionLost`: the caller's transaction is gone with every message in it.

`keep_open` (PostgreSQL's processing, a batch of at most 8 messages) leaves a savepoint that succeeded open for
the commit to release with the transaction: a RELEASE per message is one more round trip to the server (one
statement in fourteen of processing). Such a savepoint has a name of its own, so a later rollback goes back to
exactly its own savepoint. Only for a few per transaction: every savepoint opened after it nests inside it, and
PostgreSQL records a subtransaction's parent, so another session's visibility check walks the nest, and past 64
subtransactions in a transaction it does that through pg_subtrans (a 200-deep nest made a `count(*)` in another
session 20 times slower than 200 released savepoints).
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator
from typing import Any

from sqlalchemy.orm import Session

from mail2ticket.db import conversation_repo

_NAME = "m2t_message"
_NUMBERS = itertools.count(1)  # names of their own for savepoints kept open until the commit


class TransactionLost(Exception):
    """The session's transaction ended inside a message's savepoint; nothing of the transaction is stored."""


@contextlib.contextmanager
def savepoint(session: Session, *, keep_open: bool = False) -> Iterator[None]:
    """Run the block in a SAVEPOINT of the session's transaction; roll back to it if the block raises.

    `keep_open`: on PostgreSQL, leave it to the commit to release (see above); SQLite releases it at once anyway.
    """
    if session.new or session.dirty or session.deleted:
        session.flush()  # what came before belongs to the enclosing transaction, not to this savepoint
    known = set(session.identity_map.keys())
    connection = session.connection()
    release = not keep_open or connection.dialect.name != "postgresql"
    name = _NAME if release else f"{_NAME}_{next(_NUMBERS)}"
    cursor = connection.connection.cursor()
    cursor.execute(f"SAVEPOINT {name}")
    try:
        yield
        session.flush()
    except BaseException as exc:
        transaction = session.get_transaction()
        if transaction is None or not transaction.is_active:
            raise TransactionLost(f"transaction ended by {type(exc).__name__}") from exc
        cursor.execute(f"ROLLBACK TO SAVEPOINT {name}")
        cursor.execute(f"RELEASE SAVEPOINT {name}")
        _forget_since(session, known)
        raise
    else:
        if release:
            cursor.execute(f"RELEASE SAVEPOINT {name}")
    finally:
        conversation_repo.forget_fresh_tickets(session)


def _forget_since(session: Session, known: set[Any]) -> None:
    for key in [key for key in session.identity_map.keys() if key not in known]:
        if (obj := session.identity_map.get(key)) is not None:
            session.expunge(obj)
    for obj in list(session.new):
        session.expunge(obj)
    session.expire_all()
