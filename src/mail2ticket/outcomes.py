"""The pipeline's control-flow vocabulary: a stage raises one of these, only the orchestrator catches them.

`Ignore` ends processing without a ticket (for example our own mail coming back); `Quarantine` parks the
message with its raw bytes and a reason for an admin. Neither is ever a silent drop.
"""

from __future__ import annotations


class Outcome(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Ignore(Outcome):
    """Stop processing this message on purpose; it is kept and marked ignored with the reason."""


class Quarantine(Outcome):
    """This message cannot be processed safely; it is kept with its raw bytes for an admin."""
