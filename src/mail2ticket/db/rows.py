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

from sqlalchemy import ColumnDefault, Table, bindparam, inspect, insert, update
from sqlalchemy.orm import Mapper, Session, make_transient_to_detached
from sqlalchemy.orm.attributes import set_committed_value

from mail2ticket.db.direct import Direct

T = TypeVar("T")

_INSERTS: dict[tuple[Table, frozenset[str]], tuple[Direct, tuple[tuple[str, Any], ...]]] = {}
_UPDATES: dict[tuple[Table, tuple[str, ...]], Direct] = {}


def insert_now(session: Session, obj: T) -> T:
    """INSERT `obj` (a new object, not added to the session) now and attach it to `session` as persistent."""
    mapper: Mapper[Any] = inspect(type(obj))
    values = obj.__dict__
    statement, columns = _insert_for(mapper, values)
    params = {}
    for key, column in columns:
        if key in values:
            params[column.key] = values[key]
        else:  # a Python-side default (the statement names only columns that have one, see _insert_for)
            default = column.default
            assert isinstance(default, ColumnDefault)
            values[key] = params[column.key] = default.arg(None) if default.is_callable else default.arg
    for attr in mapper.column_attrs:
        if attr.key not in values and attr.columns[0].server_default is None:
            values[attr.key] = None  # the column has no default: the row holds NULL
    # The primary key comes back from the INSERT; a server-side default stays unloaded, read when first used.
    values[mapper.get_property_by_column(mapper.primary_key[0]).key] = statement.scalar(session, params)
    make_transient_to_detached(obj)
    session.add(obj)
    # What a flush records for an object it inserted: the transaction (a SAVEPOINT included) that rolls back
    # expunges it, so a rolled-back message leaves no object whose primary key the next INSERT may reuse
    # (SQLite does). SessionTransaction._new is private; tests/test_processing_queries.py pins the behaviour.
    transaction = session._transaction  # noqa: SLF001
    assert transaction is not None
    transaction._new[inspect(obj)] = True  # noqa: SLF001
    return obj


def _insert_for(mapper: Mapper[Any], values: dict[str, Any]) -> tuple[Direct, tuple[tuple[str, Any], ...]]:
    """The INSERT … RETURNING id for the attributes set on an object, and the (attribute, column) pairs it binds."""
    table = mapper.local_table
    assert isinstance(table, Table)
    given = frozenset(attr.key for attr in mapper.column_attrs if attr.key in values)
    found = _INSERTS.get((table, given))
    if found is None:
        columns = tuple(
            (attr.key, attr.columns[0]) for attr in mapper.column_attrs
            if attr.key in given or (attr.columns[0].default is not None and not attr.columns[0].primary_key))
        (pk,) = mapper.primary_key
        statement = insert(table).values({column: bindparam(column.key) for _, column in columns}).returning(pk)
        found = _INSERTS[(table, given)] = (Direct(statement), columns)
    return found


def update_now(session: Session, obj: object, **changes: Any) -> None:
    """UPDATE the columns `changes` of the persistent `obj` now; they become its loaded (unchanged) values."""
    mapper: Mapper[Any] = inspect(type(obj))
    table = mapper.local_table
    assert isinstance(table, Table)
    (pk,) = mapper.primary_key
    names = tuple(sorted(changes))
    statement = _UPDATES.get((table, names))
    if statement is None:
        statement = _UPDATES[(table, names)] = Direct(
            update(table).where(pk == bindparam("_pk")).values({name: bindparam(name) for name in names}))
    assert pk.key is not None
    statement.execute(session, {"_pk": getattr(obj, pk.key), **changes})
    for name, value in changes.items():
        set_committed_value(obj, name, value)
