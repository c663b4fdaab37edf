"""The IMAP worker's waiting logic: IDLE is a hint, never proof of life (RELIABILITY P6, T10, T11).

Place in the test suite: drives `FolderWorker._idle` with the in-memory server of test_imap_sync_fake.py,
whose IDLE answers each test scripts (silence, a closed socket, BYE, new mail). The end-to-end blackhole
case against Dovecot is in test_imap_daemon.py.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from mail2ticket.config.model import MailboxConfig
from mail2ticket.ingress.imap import ConnectionDead, FolderWorker, backoff_delay
from mail2ticket.runtime import Services
from tests.test_imap_sync_fake import FakeImap



class ScriptedIdle(FakeImap):
    """IDLE answers come from a script; each entry is (seconds to block, responses)."""

    def __init__(self, script: list[tuple[float, list[Any]]]) -> None:
        super().__init__()
        self.script = script
        self.calls: list[str] = []

    def idle(self) -> None:
        self.calls.append("IDLE")

    def idle_check(self, timeout: float | None = None) -> list[Any]:
        delay, responses = self.script.pop(0) if self.script else (timeout or 0.0, [])
        time.sleep(min(delay, timeout or delay))
        return responses

    def idle_done(self) -> None:
        self.calls.append("DONE")

    def noop(self) -> None:
        self.calls.append("NOOP")


@pytest.fixture
def worker(factory: sessionmaker[Session]) -> Iterator[FolderWorker]:
    box = MailboxConfig(name="bauamt", host="127.0.0.1", security="none", username="u", password_env="X",
                        noop_interval=1)
    services = Services(engine=factory.kw["bind"], factory=factory, instance_id="test:1:x")
    w = FolderWorker(box, "INBOX", services, Path("mail2ticket.toml"), 10_000_000, lambda: None)
    w._stop = threading.Event()
    yield w


def test_new_mail_during_idle_ends_the_wait(worker: FolderWorker) -> None:
    """An EXISTS during IDLE ends the wait at once so the folder is synced."""
    client = ScriptedIdle([(0.1, [(1, b"EXISTS")])])
    worker._idle(client)
    assert client.calls == ["IDLE", "DONE"]


def test_silent_server_gets_a_noop_probe(worker: FolderWorker) -> None:
    """A server silent for noop_interval is probed with NOOP, which fails on a dead connection (T10)."""
    client = ScriptedIdle([])
    worker._idle(client)
    assert client.calls == ["IDLE", "DONE", "NOOP"]


def test_closed_socket_during_idle_is_a_dead_connection(worker: FolderWorker) -> None:
    """IDLE that returns nothing at once, again and again, is a closed socket: reconnect, do not spin."""
    client = ScriptedIdle([(0.0, []), (0.0, []), (0.0, [])])
    with pytest.raises(ConnectionDead):
        worker._idle(client)


def test_bye_during_idle_is_a_dead_connection(worker: FolderWorker) -> None:
    """A BYE (server shutdown, autologout) during IDLE makes the worker reconnect (T11)."""
    client = ScriptedIdle([(0.05, [(b"BYE", b"Server shutting down.")])])
    with pytest.raises(ConnectionDead):
        worker._idle(client)


def test_backoff_grows_with_jitter_and_stays_capped() -> None:
    """Retry delays double per failure, vary by jitter, and never exceed the cap."""
    import random

    rng = random.Random(1)
    delays = [backoff_delay(n, 300.0, rng) for n in range(1, 15)]
    assert 0.5 <= delays[0] <= 1.0 and 4.0 <= delays[3] <= 8.0
    assert max(delays) <= 300.0 and delays[-1] >= 150.0
