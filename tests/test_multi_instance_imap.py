"""Three daemon instances, one Dovecot with three mailboxes, one PostgreSQL: one poller per mailbox, always.

Every instance is configured with all three mailboxes; the `lease` rows decide who polls which. The test
watches Dovecot itself (`doveadm who`, sampled continuously) to prove that no mailbox ever has two IMAP
sessions at once, sends SMTP mail to all three listeners at the same time, then kills -9 an instance that
holds mailbox leases: the survivors take its mailboxes over and the new mail there is ingested exactly once.
"""

from __future__ import annotations

import socket
import threading
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Self

import pytest
from sqlalchemy import Engine, func, select

from mail2ticket.db.engine import make_engine
from mail2ticket.db.models import Article, InboundMessage, InboundState, Lease
from tests.support.app import App, Daemon, toml_value, wait_until
from tests.support.dovecot import Dovecot, ImapUser
from tests.support.mails import citizen_mail
from tests.test_multi_instance import Relay, probe_mail

pytestmark = [pytest.mark.postgres, pytest.mark.slow, pytest.mark.dovecot]

BOXES = ("bauamt", "standesamt", "kaemmerei")


class SessionWatch:
    """Samples `doveadm who` in a thread; remembers the most IMAP sessions any one user had at once."""

    def __init__(self, dovecot: Dovecot, users: Sequence[str]) -> None:
        self.dovecot = dovecot
        self.users = set(users)
        self.peak: Counter[str] = Counter()
        self.samples = 0
        self.paused = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            with self.paused:  # the test's own APPEND sessions are not pollers
                out = self.dovecot.doveadm("who", "-1").stdout
            now: Counter[str] = Counter()
            for line in out.splitlines()[1:]:
                fields = line.split()
                if len(fields) >= 2 and fields[0] in self.users and fields[1] == "imap":
                    now[fields[0]] += 1
            for user, n in now.items():
                self.peak[user] = max(self.peak[user], n)
            self.samples += 1
            time.sleep(0.1)


def add_mailbox(app: App, user: ImapUser, name: str, port: int) -> None:
    secret = app.root / f"{name}.password"
    secret.write_text(user.password + "\n")
    values = {"name": name, "host": "127.0.0.1", "port": port, "security": "none", "username": user.name,
              "password_file": str(secret), "queue": "bauamt", "after": "move:Processed", "poll_interval": 2}
    app.extra_toml += "\n[[mailbox]]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in values.items())


def lease_owners(engine: Engine) -> dict[str, str]:
    with engine.connect() as conn:
        rows = conn.execute(select(Lease.name, Lease.owner)).all()
        conn.rollback()
    return {name: owner for name, owner in rows}


def imap_articles(engine: Engine, prefix: str) -> Counter[str]:
    with engine.connect() as conn:
        ids = list(conn.scalars(select(Article.message_id).where(Article.message_id.like(f"<{prefix}-%"),
                                                                 Article.direction == "in")))
        conn.rollback()
    return Counter(i for i in ids if i is not None)


def imap_mail(box: str, tag: str, i: int) -> bytes:
    return citizen_mail(subject=f"Post an {box} {tag}-{i}", to=f"{box}@stadt.example",
                        sender=f"Bürger <imap-{box}-{tag}-{i}@example.org>",
                        message_id=f"<imap-{tag}-{box}-{i}@example.org>")


def test_three_instances_never_poll_one_mailbox_twice_and_take_over_after_kill_9(
    tmp_path: Path, postgres_database_url: str, dovecot: Dovecot
) -> None:
    """Each mailbox has one poller at any moment; a killed poller's mailboxes are taken over, nothing doubles."""
    users = {box: dovecot.user() for box in BOXES}
    for box, user in users.items():
        dovecot.append_many(user, "INBOX", [imap_mail(box, "a", i) for i in range(20)])
    apps = []
    for i in range(3):
        root = tmp_path / f"instance{i}"
        root.mkdir()
        app = App(root=root, database_url=postgres_database_url)
        for box, user in users.items():
            add_mailbox(app, user, box, dovecot.port)
        apps.append(app)
    engine = make_engine(postgres_database_url)
    daemons: list[Daemon] = []
    try:
        with SessionWatch(dovecot, [u.name for u in users.values()]) as watch:
            daemons = [app.start(wait=False) for app in apps]
            for daemon in daemons:
                daemon.wait_listening(timeout=60)
            relay = Relay([app.smtp_port for app in apps], connections=6)
            relay.send_all([(s, raw, "buergerbuero@stadt.example") for s, raw in
                            (probe_mail("imap", i) for i in range(150))])
            wait_until(lambda: sum(imap_articles(engine, "imap-a").values()) == 60, timeout=120, interval=0.3,
                       message="all 60 IMAP mails as articles")
            assert set(imap_articles(engine, "imap-a").values()) == {1}
            owners = wait_until(lambda: len(o := lease_owners(engine)) == 3 and o, timeout=30,
                                message="three mailbox leases")
            # Kill an instance that polls at least one mailbox.
            victim_index = next(i for i, d in enumerate(daemons)
                                if any(o.startswith(f"{socket.gethostname()}:{d.proc.pid}:") for o in owners.values()))
            victim = daemons[victim_index]
            victim_prefix = f"{socket.gethostname()}:{victim.proc.pid}:"
            orphaned = sorted(name for name, owner in owners.items() if owner.startswith(victim_prefix))
            victim.kill()
            with watch.paused:
                for box, user in users.items():
                    dovecot.append_many(user, "INBOX", [imap_mail(box, "b", i) for i in range(10)])

            def taken_over() -> bool:
                now = lease_owners(engine)
                return all(name in now and not now[name].startswith(victim_prefix) for name in orphaned)

            wait_until(taken_over, timeout=90, interval=0.5, message=f"{orphaned} to be taken over")
            wait_until(lambda: sum(imap_articles(engine, "imap-b").values()) == 30, timeout=120, interval=0.3,
                       message="all 30 IMAP mails after the kill as articles")
            assert set(imap_articles(engine, "imap-b").values()) == {1}
            assert watch.samples > 20
        assert all(watch.peak[u.name] == 1 for u in users.values()), f"sessions per mailbox: {dict(watch.peak)}"
        with engine.connect() as conn:
            states = dict(conn.execute(select(InboundMessage.state, func.count()).group_by(
                InboundMessage.state)).all())
            conn.rollback()
        assert states.get(InboundState.NEW, 0) == 0
        for box, user in users.items():
            assert dovecot.uids(user, "INBOX") == [] and len(dovecot.uids(user, "Processed")) == 30
    finally:
        for daemon in daemons:
            if daemon.proc.poll() is None:
                daemon.kill()
        engine.dispose()

