"""Concurrent transactions and processes against one database: unique constraints and claims keep work single.

Threads each hold their own connection, so on PostgreSQL these are really concurrent transactions; on SQLite
they queue on the write lock (BEGIN IMMEDIATE), the single-writer path. Intake races use separate processes.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from mail2ticket.db import leases, repo
from mail2ticket.db.engine import make_engine, make_sessionmaker, unit_of_work
from mail2ticket.db.models import InboundMessage, InboundState, OutboundMail, OutboundState
from mail2ticket.db.schema import upgrade
from mail2ticket.intake import Envelope, store
from tests.support.app import wait_until
from tests.support.mails import citizen_mail

T = TypeVar("T")
NOW = dt.datetime(2031, 5, 4, 12, 0, tzinfo=dt.UTC)


@pytest.fixture
def factory(database_url: str) -> Any:
    engine = make_engine(database_url, pool_size=10)
    upgrade(engine)
    yield make_sessionmaker(engine)
    engine.dispose()


def _in_parallel(n: int, work: Callable[[int], T]) -> list[T]:
    """Run work(0..n-1) on n threads released at the same moment."""
    barrier = threading.Barrier(n)

    def run(i: int) -> T:
        barrier.wait()
        return work(i)

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(run, range(n)))


def test_ticket_numbers_are_unique_under_concurrent_transactions(factory: sessionmaker[Session]) -> None:
    """Many transactions drawing numbers at once never get the same one; only rolled-back draws leave gaps."""
    year = 2031

    def draw(i: int) -> list[tuple[int, bool]]:
        out = []
        for n in range(15):
            keep = (i + n) % 5 != 0
            try:
                with unit_of_work(factory) as session:
                    seq = repo.next_ticket_seq(session, year)
                    if not keep:
                        raise _Rollback(seq)
            except _Rollback as rb:
                seq = rb.seq
            out.append((seq, keep))
        return out

    draws = [d for per_thread in _in_parallel(8, draw) for d in per_thread]
    committed = [seq for seq, keep in draws if keep]
    assert len(committed) == len(set(committed)) == 8 * 15 - sum(1 for _, keep in draws if not keep)
    assert max(committed) <= len(draws)
    with unit_of_work(factory) as session:
        assert repo.next_ticket_seq(session, year) > max(committed)


class _Rollback(Exception):
    def __init__(self, seq: int) -> None:
        super().__init__(seq)
        self.seq = seq


def test_first_ticket_of_a_year_is_numbered_once_when_instances_race(factory: sessionmaker[Session]) -> None:
    """When the year's counter row does not exist yet, concurrent first draws create it once and get 1..n."""

    def draw(_i: int) -> int:
        with unit_of_work(factory) as session:
            return repo.next_ticket_seq(session, 2032)

    assert sorted(_in_parallel(6, draw)) == [1, 2, 3, 4, 5, 6]


INTAKE_WORKER = """
import json, sys
from mail2ticket.db.engine import make_engine, make_sessionmaker
from mail2ticket.intake import Envelope, store
factory = make_sessionmaker(make_engine(sys.argv[1]))
worker = int(sys.argv[2])
jobs = json.loads(sys.stdin.readline())
print("ready", flush=True)
sys.stdin.readline()  # go
results = []
for raw, key in jobs:
    raw = raw.encode("latin-1")
    if key:  # an IMAP refetch may come back with different bytes; the source identity must decide
        raw = b"X-Refetched-By: " + str(worker).encode() + b"\\r\\n" + raw
    envelope = Envelope("imap", mailbox="bauamt", source_key=key) if key else Envelope("smtp", rcpt_to=("bauamt@stadt.example",))
    stored = store(factory, raw, envelope)
    results.append([stored.inbound_id, stored.duplicate])
print(json.dumps(results), flush=True)
"""


