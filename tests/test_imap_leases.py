"""Leases in the database (db/leases.py): one holder at a time, renewal, expiry, release, dead local owners.

Place in the test suite: the guarantee "only one instance polls a mailbox folder" rests on these rows;
the tests run on every configured backend (SQLite and PostgreSQL).
"""

from __future__ import annotations

import datetime as dt
import socket
import subprocess
import sys

from sqlalchemy.orm import Session, sessionmaker

from mail2ticket.db import leases
from mail2ticket.db.engine import unit_of_work

T0 = dt.datetime(2026, 3, 1, 8, 0, tzinfo=dt.UTC)
TTL = dt.timedelta(seconds=60)


def acquire(factory: sessionmaker[Session], owner: str, now: dt.datetime, name: str = "imap:bauamt:INBOX") -> bool:
    with unit_of_work(factory) as session:
        return leases.acquire(session, name, owner, TTL, now)


def test_only_one_owner_holds_a_lease(factory: sessionmaker[Session]) -> None:
    """While one instance holds a live lease, another cannot take it; the holder can re-acquire it."""
    assert acquire(factory, "a", T0)
    assert not acquire(factory, "b", T0 + dt.timedelta(seconds=10))
    assert acquire(factory, "a", T0 + dt.timedelta(seconds=20))
    assert acquire(factory, "b", T0, name="imap:bauamt:Archiv")  # other names are independent


def test_expired_lease_is_taken_over_and_the_old_owner_cannot_renew(factory: sessionmaker[Session]) -> None:
    """After expiry another instance takes over, and the former holder learns it lost the lease."""
    assert acquire(factory, "a", T0)
    later = T0 + TTL + dt.timedelta(seconds=1)
    assert acquire(factory, "b", later)
    with unit_of_work(factory) as session:
        assert not leases.renew(session, "imap:bauamt:INBOX", "a", TTL, later)
        assert leases.renew(session, "imap:bauamt:INBOX", "b", TTL, later)
        assert leases.holder(session, "imap:bauamt:INBOX", later) == "b"


def test_renewal_keeps_the_lease_alive(factory: sessionmaker[Session]) -> None:
    """A holder that renews in time keeps its lease past the original expiry."""
    assert acquire(factory, "a", T0)
    with unit_of_work(factory) as session:
        assert leases.renew(session, "imap:bauamt:INBOX", "a", TTL, T0 + dt.timedelta(seconds=50))
    assert not acquire(factory, "b", T0 + dt.timedelta(seconds=90))


def test_release_lets_another_owner_in_at_once(factory: sessionmaker[Session]) -> None:
    """A released lease is free immediately; releasing someone else's lease does nothing."""
    assert acquire(factory, "a", T0)
    with unit_of_work(factory) as session:
        leases.release(session, "imap:bauamt:INBOX", "b")
    assert not acquire(factory, "b", T0)
    with unit_of_work(factory) as session:
        leases.release(session, "imap:bauamt:INBOX", "a")
    assert acquire(factory, "b", T0)


def test_lease_of_a_dead_process_on_this_host_is_taken_over(factory: sessionmaker[Session]) -> None:
    """A daemon restarted after kill -9 does not wait for its dead predecessor's lease to expire."""
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    dead = f"{socket.gethostname()}:{proc.stdout.strip()}:abc123"
    assert acquire(factory, dead, T0)
    assert acquire(factory, f"{socket.gethostname()}:1234567:def456", T0 + dt.timedelta(seconds=1))


def test_lease_of_a_live_process_or_another_host_is_respected(factory: sessionmaker[Session]) -> None:
    """Owners that are alive here, or on another host, keep their lease until it expires."""
    assert acquire(factory, f"{socket.gethostname()}:1:live", T0)  # pid 1 always exists
    assert not acquire(factory, "me:2:x", T0)
    assert acquire(factory, "other-host:999999:x", T0, name="imap:b:INBOX")
    assert not acquire(factory, "me:2:x", T0, name="imap:b:INBOX")
