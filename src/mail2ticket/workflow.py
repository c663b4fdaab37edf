"""Ticket workflow: status changes, each one validated and recorded as an event.

Callers (the CLI, commands by mail) own the transaction.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy.orm import Session

from mail2ticket.db import repo
from mail2ticket.db.models import Ticket
from mail2ticket.runtime import Runtime

DEFAULT_STATUSES = ("new", "open", "in_progress", "waiting", "resolved", "closed")


class WorkflowError(ValueError):
    """A requested change is not allowed; the message is shown to the user as is."""


def statuses(runtime: Runtime) -> tuple[str, ...]:
    return DEFAULT_STATUSES


def change_status(session: Session, runtime: Runtime, ticket: Ticket, status: str, *, actor: str, via: str,
                  now: dt.datetime) -> bool:
    """Set the status; False when it already had it. Raises WorkflowError for an unknown status."""
    valid = statuses(runtime)
    if status not in valid:
        raise WorkflowError(f"unknown status {status!r}; valid statuses: {', '.join(valid)}")
    if ticket.status == status:
        return False
    old = ticket.status
    ticket.status = status
    ticket.updated_at = now
    ticket.closed_at = now if status == "closed" else None
    repo.add_event(session, "status_changed", ticket_id=ticket.id, actor=actor, old=old, new=status, via=via)
    return True
