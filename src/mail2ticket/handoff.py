"""Handing items between threads with a bounded queue, without a thread left blocked when the other side stops."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import TypeVar, cast

T = TypeVar("T")


def put_unless_stopped(into: queue.Queue[T], item: T, stop: threading.Event) -> bool:
    """Put `item`; False if `stop` was set first (a full queue then stays full: nobody waits for the item)."""
    while not stop.is_set():
        try:
            into.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def produced_ahead(items: Iterator[T], *, name: str) -> Iterator[T]:
    """`items`, produced one ahead by a thread called `name`, so producing the next overlaps using this one.
    The producer's exceptions surface here, in order; leaving the loop early stops the producer."""
    slot: queue.Queue[tuple[bool, object]] = queue.Queue(maxsize=1)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                if not put_unless_stopped(slot, (True, item), stop):
                    return
            put_unless_stopped(slot, (False, None), stop)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            put_unless_stopped(slot, (False, exc), stop)

    thread = threading.Thread(target=produce, name=name, daemon=True)
    thread.start()
    try:
        while True:
            more, value = slot.get()
            if not more:
                if isinstance(value, BaseException):
                    raise value
                return
            yield cast(T, value)
    finally:
        stop.set()
        thread.join()
