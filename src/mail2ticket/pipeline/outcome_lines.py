"""Log lines that wait for their transaction: processing logs a message's outcome only once it is stored.

A processing run stores many messages in one transaction. Had each outcome been logged when decided, a run whose
commit then failed would have logged its messages as processed, then as deferred, then as processed again by the
run that stored them. The lines also wait for a message's savepoint: when it is rolled back, so are its lines.
Writing them after the commit also keeps their rendering out of SQLite's write lock.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

Line = tuple[Callable[..., Any], str, dict[str, Any]]


class OutcomeLines:
    def __init__(self) -> None:
        self._lines: list[Line] = []

    def add(self, write: Callable[..., Any], event: str, **fields: Any) -> None:
        """`write(event, **fields)` once the open transaction has committed (e.g. `log.info`)."""
        self._lines.append((write, event, fields))

    @contextlib.contextmanager
    def after_commit(self) -> Iterator[None]:
        """Around a unit of work: its lines are written if it ends without an exception, else dropped."""
        outer, self._lines = self._lines, []
        try:
            yield
            lines = self._lines
        finally:
            self._lines = outer
        for write, event, fields in lines:
            with contextlib.suppress(Exception):  # what is committed is returned and counted, logged or not
                write(event, **fields)

    @contextlib.contextmanager
    def rolled_back_with(self) -> Iterator[None]:
        """Around a savepoint: the lines added inside it are dropped if it raises (it was rolled back)."""
        mark = len(self._lines)
        try:
            yield
        except BaseException:
            del self._lines[mark:]
            raise
