"""The SQLite processing stream: one parse-ahead pipeline that runs on from one batch of processing into the next.

A batch used to start an empty pipeline: its first messages waited for the reader and the parse workers, and
its last ones left the workers idle while they were stored. A stream reads on into the messages that wait after
the last one it read (`ParseAhead`'s `more`), so the next batch finds its first messages parsed (optimisation 33
in docs/benchmarks.md). Its ids ascend, so a reply is still stored after the mail it answers.

A stream ends when nothing more waits, after STREAM_MESSAGES, or when its owner ends it (a lost transaction, an
error, a batch of chosen messages, shutdown). The next one starts again from the oldest due message: one that
was deferred meanwhile lies behind the stream, and waits at most that long behind a backlog.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence

from sqlalchemy.orm import Session, sessionmaker

from mail2ticket.db import repo
from mail2ticket.db.engine import read_only
from mail2ticket.pipeline.parse_ahead import ParseAhead, Prepared

STREAM_MESSAGES = 2048  # messages one stream reads at most

OpenAhead = Callable[[Sequence[int], Callable[[int], list[int]]], ParseAhead]


class Stream:
    """Owns the running stream between batches."""

    def __init__(self, factory: sessionmaker[Session], clock: Callable[[], dt.datetime], open_ahead: OpenAhead,
                 *, max_bytes: int) -> None:
        self._factory = factory
        self._clock = clock
        self._open_ahead = open_ahead
        self._max_bytes = max_bytes
        self._ahead: ParseAhead | None = None

    def resume(self, batch: int) -> tuple[ParseAhead, Prepared] | None:
        """The stream and its next result: the running one's, or a new one's with up to `batch` messages once
        that is exhausted; None when nothing waits."""
        if self._ahead is not None:
            if isinstance(found := self._ahead.next(), Prepared):
                return self._ahead, found
            self.end()
        with read_only(self._factory) as session:
            ids = repo.waiting_inbound(session, self._clock(), limit=batch, max_bytes=self._max_bytes)
        if not ids:
            return None
        self._ahead = self._open_ahead(ids, self._refill(len(ids), batch)).__enter__()
        if isinstance(found := self._ahead.next(), Prepared):
            return self._ahead, found
        self.end()
        return None

    def end(self) -> None:
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            ahead.__exit__(None, None, None)

    def _refill(self, taken: int, batch: int) -> Callable[[int], list[int]]:
        """The stream's `more`: the messages waiting after id `after`, until it has taken STREAM_MESSAGES."""
        def more(after: int) -> list[int]:
            nonlocal taken
            if taken >= STREAM_MESSAGES:
                return []
            with read_only(self._factory) as session:
                ids = repo.waiting_inbound(session, self._clock(), limit=min(batch, STREAM_MESSAGES - taken),
                                           max_bytes=self._max_bytes, after=after)
            taken += len(ids)
            return ids

        return more
