"""Named leases in the `lease` table: "only one instance does X" with the database as the coordinator.

Used by the IMAP pollers (one poller per mailbox folder) and by anything else that must run on exactly one
instance. A lease is a row (name, owner, expires_at); the holder renews it well before it expires and
releases it on a clean stop. A crashed holder's lease simply runs out.

All three operations are single statements whose WHERE clause decides who wins, so they are safe on
PostgreSQL under READ COMMITTED (a concurrent UPDATE re-checks the WHERE after the row lock) and on
SQLite (one writer at a time). The INSERT of a brand-new lease runs in a savepoint: when two instances
race, the primary key lets exactly one in and the loser's transaction stays usable.

Owner ids of the form "host:pid:suffix" (see `runtime.instance_id`) get one extra: a lease whose owner is
a dead process on this same host may be taken over at once, so a daemon restarted after kill -9 does not
wait out its predecessor's lease. Wall clocks of all instances are assumed to be NTP-synchronised.
"""

from __future__ import annotations

import datetime as dt
import os
import socket

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from mail2ticket.db.models import Lease


def acquire(session: Session, name: str, owner: str, ttl: dt.timedelta, now: dt.datetime) -> bool:
    """Take or renew lease `name` for `owner` until now+ttl; False while another live owner holds it."""
    expires = now + ttl
    result = session.execute(
        update(Lease)
        .where(Lease.name == name, (Lease.owner == owner) | (Lease.expires_at < now))
        .values(owner=owner, expires_at=expires)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount == 1:  # type: ignore[attr-defined]
        return True
    current = session.scalar(select(Lease.owner).where(Lease.name == name))
    if current is None:
        try:
            with session.begin_nested():
                session.add(Lease(name=name, owner=owner, expires_at=expires))
            return True
        except IntegrityError:
            return False
    if owner_is_dead_local(current):
        result = session.execute(
            update(Lease)
            .where(Lease.name == name, Lease.owner == current)
            .values(owner=owner, expires_at=expires)
            .execution_options(synchronize_session=False)
        )
        return bool(result.rowcount == 1)  # type: ignore[attr-defined]
    return False


def renew(session: Session, name: str, owner: str, ttl: dt.timedelta, now: dt.datetime) -> bool:
    """Extend our lease; False means we lost it (expired and taken) and must stop the guarded work now."""
    result = session.execute(
        update(Lease)
        .where(Lease.name == name, Lease.owner == owner)
        .values(expires_at=now + ttl)
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def release(session: Session, name: str, owner: str) -> None:
    """Give the lease up (only if we still hold it), so another instance can take over without waiting."""
    session.execute(
        delete(Lease).where(Lease.name == name, Lease.owner == owner).execution_options(synchronize_session=False)
    )


def holder(session: Session, name: str, now: dt.datetime) -> str | None:
    """The current live owner of `name`, or None."""
    row = session.execute(select(Lease.owner, Lease.expires_at).where(Lease.name == name)).first()
    if row is None or row.expires_at < now:
        return None
    return str(row.owner)


def owner_is_dead_local(owner: str) -> bool:
    """True when `owner` names a process on this host ("host:pid:...") that no longer exists."""
    parts = owner.split(":")
    if len(parts) < 3 or parts[0] != socket.gethostname() or not parts[1].isdigit():
        return False
    pid = int(parts[1])
    if pid == os.getpid() or pid <= 1:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False
