"""The status line and the backlog gauges come from one moment of the database, and reading them writes nothing."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import event, update
from sqlalchemy.orm import Session, sessionmaker

from mail2ticket.db.engine import unit_of_work
from mail2ticket.db.models import InboundMessage, InboundState, Ticket
from mail2ticket.metrics import read_snapshot


def _waiting_mail(factory: sessionmaker[Session]) -> int:
    with unit_of_work(factory) as session:
        row = InboundMessage(source="smtp", dedupe_scope="mail", sha256="0" * 64, content_hash="1" * 64, size=10)
        session.add(row)
        session.flush()
        return row.id


def test_counts_come_from_one_moment_while_processing_commits(factory: sessionmaker[Session]) -> None:
    """Processing stores a mail (its ticket and its done state in one commit) while the status query runs: the
    gauges show the mail either waiting or made into a ticket, never both (an operator would see a backlog of
    mails that already have their tickets), and the query does not hold up that writer."""
    inbound_id = _waiting_mail(factory)
    engine = factory.kw["bind"]
    statements: list[str] = []

    def process_the_mail_midway(conn: object, cursor: object, statement: str, *args: object) -> None:
        statements.append(statement)
        if len(statements) == 1:  # after the status query's first count, from another connection
            with unit_of_work(factory) as session:
                ticket = Ticket(number="2026-000001", queue="buergerbuero", subject="Anfrage")
                session.add(ticket)
                session.flush()
                session.execute(update(InboundMessage).where(InboundMessage.id == inbound_id)
                                .values(state=InboundState.DONE, ticket_id=ticket.id))

    event.listen(engine, "after_cursor_execute", process_the_mail_midway)
    try:
        snapshot = read_snapshot(factory, dt.datetime.now(dt.UTC))
    finally:
        event.remove(engine, "after_cursor_execute", process_the_mail_midway)
    assert snapshot.ok
    assert (snapshot.inbound_backlog, snapshot.tickets_today) in {(1, 0), (0, 1)}
    with unit_of_work(factory) as session:  # the writer's commit stands
        assert session.get(InboundMessage, inbound_id).state == InboundState.DONE  # type: ignore[union-attr]
