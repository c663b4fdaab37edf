"""The in-process write gate of SQLite: writers take turns in arrival order, and its accounting tells an operator
who held the one write lock and who waited for it (`mail2ticket_sqlite_write_lock_*` on /metrics)."""

from __future__ import annotations

import threading
import time

from mail2ticket.db.write_gate import WriteGate, thread_kind

KEPT_WAITING = 0.05  # seconds the test keeps the second writer queued: a lower bound of what must be counted


def test_usage_counts_holding_and_waiting_per_kind_of_thread() -> None:
    gate = WriteGate(timeout=10)
    holding, release = threading.Event(), threading.Event()
    order: list[str] = []

    def processing() -> None:
        with gate.held():
            with gate.held():  # a unit of work inside another one is the same transaction
                holding.set()
                release.wait(10)
                order.append("process")

    def intake() -> None:
        holding.wait(10)
        with gate.held():
            order.append("intake")

    threads = [threading.Thread(target=processing, name="process_0"),
               threading.Thread(target=intake, name="intake-commit")]
    for t in threads:
        t.start()
    holding.wait(10)
    while not gate.waiting():  # the intake writer queues behind the processing transaction
        time.sleep(0.001)
    time.sleep(KEPT_WAITING)
    release.set()
    for t in threads:
        t.join(10)

    usage = gate.usage()
    assert order == ["process", "intake"]
    assert set(usage) == {"process", "intake-commit"}
    assert usage["process"].transactions == 1 and usage["intake-commit"].transactions == 1
    assert usage["intake-commit"].waited >= KEPT_WAITING and usage["process"].held >= KEPT_WAITING


def test_a_writer_that_gives_up_waiting_is_counted_too() -> None:
    """After the gate's timeout a writer goes on without it; its wait and its transaction still count."""
    gate = WriteGate(timeout=KEPT_WAITING)
    holding, release = threading.Event(), threading.Event()

    def long_writer() -> None:
        with gate.held():
            holding.set()
            release.wait(10)

    holder = threading.Thread(target=long_writer, name="process_0")
    holder.start()
    holding.wait(10)

    def impatient() -> None:
        with gate.held():
            pass

    late = threading.Thread(target=impatient, name="outbox_0")
    try:
        late.start()
        late.join(10)
    finally:
        release.set()
        holder.join(10)

    usage = gate.usage()
    assert usage["outbox"].transactions == 1 and usage["outbox"].waited >= KEPT_WAITING
    assert not gate.waiting()
    with gate.held():  # the gate is free again for the next writer
        pass


def test_thread_kind_drops_the_number_of_a_pool_thread() -> None:
    assert [thread_kind(n) for n in ("process_0", "outbox_12", "intake-commit", "parse-ahead-1", "MainThread")] == [
        "process", "outbox", "intake-commit", "parse-ahead", "MainThread"]
