"""`db.rows`: objects written at once with a Core statement behave as if a flush had written them.

Processing relies on this: a ticket written with `insert_now` is changed later in the same transaction (its
`updated_at`, a link), and a message whose savepoint rolls back must leave no object behind whose id the next
ticket may get (SQLite reuses a rolled-back rowid).
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from mail2ticket.db.models import InboundMessage, Ticket
from mail2ticket.db.rows import insert_now, update_now

NOW = dt.datetime(2026, 11, 25, 9, 30, tzinfo=dt.UTC)


def new_ticket(number: str) -> Ticket:
    return Ticket(number=number, queue="buergerbuero", subject="Sperrmüll", requester="erika@example.org",
                  created_at=NOW, updated_at=NOW)


def test_an_inserted_ticket_is_persistent_with_its_defaults_and_later_changes_are_written(
        factory: sessionmaker[Session]) -> None:
    with factory.begin() as session:
        ticket = insert_now(session, new_ticket("2026-000001"))
        assert ticket in session and not session.new and not session.is_modified(ticket)
        assert (ticket.status, ticket.priority, ticket.tags, ticket.assignee) == ("new", "normal", [], None)
        assert session.get(Ticket, ticket.id) is ticket
        ticket.status = "open"  # a later change goes out with the next flush, as for a flushed object
        ticket_id = ticket.id
    with factory() as session:
        stored = session.get(Ticket, ticket_id)
        assert stored is not None
        assert (stored.number, stored.status, stored.language, stored.created_at) == ("2026-000001", "open", "de", NOW)


def test_a_rolled_back_savepoint_forgets_the_inserted_ticket(factory: sessionmaker[Session]) -> None:
    with factory.begin() as session:
        try:
            with session.begin_nested():
                gone = insert_now(session, new_ticket("2026-000001"))
                raise RuntimeError("the message fails after its ticket was written")
        except RuntimeError:
            pass
        assert gone not in session
        kept = insert_now(session, new_ticket("2026-000002"))  # may get the same id on SQLite
        assert kept in session
    with factory() as session:
        assert session.scalars(select(Ticket.number)).all() == ["2026-000002"]


def test_update_now_writes_at_once_and_leaves_nothing_to_flush(factory: sessionmaker[Session]) -> None:
    with factory.begin() as session:
        row = InboundMessage(source="smtp", dedupe_scope="smtp", envelope_from="erika@example.org",
                             envelope_to=["a@stadt.example"], received_at=NOW, size=10, sha256="0" * 64,
                             content_hash="1" * 64)
        session.add(row)
        session.flush()
        update_now(session, row, classification="human", attempts=1)
        assert not session.is_modified(row) and (row.classification, row.attempts) == ("human", 1)
        row_id = row.id
    with factory() as session:
        stored = session.get(InboundMessage, row_id)
        assert stored is not None and (stored.classification, stored.attempts) == ("human", 1)
