"""The in-process write gate of SQLite: writers take turns in arrival order, and its accounting tells an operator
who held the one write lock and who waited for it (`mail2ticket_sqlite_write_lock_*` on /metrics)."""

from __future__ import annotations

import threading

from mail2ticket.db.write_gate import WriteGate, thread_kind


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
        threading.Event().wait(0.001)
    release.set()
    for t in threads:
        t.join(10)

    usage = gate.usage()
    assert order == ["process", "intake"]
    assert set(usage) == {"process", "intake-commit"}
    assert usage["process"].transactions == 1 and usage["intake-commit"].transactions == 1
    assert usage["intake-commit"].waited > 0 and usage["process"].held >= usage["intake-commit"].waited


def test_thread_kind_drops_the_number_of_a_pool_thread() -> None:
    assert [thread_kind(n) for n in ("process_0", "outbox_12", "intake-commit", "parse-ahead-1", "MainThread")] == [
        "process", "outbox", "intake-commit", "parse-ahead", "MainThread"]
