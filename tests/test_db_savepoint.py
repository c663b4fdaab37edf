"""`db.savepoint` and `db.direct`: a message's savepoint without the ORM's nested transaction, statements run
on the DBAPI connection.

Processing stores up to 64 messages per transaction, each in its own savepoint. A message that fails must
leave nothing behind, neither rows nor objects in the session (SQLite hands a rolled-back rowid to the next
ticket), and the messages before it must be kept. A failure that ends the whole transaction must say so,
because then nothing of it is stored.
"""

from __future__ import annotations

import contextlib
import datetime as dt

import pytest
from sqlalchemy import bindparam, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from mail2ticket.db.direct import Direct
from mail2ticket.db.models import Event, Participant, Ticket
from mail2ticket.db.rows import insert_now
from mail2ticket.db.savepoint import TransactionLost, savepoint

NOW = dt.datetime(2026, 11, 25, 9, 30, tzinfo=dt.UTC)


def new_ticket(number: str, **more: object) -> Ticket:
    return Ticket(number=number, queue="buergerbuero", subject="Sperrmüll", requester="erika@example.org",
                  created_at=NOW, updated_at=NOW, **more)


def numbers(factory: sessionmaker[Session]) -> list[str]:
    with factory() as session:
        return list(session.scalars(select(Ticket.number).order_by(Ticket.number)))


def test_a_failed_message_leaves_nothing_and_the_ones_before_it_are_kept(factory: sessionmaker[Session]) -> None:
    with factory.begin() as session:
        with savepoint(session):
            first = insert_now(session, new_ticket("2026-000001"))
        with pytest.raises(RuntimeError), savepoint(session):
            gone = insert_now(session, new_ticket("2026-000002"))
            first.status = "open"  # changed by the failed message: read again from the database
            raise RuntimeError("the message fails after its ticket was written")
        assert gone not in session and first in session
        assert first.status == "new"
        kept = insert_now(session, new_ticket("2026-000003"))  # may get the rolled-back id on SQLite
        assert session.get(Ticket, kept.id) is kept
    assert numbers(factory) == ["2026-000001", "2026-000003"]


def test_pending_changes_of_a_message_are_written_with_it(factory: sessionmaker[Session]) -> None:
    with factory.begin() as session:
        with savepoint(session):
            ticket = insert_now(session, new_ticket("2026-000001"))
            ticket.status = "open"
        assert not session.dirty
        with pytest.raises(RuntimeError), savepoint(session):
            raise RuntimeError("a later message fails")
    with factory() as session:
        assert session.scalars(select(Ticket.status)).all() == ["open"]


def test_a_failed_message_takes_back_what_its_inner_steps_wrote(factory: sessionmaker[Session]) -> None:
    # With keep_open a savepoint that succeeded stays open until the commit (PostgreSQL): the rollback of the outer
    # one must still go back to the outer one, not to the inner savepoint left open last.
    with factory.begin() as session:
        with pytest.raises(RuntimeError), savepoint(session, keep_open=True):
            insert_now(session, new_ticket("2026-000001"))
            with savepoint(session, keep_open=True):
                insert_now(session, new_ticket("2026-000002"))
            raise RuntimeError("the message fails after an inner step succeeded")
        insert_now(session, new_ticket("2026-000003"))
    assert numbers(factory) == ["2026-000003"]


def test_a_transaction_of_many_messages_keeps_all_but_the_failed_ones(factory: sessionmaker[Session]) -> None:
    with factory.begin() as session:
        for n in range(1, 71):  # more than a batch of processing or intake holds; the first 8 kept open
            with contextlib.suppress(RuntimeError), savepoint(session, keep_open=n <= 8):
                insert_now(session, new_ticket(f"2026-{n:06d}"))
                if n % 5 == 0:
                    raise RuntimeError("every fifth message fails")
    assert numbers(factory) == [f"2026-{n:06d}" for n in range(1, 71) if n % 5]


def test_a_failed_flush_ends_the_transaction_and_says_so(factory: sessionmaker[Session]) -> None:
    with pytest.raises(TransactionLost), factory.begin() as session:
        with savepoint(session):
            insert_now(session, new_ticket("2026-000001"))
        with savepoint(session):
            session.add(new_ticket("2026-000001"))  # the same number: the flush fails
    assert numbers(factory) == []


def test_direct_statements_raise_what_sqlalchemy_raises_and_convert_types(factory: sessionmaker[Session]) -> None:
    insert_participant = Direct(insert(Participant).values(
        ticket_id=bindparam("ticket_id"), address=bindparam("address"), role=bindparam("role")))
    event_detail = Direct(select(Event.detail, Event.created_at).where(Event.id == bindparam("id")))
    insert_event = Direct(insert(Event).values(type=bindparam("type"), detail=bindparam("detail"),
                                               created_at=bindparam("created_at")).returning(Event.id))
    with factory.begin() as session:
        ticket = insert_now(session, new_ticket("2026-000001"))
        params = {"ticket_id": ticket.id, "address": "erika@example.org", "role": "requester"}
        insert_participant.execute(session, params)
        with pytest.raises(IntegrityError), savepoint(session):
            insert_participant.execute(session, params)  # a unique key: the error callers retry on
        event_id = insert_event.scalar(session, {"type": "x", "detail": {"grund": "Prüfung"}, "created_at": NOW})
        # The values as the ORM reads them: JSON decoded, the time zone-aware datetime written.
        assert event_detail.first(session, {"id": event_id}) == ({"grund": "Prüfung"}, NOW)
        assert tuple(session.execute(select(Event.detail, Event.created_at).where(Event.id == event_id)).one()) \
            == ({"grund": "Prüfung"}, NOW)
    with factory() as session:
        assert session.scalars(select(Participant.address)).all() == ["erika@example.org"]
