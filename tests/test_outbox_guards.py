"""The loop/rate-limit guards read all their counts in one statement and decide exactly as the separate counts did."""

from __future__ import annotations

import datetime as dt
import itertools
import random

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from mail2ticket.config.model import LoopProtectionConfig
from mail2ticket.db import repo
from mail2ticket.db.engine import unit_of_work
from mail2ticket.db.models import OutboundMail, Ticket
from mail2ticket.db.outbox_queries import guard_counts
from mail2ticket.outbox.guards import refuse_automatic_mail

NOW = dt.datetime(2026, 1, 8, 12, 0, tzinfo=dt.UTC)
ADDRESSES = ["victim@example.org", "other@example.org", "third@example.org"]
AGES = [dt.timedelta(seconds=s) for s in (0, 30, 599, 600, 601, 1800, 3599, 3600, 3601, 80_000, 86_400, 86_401,
                                          200_000)]


def _separate_counts(session: Session, recipient: str, ticket_id: int | None) -> tuple[int, ...]:
    """The counts as the guards used to read them, one query each."""
    def tickets_since(since: dt.datetime) -> int:
        stmt = select(func.count()).select_from(Ticket).where(Ticket.requester == recipient, Ticket.created_at >= since)
        return int(session.scalar(stmt) or 0)

    recent, hour, day = NOW - dt.timedelta(minutes=10), NOW - dt.timedelta(hours=1), NOW - dt.timedelta(days=1)
    return (
        tickets_since(hour), tickets_since(recent),
        repo.automatic_mails_since(session, recipient=recipient, since=recent),
        repo.automatic_mails_since(session, recipient=recipient, since=hour),
        repo.automatic_mails_since(session, recipient=recipient, since=day),
        repo.automatic_mails_since(session, ticket_id=ticket_id, since=recent)
        if ticket_id is not None else 0,
    )


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_guard_counts_equal_the_separate_counts(factory: sessionmaker[Session], seed: int) -> None:
    """For random tickets and automatic/manual outbound mails around every window edge, one query = six counts."""
    rng = random.Random(seed)
    with unit_of_work(factory) as session:
        tickets = []
        for i in range(12):
            ticket = Ticket(number=f"2026-{seed}{i:05d}", queue="q", subject="s", requester=rng.choice(ADDRESSES),
                            created_at=NOW - rng.choice(AGES))
            session.add(ticket)
            tickets.append(ticket)
        session.flush()
        counter = itertools.count()
        for _ in range(60):
            n = next(counter)
            session.add(OutboundMail(
                ticket_id=rng.choice(tickets).id, template="ack", automatic=rng.random() < 0.8,
                recipient=rng.choice(ADDRESSES), message_id=f"<{seed}.{n}@x>", dedupe_key=f"{seed}.{n}",
                raw=b"x", created_at=NOW - rng.choice(AGES), next_attempt_at=NOW))
        session.flush()
        for address, ticket_id in itertools.product(ADDRESSES, [None, *(t.id for t in tickets[:4])]):
            counts = guard_counts(session, recipient=address, ticket_id=ticket_id,
                                  recent=NOW - dt.timedelta(minutes=10), hour=NOW - dt.timedelta(hours=1),
                                  day=NOW - dt.timedelta(days=1))
            assert (counts.tickets_hour, counts.tickets_recent, counts.mails_recent, counts.mails_hour,
                    counts.mails_day, counts.ticket_mails_recent) == _separate_counts(session, address, ticket_id)


@pytest.mark.parametrize(("tickets", "mails_recent", "mails_hour", "mails_day", "on_ticket", "expected"), [
    (0, 0, 0, 0, 0, None),
    (6, 0, 0, 0, 0, "sender_flood"),
    (2, 1, 1, 1, 0, "sender_burst"),
    (2, 0, 0, 0, 0, None),
    (1, 0, 5, 5, 0, "rate_limit_recipient_hour"),
    (1, 0, 0, 20, 0, "rate_limit_recipient_day"),
    (1, 0, 0, 0, 3, "rate_limit_ticket"),
])
def test_refusal_reasons_from_the_combined_counts(factory: sessionmaker[Session], tickets: int, mails_recent: int,
                                                  mails_hour: int, mails_day: int, on_ticket: int,
                                                  expected: str | None) -> None:
    """Each limit trips at its threshold, first hit wins, in the documented order."""
    loop = LoopProtectionConfig(per_recipient_per_hour=5, per_recipient_per_day=20, per_ticket_per_10_minutes=3)
    victim = "victim@example.org"
    with unit_of_work(factory) as session:
        own = Ticket(number="2026-800000", queue="q", subject="s", requester="staff@example.org", created_at=NOW)
        session.add(own)
        for i in range(tickets):
            session.add(Ticket(number=f"2026-9{i:05d}", queue="q", subject="s", requester=victim,
                               created_at=NOW - dt.timedelta(minutes=1)))
        session.flush()
        ages = ([dt.timedelta(minutes=1)] * mails_recent + [dt.timedelta(minutes=30)] * (mails_hour - mails_recent)
                + [dt.timedelta(hours=5)] * (mails_day - max(mails_hour, mails_recent)))
        for i, age in enumerate(ages):
            session.add(OutboundMail(ticket_id=None, template="ack", recipient=victim, message_id=f"<v{i}@x>",
                                     dedupe_key=f"v{i}", raw=b"x", created_at=NOW - age, next_attempt_at=NOW))
        for i in range(on_ticket):
            session.add(OutboundMail(ticket_id=own.id, template="ack", recipient=f"p{i}@example.org",
                                     message_id=f"<t{i}@x>", dedupe_key=f"t{i}", raw=b"x",
                                     created_at=NOW - dt.timedelta(minutes=2), next_attempt_at=NOW))
        session.flush()
        reason = refuse_automatic_mail(session, recipient=victim.upper(), ticket_id=own.id,
                                       own_addresses=frozenset({"buergerbuero@stadt.example"}),
                                       own_domain="stadt.example", loop=loop, now=NOW)
        assert reason == expected


def test_rows_added_but_not_flushed_are_counted(factory: sessionmaker[Session]) -> None:
    """The ticket being created in the same transaction counts even before anything flushed it (autoflush)."""
    with unit_of_work(factory) as session:
        for i in range(3):
            session.add(Ticket(number=f"2026-7{i:05d}", queue="q", subject="s", requester="victim@example.org",
                               created_at=NOW))
        counts = guard_counts(session, recipient="victim@example.org", ticket_id=None,
                              recent=NOW - dt.timedelta(minutes=10), hour=NOW - dt.timedelta(hours=1),
                              day=NOW - dt.timedelta(days=1))
        assert (counts.tickets_hour, counts.tickets_recent) == (3, 3)
