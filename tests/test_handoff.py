"""`produced_ahead`: the import reads and stores the next chunk in a thread while it processes this one.

What the import relies on: chunks come in order, a failure while reading (an unreadable file) is reported
after the chunks before it were handed over, and an import that stops early leaves no thread behind.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from mail2ticket.handoff import produced_ahead


def test_items_arrive_in_order() -> None:
    assert list(produced_ahead(iter(range(100)), name="test-ahead")) == list(range(100))


def test_a_failure_of_the_producer_surfaces_after_the_items_before_it() -> None:
    def chunks() -> Iterator[int]:
        yield 1
        yield 2
        raise OSError("unreadable mbox")

    received: list[int] = []
    with pytest.raises(OSError, match="unreadable mbox"):
        for item in produced_ahead(chunks(), name="test-ahead"):
            received.append(item)
    assert received == [1, 2]


def test_stopping_early_ends_the_producer() -> None:
    produced: list[int] = []

    def endless() -> Iterator[int]:
        n = 0
        while True:
            produced.append(n)
            yield n
            n += 1

    for item in produced_ahead(endless(), name="test-ahead-endless"):
        if item == 3:
            break
    assert not any(thread.name == "test-ahead-endless" for thread in threading.enumerate())
    assert len(produced) <= 6  # one item ahead, not the whole stream
