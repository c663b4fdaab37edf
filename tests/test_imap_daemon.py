"""IMAP ingress end to end: the real daemon process polls/IDLEs real Dovecot mailboxes (RELIABILITY T07-T10, T17).

Place in the test suite: the user's view of IMAP ingress. Mail is APPENDed to Dovecot, the daemon runs as
a subprocess with `[[mailbox]]` sections, and the tests check tickets (CLI), database rows, the server's
folders and flags, and the daemon's log events. Faults come from failpoints (kill -9) and a TCP proxy.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from mail2ticket.db.engine import make_engine, make_sessionmaker, unit_of_work
from mail2ticket.db.models import ActionState, ImapAction, InboundMessage, Ticket
from tests.support.app import App, Daemon, toml_value, wait_until
from tests.support.dovecot import Dovecot, ImapUser
from tests.support.mails import citizen_mail
from tests.support.tcp_proxy import TcpProxyFactory


@pytest.fixture
def start(app: App) -> Iterator[Callable[..., Daemon]]:
    """`start(**env)` runs the daemon; every daemon started is killed at teardown, even after a failure."""
    started: list[Daemon] = []

    def run(env: dict[str, str] | None = None) -> Daemon:
        daemon = app.start(env=env)
        started.append(daemon)
        return daemon

    yield run
    for daemon in started:
        daemon.kill()


def add_mailbox(app: App, dovecot: Dovecot, user: ImapUser, name: str = "bauamt", *, password: str | None = None,
                port: int | None = None, **settings: Any) -> Path:
    """Add a `[[mailbox]]` section for a Dovecot user; returns the password file (tests may rewrite it)."""
    secret = app.root / f"{name}.password"
    secret.write_text((password if password is not None else user.password) + "\n")
    values = {"name": name, "host": "127.0.0.1", "port": port or dovecot.port, "security": "none",
              "username": user.name, "password_file": str(secret), "queue": "bauamt", **settings}
    app.extra_toml += "\n[[mailbox]]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in values.items())
    return secret


def count(app: App, model: Any, *where: Any) -> int:
    engine = make_engine(app.database_url)
    try:
        with unit_of_work(make_sessionmaker(engine)) as session:
            return int(session.scalar(select(func.count()).select_from(model).where(*where)) or 0)
    finally:
        engine.dispose()


def events(daemon: Daemon, name: str) -> list[dict[str, Any]]:
    return [e for e in daemon.events() if e.get("event") == name]


def wait_event(daemon: Daemon, name: str, n: int = 1, timeout: float = 20.0) -> list[dict[str, Any]]:
    return list(wait_until(lambda: len(found := events(daemon, name)) >= n and found, timeout=timeout,
                           message=f"{n} x {name}"))


def subjects(app: App) -> list[str]:
    """Ticket subjects straight from the database (polled often; the CLI is used for the final checks)."""
    engine = make_engine(app.database_url)
    try:
        with unit_of_work(make_sessionmaker(engine)) as session:
            return sorted(session.scalars(select(Ticket.subject)))
    finally:
        engine.dispose()


def test_three_boxes_in_parallel_move_flag_and_delete(
    app: App, start: Callable[..., Daemon], dovecot: Dovecot) -> None:
    """Three mailboxes are worked at once; their mail becomes tickets and is moved, flagged or deleted as set."""
    users = [dovecot.user() for _ in range(3)]
    for user, after in zip(users, ("move:Processed", "flag", "delete"), strict=True):
        dovecot.append_many(user, "INBOX", [citizen_mail(subject=f"{after} {i}", to="info@example.org")
                                            for i in range(2)])
        add_mailbox(app, dovecot, user, name=after.split(":")[0], after=after)
    daemon = start()
    wait_until(lambda: count(app, Ticket) == 6, timeout=30, message="6 tickets")
    # The server action follows the intake commit, so it may finish a moment after the ticket exists.
    wait_until(lambda: count(app, ImapAction, ImapAction.state != ActionState.DONE) == 0, timeout=30,
               message="server actions done")
    assert {t["queue"] for t in app.tickets()} == {"bauamt"}
    moved, flagged, deleted = users
    assert dovecot.uids(moved) == [] and dovecot.uids(moved, "Processed") == [1, 2]
    assert all(f >= {"\\Seen", "$Mail2Ticket"} for f in dovecot.flags(flagged).values())
    assert dovecot.uids(deleted) == []
    assert count(app, ImapAction, ImapAction.state != ActionState.DONE) == 0
    assert daemon.stop() == 0


def test_idle_picks_up_new_mail_within_seconds(
    app: App, start: Callable[..., Daemon], dovecot: Dovecot, dovecot_user: ImapUser) -> None:
    """Mail APPENDed by another connection wakes the IDLEing worker; no polling interval is involved."""
    add_mailbox(app, dovecot, dovecot_user, after="move:Processed", poll_interval=3600, idle_refresh=600,
                noop_interval=600)
    daemon = start()
    wait_event(daemon, "imap_connected")
    dovecot.append(dovecot_user, "INBOX", citizen_mail(subject="Bitte um Rückruf"))
    wait_until(lambda: subjects(app) == ["Bitte um Rückruf"], timeout=10, message="ticket from IDLE")
    assert daemon.stop() == 0


def test_polling_without_idle_finds_new_mail(
    app: App, start: Callable[..., Daemon], dovecot: Dovecot, dovecot_user: ImapUser) -> None:
    """With idle = false the box is polled every poll_interval seconds."""
    add_mailbox(app, dovecot, dovecot_user, idle=False, poll_interval=1)
    daemon = start()
    wait_event(daemon, "imap_connected")
    dovecot.append(dovecot_user, "INBOX", citizen_mail(subject="Gepollt"))
    wait_until(lambda: subjects(app) == ["Gepollt"], timeout=15, message="ticket from polling")
    daemon.stop()


def test_kill_after_commit_before_server_action(
    app: App, start: Callable[..., Daemon], dovecot: Dovecot, dovecot_user: ImapUser) -> None:
    """kill -9 after the intake commit, before the MOVE: after a restart, one ticket and the MOVE done (T07)."""
    add_mailbox(app, dovecot, dovecot_user, after="move:Processed")
    dovecot.append(dovecot_user, "INBOX", citizen_mail(subject="Absturz vor dem Verschieben"))
    crashed = start(env={"M2T_FAILPOINT": "imap.after_commit_before_action:kill"})
    assert crashed.proc.wait(30) != 0
    assert count(app, InboundMessage) == 1 and dovecot.uids(dovecot_user) == [1]
    daemon = start()
    wait_until(lambda: dovecot.uids(dovecot_user, "Processed") == [1], timeout=20, message="move replayed")
    wait_until(lambda: count(app, Ticket) == 1, timeout=20, message="one ticket")
    assert count(app, InboundMessage) == 1
    wait_until(lambda: count(app, ImapAction, ImapAction.state == ActionState.DONE) == 1, timeout=20,
               message="replayed action marked done")
    daemon.stop()
    assert len(app.tickets()) == 1


def test_kill_after_server_action_before_done(
    app: App, start: Callable[..., Daemon], dovecot: Dovecot, dovecot_user: ImapUser) -> None:
    """kill -9 after the MOVE, before it is marked done: the restart sees the UID gone and marks it done (T08)."""
    add_mailbox(app, dovecot, dovecot_user, after="move:Processed")
    dovecot.append(dovecot_user, "INBOX", citizen_mail(subject="Absturz nach dem Verschieben"))
    crashed = start(env={"M2T_FAILPOINT": "imap.after_action_before_done:kill"})
    assert crashed.proc.wait(30) != 0
    assert dovecot.uids(dovecot_user, "Processed") == [1]
    assert count(app, ImapAction, ImapAction.state == ActionState.PENDING) == 1
    daemon = start()
    wait_until(lambda: count(app, ImapAction, ImapAction.state == ActionState.DONE) == 1, timeout=20,
               message="action marked done")
    wait_until(lambda: count(app, Ticket) == 1, timeout=20, message="one ticket")
    assert events(daemon, "imap_action_failed") == []
    assert dovecot.uids(dovecot_user, "Processed") == [1] and count(app, InboundMessage) == 1
    daemon.stop()


def test_connection_cut_mid_fetch(
    app: App, start: Callable[..., Daemon], dovecot: Dovecot, dovecot_user: ImapUser,
                                  tcp_proxy: TcpProxyFactory) -> None:
    """A connection reset in the middle of a big FETCH leaves no row and no \\Seen; the retry stores it once (T09)."""
    proxy = tcp_proxy(dovecot.host, dovecot.port)
    add_mailbox(app, dovecot, dovecot_user, port=proxy.port, after="move:Processed")
    daemon = start()
    wait_event(daemon, "imap_connected")
    proxy.cut_after(300_000)
    big = citizen_mail(subject="Bauzeichnungen", body="Grundriss Erdgeschoss, Maßstab 1:100. " * 60_000)
    dovecot.append(dovecot_user, "INBOX", big)
    wait_event(daemon, "imap_connection_failed")
    assert count(app, InboundMessage) == 0
    assert "\\Seen" not in dovecot.flags(dovecot_user)[1]
    proxy.pass_through()
    wait_until(lambda: count(app, Ticket) == 1, timeout=30, message="ticket after the retry")
    assert count(app, InboundMessage) == 1
    assert list(dovecot.messages(dovecot_user, "Processed").values()) == [big]
    wait_event(daemon, "imap_recovered")
    daemon.stop()


def test_blackholed_connection_is_detected_and_mail_caught_up(
    app: App, start: Callable[..., Daemon], dovecot: Dovecot, dovecot_user: ImapUser,
                                                              tcp_proxy: TcpProxyFactory) -> None:
    """IDLE on a silently dead connection is noticed by the NOOP watchdog; mail from the outage arrives (T10)."""
    proxy = tcp_proxy(dovecot.host, dovecot.port)
    add_mailbox(app, dovecot, dovecot_user, port=proxy.port, noop_interval=1, timeout=2)
    daemon = start()
    wait_event(daemon, "imap_connected")
    proxy.blackhole()
    dovecot.append(dovecot_user, "INBOX", citizen_mail(subject="Während des Ausfalls"))
    wait_event(daemon, "imap_connection_failed")
    proxy.pass_through()
    wait_until(lambda: subjects(app) == ["Während des Ausfalls"], timeout=30, message="caught-up ticket")
    daemon.stop()


def test_bad_credentials_on_one_box_do_not_stop_another(
    app: App, start: Callable[..., Daemon], dovecot: Dovecot) -> None:
    """A box with a wrong password backs off and logs once, the other box keeps working, and a fixed secret heals it (T17)."""
    bad_user, good_user = dovecot.user(), dovecot.user()
    secret = add_mailbox(app, dovecot, bad_user, name="kaputt", password="falsch")
    add_mailbox(app, dovecot, good_user, name="gut")
    dovecot.append(bad_user, "INBOX", citizen_mail(subject="Wartet auf Zugang"))
    daemon = start()
    wait_event(daemon, "imap_login_failed")
    dovecot.append(good_user, "INBOX", citizen_mail(subject="Kommt durch"))
    wait_until(lambda: subjects(app) == ["Kommt durch"], timeout=20, message="ticket from the good box")
    attempts = dovecot.read_log().count(f"user=<{bad_user.name}>")
    assert attempts <= 6, "no hot loop: a few attempts with backoff"
    assert len(events(daemon, "imap_login_failed")) == 1, "logged once per burst"
    secret.write_text(bad_user.password + "\n")
    wait_until(lambda: subjects(app) == ["Kommt durch", "Wartet auf Zugang"], timeout=30, message="healed box")
    assert wait_event(daemon, "imap_recovered")[0]["mailbox"] == "kaputt"
    daemon.stop()


def test_check_config_connect_reports_each_mailbox(app: App, dovecot: Dovecot) -> None:
    """`check-config --connect` logs in to every mailbox, says OK or what failed, and exits non-zero on a failure."""
    add_mailbox(app, dovecot, dovecot.user(), name="gut")
    add_mailbox(app, dovecot, dovecot.user(), name="kaputt", password="falsch")
    result = app.cli("check-config", "--connect", check=False)
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert any(line.startswith("OK") and "mailbox gut" in line for line in lines)
    assert any(line.startswith("FAIL") and "mailbox kaputt" in line and "login refused" in line for line in lines)
    assert "pw-" not in result.stdout + result.stderr