def _race_intake(url: str, jobs: list[tuple[bytes, str | None]], processes: int = 4) -> list[list[list[Any]]]:
    """Store the same jobs from several processes started together; each process's [(id, duplicate)]."""
    payload = json.dumps([[raw.decode("latin-1"), key] for raw, key in jobs]) + "\n"
    procs = [subprocess.Popen([sys.executable, "-c", INTAKE_WORKER, url, str(i)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True) for i in range(processes)]
    try:
        for proc in procs:
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write(payload)
            proc.stdin.flush()
        for proc in procs:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.close()
        results = []
        for proc in procs:
            assert proc.stdout is not None
            results.append(json.loads(proc.stdout.readline()))
            proc.stdout.close()
            assert proc.wait(60) == 0
        return results
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


def test_concurrent_duplicate_deliveries_from_several_processes_store_one_row(
    database_url: str, factory: sessionmaker[Session]
) -> None:
    """The same mail handed to four instances at once (relay retries, IMAP refetches) is stored exactly once."""
    smtp_jobs: list[tuple[bytes, str | None]] = [(citizen_mail(subject=f"Anfrage {i}"), None) for i in range(20)]
    imap_jobs: list[tuple[bytes, str | None]] = [(citizen_mail(subject=f"Brief {i}"), f"imap:bauamt:INBOX:77:{i}")
                                                 for i in range(20)]
    results = _race_intake(database_url, smtp_jobs + imap_jobs)
    with unit_of_work(factory) as session:
        assert session.scalar(select(func.count()).select_from(InboundMessage)) == 40
    for position in range(40):
        outcomes = [per_process[position] for per_process in results]
        assert len({inbound_id for inbound_id, _ in outcomes}) == 1
        assert sum(1 for _, duplicate in outcomes if not duplicate) == 1


def _outbound(key: str, n: int) -> OutboundMail:
    return OutboundMail(template="ack", recipient=f"buerger{n}@example.org", message_id=f"<m{n}.{key}@stadt.example>",
                        dedupe_key=key, raw=b"Subject: x\r\n\r\nx\r\n", next_attempt_at=NOW, created_at=NOW)


def test_outbound_dedupe_key_admits_one_row_under_concurrent_inserts(factory: sessionmaker[Session]) -> None:
    """Concurrent transactions enqueueing a mail with the same dedupe key leave exactly one row; the rest fail."""

    def insert(i: int) -> bool:
        try:
            with unit_of_work(factory) as session:
                session.add(_outbound("ack:ticket:1", i))
                session.flush()
            return True
        except IntegrityError:
            return False

    assert sorted(_in_parallel(6, insert)) == [False] * 5 + [True]
    with unit_of_work(factory) as session:
        assert session.scalar(select(func.count()).select_from(OutboundMail)) == 1


def test_a_dead_senders_outbox_rows_are_taken_over_after_the_lease(factory: sessionmaker[Session]) -> None:
    """Rows left `sending` by an instance that died are claimed by another one only once the lease has run out."""
    with unit_of_work(factory) as session:
        session.add_all([_outbound(f"k{i}", i) for i in range(3)])
    lease = dt.timedelta(seconds=90)
    with unit_of_work(factory) as session:
        assert len(repo.claim_due_outbound(session, "dead:1:a", NOW, lease)) == 3
    with unit_of_work(factory) as session:
        assert repo.claim_due_outbound(session, "alive:2:b", NOW + dt.timedelta(seconds=89), lease) == []
    with unit_of_work(factory) as session:
        taken = repo.claim_due_outbound(session, "alive:2:b", NOW + dt.timedelta(seconds=91), lease)
        assert sorted(r.dedupe_key for r in taken) == ["k0", "k1", "k2"]
        assert {(r.state, r.claimed_by, r.attempts) for r in taken} == {(OutboundState.SENDING, "alive:2:b", 2)}


@pytest.mark.postgres
def test_concurrent_outbox_claims_take_disjoint_rows(postgres_database_url: str) -> None:
    """Three instances claiming at the same moment each get different mails (FOR UPDATE SKIP LOCKED)."""
    engine = make_engine(postgres_database_url, pool_size=5)
    factory = make_sessionmaker(engine)
    try:
        with unit_of_work(factory) as session:
            session.add_all([_outbound(f"k{i}", i) for i in range(12)])
        hold = threading.Barrier(3)

        def claim(i: int) -> list[int]:
            with unit_of_work(factory) as session:
                ids = [r.id for r in repo.claim_due_outbound(session, f"inst{i}", NOW, dt.timedelta(minutes=5), 4)]
                hold.wait()  # all three hold their locks at the same time
                return ids

        claims = _in_parallel(3, claim)
        assert all(len(c) == 4 for c in claims)
        assert len({i for c in claims for i in c}) == 12
    finally:
        engine.dispose()


def _add_inbound(factory: sessionmaker[Session], n: int) -> list[int]:
    ids = []
    for i in range(n):
        ids.append(store(factory, citizen_mail(subject=f"Nachricht {i}"), Envelope("smtp")).inbound_id)
    return ids


def claim_one(session: Session) -> int | None:
    """What processing claims first on PostgreSQL: the oldest waiting message, row-locked, others' locks skipped."""
    ids = repo.waiting_inbound(session, NOW, limit=1, max_bytes=1, claim=True)
    return ids[0] if ids else None


@pytest.mark.postgres
def test_processing_claims_skip_each_others_rows(postgres_database_url: str) -> None:
    """Concurrent processing transactions each lock a different waiting message instead of queueing on one."""
    engine = make_engine(postgres_database_url, pool_size=5)
    factory = make_sessionmaker(engine)
    try:
        ids = _add_inbound(factory, 3)
        hold = threading.Barrier(3)

        def claim(_i: int) -> int | None:
            with unit_of_work(factory) as session:
                claimed = claim_one(session)
                hold.wait()
                return claimed

        assert sorted(x for x in _in_parallel(3, claim) if x is not None) == ids
    finally:
        engine.dispose()


CLAIM_AND_HANG = """
import sys, time, datetime as dt
from mail2ticket.db import leases, repo
from mail2ticket.db.engine import make_engine, make_sessionmaker, unit_of_work
factory = make_sessionmaker(make_engine(sys.argv[1]))
with unit_of_work(factory) as session:
    print(repo.waiting_inbound(session, dt.datetime.now(dt.UTC), limit=1, max_bytes=1, claim=True)[0], flush=True)
    time.sleep(600)
"""


@pytest.mark.postgres
def test_a_killed_instances_processing_claim_is_released_at_once(postgres_database_url: str) -> None:
    """The claim on a message in processing is a row lock: kill -9 of its holder frees the message immediately."""
    engine = make_engine(postgres_database_url)
    factory = make_sessionmaker(engine)
    try:
        (first,) = _add_inbound(factory, 1)
        holder = subprocess.Popen([sys.executable, "-c", CLAIM_AND_HANG, postgres_database_url],
                                  stdout=subprocess.PIPE, text=True)
        try:
            assert holder.stdout is not None
            assert int(holder.stdout.readline()) == first
            holder.stdout.close()
            with unit_of_work(factory) as session:
                assert claim_one(session) is None  # held by the live instance: skipped
            os.kill(holder.pid, signal.SIGKILL)
            holder.wait(10)

            def claimable() -> bool:
                with unit_of_work(factory) as session:
                    return claim_one(session) == first  # only waiting (state new) rows are claimed

            wait_until(claimable, timeout=10, message="the dead instance's claim to be released")
        finally:
            if holder.poll() is None:
                holder.kill()
                holder.wait(10)
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_failure_outcome_does_not_overwrite_another_instances_result(postgres_database_url: str) -> None:
    """An outcome written after a rolled-back attempt waits for a concurrent claimant and leaves its result alone."""
    engine = make_engine(postgres_database_url, pool_size=5)
    factory = make_sessionmaker(engine)
    try:
        (inbound_id,) = _add_inbound(factory, 1)
        claimed, finish = threading.Event(), threading.Event()

        def other_instance() -> None:
            with unit_of_work(factory) as session:
                claimed_id = claim_one(session)
                assert claimed_id is not None
                claimed.set()
                finish.wait(10)
                row = repo.get_inbound(session, claimed_id)
                assert row is not None
                row.state = InboundState.DONE

        thread = threading.Thread(target=other_instance)
        thread.start()
        claimed.wait(10)
        threading.Timer(0.5, finish.set).start()
        with unit_of_work(factory) as session:
            assert repo.lock_waiting_inbound(session, inbound_id) is None  # waited for the commit, saw `done`
        thread.join(10)
        with unit_of_work(factory) as session:
            row = repo.get_inbound(session, inbound_id)
            assert row is not None and row.state == InboundState.DONE
    finally:
        engine.dispose()


def test_concurrent_lease_acquisition_has_one_winner(factory: sessionmaker[Session]) -> None:
    """Instances racing for a new mailbox lease, and later for its expired row, get exactly one holder each time."""
    ttl = dt.timedelta(seconds=60)

    def race(now: dt.datetime) -> list[bool]:
        def take(i: int) -> bool:
            with unit_of_work(factory) as session:
                return leases.acquire(session, "imap:bauamt:INBOX", f"otherhost:{1000 + i}:x{i}", ttl, now)

        return _in_parallel(6, take)

    assert sorted(race(NOW)) == [False] * 5 + [True]  # the row does not exist yet: INSERT race
    assert sorted(race(NOW + dt.timedelta(seconds=30))) == [False] * 5 + [True]  # held: only its holder renews
    assert sorted(race(NOW + dt.timedelta(seconds=61))) == [False] * 5 + [True]  # expired: UPDATE race
