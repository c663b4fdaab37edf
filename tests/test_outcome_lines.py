"""Processing's outcome lines are logged only for what was stored: after the commit, never for a rolled-back
savepoint or a failed transaction (the run-level case is in test_processing_stream.py)."""

from __future__ import annotations

from typing import Any

import pytest

from mail2ticket.pipeline.outcome_lines import OutcomeLines


class Written(list[tuple[str, dict[str, Any]]]):
    def __call__(self, event: str, **fields: Any) -> None:
        self.append((event, fields))


def test_lines_of_a_rolled_back_savepoint_are_dropped_and_the_rest_written_after_the_commit() -> None:
    lines, written = OutcomeLines(), Written()
    with lines.after_commit():
        with lines.rolled_back_with():
            lines.add(written, "message_processed", inbound_id=1)
        with pytest.raises(RuntimeError), lines.rolled_back_with():
            lines.add(written, "message_processed", inbound_id=2)
            raise RuntimeError("flush failed when the savepoint was released")
        lines.add(written, "processing_deferred", inbound_id=2)
        assert written == []  # nothing before the commit
    assert written == [("message_processed", {"inbound_id": 1}), ("processing_deferred", {"inbound_id": 2})]


def test_a_failed_transaction_writes_nothing_and_an_inner_one_keeps_the_outer_lines() -> None:
    lines, written = OutcomeLines(), Written()
    with pytest.raises(RuntimeError), lines.after_commit():
        lines.add(written, "message_processed", inbound_id=1)
        raise RuntimeError("commit failed")
    with lines.after_commit():
        lines.add(written, "message_processed", inbound_id=2)
        with lines.after_commit():
            lines.add(written, "processing_deferred", inbound_id=3)
        assert written == [("processing_deferred", {"inbound_id": 3})]
    assert written == [("processing_deferred", {"inbound_id": 3}), ("message_processed", {"inbound_id": 2})]


def test_a_line_that_cannot_be_written_does_not_stop_the_others() -> None:
    lines, written = OutcomeLines(), Written()

    def broken(event: str, **fields: Any) -> None:
        raise OSError("stderr closed")

    with lines.after_commit():
        lines.add(broken, "message_processed", inbound_id=1)
        lines.add(written, "message_processed", inbound_id=2)
    assert written == [("message_processed", {"inbound_id": 2})]
