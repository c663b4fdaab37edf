"""Writing one ORM object at once with a Core statement, instead of through the session's unit of work.

A flush of one new object costs several times the INSERT itself (change tracking, dependency sort, attribute
history). Processing writes a handful of rows per mail, each of which is needed (or at least harmless) in the
database at once, so `insert_now` writes the INSERT on the session's connection, in its transaction, and makes
the object persistent as if a flush had written it: the values it was created with, the column defaults the
statement applied and its primary key are its loaded state, and later changes to it are flushed as UPDATEs.

`update_now` is the same for an UPDATE of an object that is already persistent.
"""

from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy import Insert, Table, bindparam, inspect, update
from sqlalchemy.orm import Mapper, Session, make_transient_to_detached
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.sql import Update

T = TypeVar("T")

_INSERTS: dict[Table, Insert] = {}
_UPDATES: dict[tuple[Table, tuple[str, ...]], Update] = {}


def insert_now(session: Session, obj: T) -> T:
    """INSERT `obj` (a new object, not added to the session) now and attach it to `session` as persistent."""
    mapper: Mapper[Any] = inspect(type(obj))
    table = mapper.local_table
    assert isinstance(table, Table)
    values = obj.__dict__
    params = {attr.columns[0].key: values[attr.key] for attr in mapper.column_attrs if attr.key in values}
    statement = _INSERTS.get(table)
    if statement is None:
        statement = _INSERTS[table] = table.insert()
    result = session.connection().execute(statement, params)
    written = result.last_inserted_params()
    assert not isinstance(written, list)  # one row, not executemany
    (key,) = result.inserted_primary_key or (None,)
    for attr in mapper.column_attrs:
        column = attr.columns[0]
        if column.primary_key:
            values[attr.key] = key
        elif attr.key not in values and column.server_default is None:
            values[attr.key] = written.get(column.key)  # a Python-side default, or NULL
    # Anything else (a server-side default) stays unloaded and is read from the row when first used.
    make_transient_to_detached(obj)
    session.add(obj)
    # What a flush records for an object it inserted: the transaction (a SAVEPOINT included) that rolls back
    # expunges it, so a rolled-back message leaves no object whose primary key the next INSERT may reuse
    # (SQLite does). SessionTransaction._new is private; tests/test_processing_queries.py pins the behaviour.
    transaction = session._transaction  # noqa: SLF001
    assert transaction is not None
    transaction._new[inspect(obj)] = True  # noqa: SLF001
    return obj


def update_now(session: Session, obj: object, **changes: Any) -> None:
    """UPDATE the columns `changes` of the persistent `obj` now; they become its loaded (unchanged) values."""
    mapper: Mapper[Any] = inspect(type(obj))
    table = mapper.local_table
    assert isinstance(table, Table)
    (pk,) = mapper.primary_key
    names = tuple(sorted(changes))
    statement = _UPDATES.get((table, names))
    if statement is None:
        statement = _UPDATES[(table, names)] = (
            update(table).where(pk == bindparam("_pk")).values({name: bindparam(name) for name in names}))
    assert pk.key is not None
    session.connection().execute(statement, {"_pk": getattr(obj, pk.key), **changes})
    for name, value in changes.items():
        set_committed_value(obj, name, value)
