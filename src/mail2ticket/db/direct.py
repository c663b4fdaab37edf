"""The hot statements: compiled once per dialect, then run on the DBAPI connection of the session.

SQLAlchemy's Core spends ~65 µs on every execution (cache key, parameter construction, bind processing, result
set-up), while SQLite inserts a row in ~10 µs. Processing runs about fifteen statements per mail, so the ones
on its hot path are compiled by SQLAlchemy once per dialect, keeping the SQL portable and the bind types
SQLAlchemy's, and executed directly on the DBAPI connection of the session: in its transaction and its
savepoint, as if `session.connection().execute()` had run them.

What qualifies: statements whose parameters are single values (no expanding `IN` lists). `first` and `scalar`
convert the values of the row with the column types' result processors (JSON, a SQLite DATETIME); a cursor
from `execute` gives them as the driver returns them. With `binary_results`, PostgreSQL sends the row to psycopg (3)
in its binary format: a bytea value as its bytes, not as hex text of twice the size that the driver then decodes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler

_REQUIRED = object()  # a parameter the caller passes (not a literal of the statement)


@dataclass(frozen=True, slots=True)
class _Compiled:
    sql: str
    positional: bool
    # (the caller's parameter, its name in the SQL, the statement's own value or _REQUIRED, the bind processor)
    binds: tuple[tuple[str, str, Any, Callable[[Any], Any] | None], ...]
    results: tuple[Callable[[Any], Any] | None, ...]  # per column of a row it returns


class Direct:
    """One Core statement, compiled once per dialect and executed without SQLAlchemy's per-call machinery."""

    __slots__ = ("statement", "binary_results", "_by_dialect")

    def __init__(self, statement: ClauseElement, *, binary_results: bool = False) -> None:
        self.statement = statement
        self.binary_results = binary_results
        self._by_dialect: dict[str, _Compiled] = {}

    def execute(self, session: Session, params: Mapping[str, Any]) -> Any:
        """Run it in the session's transaction; the DBAPI cursor (for `fetchone`, `fetchall`)."""
        return self._run(session, params)[1]

    def first(self, session: Session, params: Mapping[str, Any]) -> tuple[Any, ...] | None:
        """The first row, its values converted as SQLAlchemy would; None if there is none."""
        compiled, cursor = self._run(session, params)
        row = cursor.fetchone()
        return None if row is None else _converted(row, compiled.results)

    def all(self, session: Session, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        """Every row, its values converted as SQLAlchemy would."""
        compiled, cursor = self._run(session, params)
        return [_converted(row, compiled.results) for row in cursor.fetchall()]

    def scalar(self, session: Session, params: Mapping[str, Any]) -> Any:
        """The first column of the first row, or None."""
        row = self.first(session, params)
        return None if row is None else row[0]

    def _run(self, session: Session, params: Mapping[str, Any]) -> tuple[_Compiled, Any]:
        connection = session.connection()
        compiled = self._by_dialect.get(connection.dialect.name) or self._compile(connection.dialect)
        values = [params[key] if value is _REQUIRED else value for key, _, value, _ in compiled.binds]
        for index, (_, _, _, process) in enumerate(compiled.binds):
            if process is not None:
                values[index] = process(values[index])
        if self.binary_results and connection.dialect.driver == "psycopg":  # psycopg2 and pg8000 know no binary=
            cursor = connection.connection.cursor(binary=True)
        else:
            cursor = connection.connection.cursor()
        bound: Any = values if compiled.positional else {
            name: value for (_, name, _, _), value in zip(compiled.binds, values)}
        try:
            cursor.execute(compiled.sql, bound)
        except connection.dialect.loaded_dbapi.Error as exc:
            # The same exception SQLAlchemy raises (IntegrityError, OperationalError, ...), which callers catch.
            raise DBAPIError.instance(compiled.sql, bound, exc, connection.dialect.loaded_dbapi.Error,
                                      dialect=connection.dialect) from exc
        return compiled, cursor

    def _compile(self, dialect: Dialect) -> _Compiled:
        compiled = self.statement.compile(dialect=dialect, compile_kwargs={"render_postcompile": True})
        assert isinstance(compiled, SQLCompiler)
        if compiled.insert_prefetch or compiled.update_prefetch:  # SQLAlchemy would compute these per execution
            missing = [column.key for column in [*compiled.insert_prefetch, *compiled.update_prefetch]]
            raise TypeError(f"Direct statements bind every column with a Python-side default; missing {missing}")
        if compiled.positional:
            assert compiled.positiontup is not None
            named = [(compiled.binds[name], name) for name in compiled.positiontup]
        else:  # the names as they appear in the SQL (a name with special characters is escaped there)
            named = [(bind, compiled.escaped_bind_names.get(name, name)) for bind, name in compiled.bind_names.items()]
        binds = []
        for bind, name in named:
            value = _REQUIRED if bind.required else bind.effective_value
            binds.append((bind.key, name, value, bind.type.dialect_impl(dialect).bind_processor(dialect)))
        columns = getattr(self.statement, "exported_columns", ())
        results = tuple(column.type.dialect_impl(dialect).result_processor(dialect, None) for column in columns)
        result = _Compiled(compiled.string, bool(compiled.positional), tuple(binds), results)
        self._by_dialect[dialect.name] = result
        return result


def _converted(row: Sequence[Any], processors: tuple[Callable[[Any], Any] | None, ...]) -> tuple[Any, ...]:
    return tuple(value if process is None or value is None else process(value)
                 for value, process in zip(row, processors))
