"""SMTP delivery keeps one smarthost session for a batch of mails, one transaction (and one result) per mail."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from mail2ticket.config.model import SmtpOutConfig
from mail2ticket.outbox.deliver import PermanentDeliveryError, SmtpDeliverer, TransientDeliveryError


@dataclass
class _Recorder:
    """Accepts everything except recipients starting with "refuse" (550) or "later" (450); records peers."""

    mails: list[tuple[tuple[str, int], list[str], bytes]] = field(default_factory=list)
    quits: int = 0
    servers: list[Any] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        if address.startswith("refuse"):
            return "550 5.1.1 no such user"
        if address.startswith("later"):
            return "450 4.2.1 mailbox busy"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            self.mails.append((session.peer, list(envelope.rcpt_tos), bytes(envelope.original_content)))
            if server not in self.servers:
                self.servers.append(server)
        return "250 2.0.0 OK"

    async def handle_QUIT(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            self.quits += 1
        return "221 Bye"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def relay() -> Iterator[tuple[_Recorder, Controller]]:
    handler = _Recorder()
    controller = Controller(handler, hostname="127.0.0.1", port=_free_port(), ready_timeout=5)
    controller.start()
    yield handler, controller
    controller.stop()


def _deliverer(controller: Controller) -> SmtpDeliverer:
    return SmtpDeliverer(SmtpOutConfig(delivery="smtp", host="127.0.0.1", port=controller.port, timeout=5), None)


def _mail(i: int) -> bytes:
    return f"Subject: {i}\r\nMessage-ID: <{i}@stadt.example>\r\n\r\nText {i}\r\n".encode()


def test_a_batch_goes_over_one_connection_one_transaction_each(relay: tuple[_Recorder, Controller]) -> None:
    """Ten mails in a row use one smarthost session; each arrives on its own with its own recipient."""
    handler, controller = relay
    deliverer = _deliverer(controller)
    try:
        for i in range(10):
            deliverer.deliver("bounces@stadt.example", f"user{i}@example.org", _mail(i), f"<{i}@stadt.example>")
    finally:
        deliverer.close()
    assert [rcpts for _, rcpts, _ in handler.mails] == [[f"user{i}@example.org"] for i in range(10)]
    assert [raw for _, _, raw in handler.mails] == [_mail(i) for i in range(10)]
    assert len({peer for peer, _, _ in handler.mails}) == 1
    assert deliverer.connections_opened == 1


def test_a_refused_recipient_fails_only_its_own_mail(relay: tuple[_Recorder, Controller]) -> None:
    """A 550 for one recipient is a permanent error for that mail; the mails before and after it are delivered."""
    handler, controller = relay
    deliverer = _deliverer(controller)
    try:
        deliverer.deliver("", "first@example.org", _mail(1), "<1@stadt.example>")
        with pytest.raises(PermanentDeliveryError, match="550"):
            deliverer.deliver("", "refuse@example.org", _mail(2), "<2@stadt.example>")
        with pytest.raises(TransientDeliveryError, match="450"):
            deliverer.deliver("", "later@example.org", _mail(3), "<3@stadt.example>")
        deliverer.deliver("", "last@example.org", _mail(4), "<4@stadt.example>")
    finally:
        deliverer.close()
    assert [rcpts for _, rcpts, _ in handler.mails] == [["first@example.org"], ["last@example.org"]]
    assert deliverer.connections_opened == 1


def test_a_connection_the_smarthost_dropped_is_replaced_without_a_duplicate() -> None:
    """After the smarthost restarted, the next mail goes over a new session, once."""
    handler = _Recorder()
    first = Controller(handler, hostname="127.0.0.1", port=_free_port(), ready_timeout=5)
    first.start()
    deliverer = _deliverer(first)
    try:
        deliverer.deliver("", "a@example.org", _mail(1), "<1@stadt.example>")
    finally:
        first.stop()
    restarted = Controller(handler, hostname="127.0.0.1", port=first.port, ready_timeout=5)
    restarted.start()
    try:
        deliverer.deliver("", "b@example.org", _mail(2), "<2@stadt.example>")
    finally:
        deliverer.close()
        restarted.stop()
    assert [rcpts for _, rcpts, _ in handler.mails] == [["a@example.org"], ["b@example.org"]]
    assert deliverer.connections_opened == 2


def test_an_idle_connection_is_closed_with_quit(relay: tuple[_Recorder, Controller]) -> None:
    """Without further mail the session ends with QUIT after the idle time; the next mail opens a new one."""
    handler, controller = relay
    deliverer = _deliverer(controller)
    deliverer.IDLE_CLOSE_SECONDS = 0.2
    deliverer.deliver("", "a@example.org", _mail(1), "<1@stadt.example>")
    deadline = time.monotonic() + 5
    while handler.quits == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert handler.quits == 1
    deliverer.deliver("", "b@example.org", _mail(2), "<2@stadt.example>")
    deliverer.close()
    assert deliverer.connections_opened == 2
    assert len(handler.mails) == 2


def test_an_unreachable_smarthost_is_a_transient_error() -> None:
    """Connection refused is retried later, as before."""
    deliverer = SmtpDeliverer(SmtpOutConfig(delivery="smtp", host="127.0.0.1", port=_free_port(), timeout=2), None)
    with pytest.raises(TransientDeliveryError):
        deliverer.deliver("", "a@example.org", _mail(1), "<1@stadt.example>")
    assert deliverer.connections_opened == 0


def test_a_session_the_smarthost_closed_while_idle_is_replaced_without_an_error() -> None:
    """A smarthost that ends idle sessions sooner than we do: the next mail goes over a new session, at once.

    The smarthost's side is closed by the test rather than by aiosmtpd's idle timeout: a timeout short enough to
    end the kept session also ended a new one whenever the loaded test machine paused the client that long.
    """
    handler = _Recorder()
    controller = Controller(handler, hostname="127.0.0.1", port=_free_port(), ready_timeout=5)
    controller.start()
    deliverer = _deliverer(controller)
    try:
        deliverer.deliver("", "a@example.org", _mail(1), "<1@stadt.example>")
        (server,) = handler.servers
        controller.loop.call_soon_threadsafe(server.transport.close)
        deadline = time.monotonic() + 5
        while server.transport is not None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.transport is None, "the smarthost did not close its side"
        deliverer.deliver("", "b@example.org", _mail(2), "<2@stadt.example>")  # ours was still kept until now
    finally:
        deliverer.close()
        controller.stop()
    assert [rcpts for _, rcpts, _ in handler.mails] == [["a@example.org"], ["b@example.org"]]
    assert deliverer.connections_opened == 2
