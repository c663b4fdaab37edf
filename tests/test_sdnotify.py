"""sd_notify client: exact datagrams on a real AF_UNIX socket, the no-op case and the watchdog settings."""

from __future__ import annotations

import os
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from mail2ticket.sdnotify import Notifier

# A generous bound for a datagram that is already queued; it only stops a broken test from hanging.
RECV_TIMEOUT = 10.0


@pytest.fixture
def notify_socket() -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket standing in for systemd's notify socket (short path: sun_path holds 108 bytes)."""
    with tempfile.TemporaryDirectory(prefix="m2t-") as tmp:
        path = str(Path(tmp) / "notify")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        sock.settimeout(RECV_TIMEOUT)
        try:
            yield sock, path
        finally:
            sock.close()


def _recv(sock: socket.socket) -> bytes:
    return sock.recv(4096)


def test_ready_sends_ready_datagram(notify_socket: tuple[socket.socket, str]) -> None:
    """systemd sees exactly `READY=1` when the daemon reports that start-up is complete."""
    sock, path = notify_socket
    notifier = Notifier({"NOTIFY_SOCKET": path})
    assert notifier.enabled
    assert notifier.ready() is True
    assert _recv(sock) == b"READY=1"
    notifier.close()


def test_ready_with_status_is_one_datagram(notify_socket: tuple[socket.socket, str]) -> None:
    """READY and the first status line arrive together, so `systemctl status` never shows a stale line."""
    sock, path = notify_socket
    notifier = Notifier({"NOTIFY_SOCKET": path})
    notifier.ready(status="3 mailboxes, listener on 127.0.0.1:2525")
    assert _recv(sock) == b"READY=1\nSTATUS=3 mailboxes, listener on 127.0.0.1:2525"
    notifier.close()


def test_each_message_has_its_exact_datagram(notify_socket: tuple[socket.socket, str]) -> None:
    """Status, watchdog and stopping notifications are sent in the sd_notify wire format."""
    sock, path = notify_socket
    notifier = Notifier({"NOTIFY_SOCKET": path})
    notifier.status("Polling 2 mailboxes")
    assert _recv(sock) == b"STATUS=Polling 2 mailboxes"
    notifier.watchdog()
    assert _recv(sock) == b"WATCHDOG=1"
    notifier.stopping()
    assert _recv(sock) == b"STOPPING=1"
    notifier.close()


def test_status_is_folded_to_one_line(notify_socket: tuple[socket.socket, str]) -> None:
    """A status text with line breaks cannot inject a second field such as READY=1 into the datagram."""
    sock, path = notify_socket
    notifier = Notifier({"NOTIFY_SOCKET": path})
    notifier.status("Betreff: Antrag\r\nREADY=1\rx\ny\0z")
    assert _recv(sock) == b"STATUS=Betreff: Antrag READY=1 x yz"
    notifier.status("Grüße aus dem Rathaus")
    assert _recv(sock) == "STATUS=Grüße aus dem Rathaus".encode()
    notifier.close()


def test_reloading_carries_monotonic_timestamp(notify_socket: tuple[socket.socket, str]) -> None:
    """A reload is announced as RELOADING=1 with a CLOCK_MONOTONIC stamp in microseconds."""
    sock, path = notify_socket
    notifier = Notifier({"NOTIFY_SOCKET": path})
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    notifier.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    first, second = _recv(sock).decode().split("\n")
    assert first == "RELOADING=1"
    key, _, value = second.partition("=")
    assert key == "MONOTONIC_USEC"
    assert before <= int(value) <= after
    notifier.close()


def test_abstract_socket_address() -> None:
    """A NOTIFY_SOCKET starting with '@' reaches the abstract-namespace socket of that name."""
    name = f"m2t-test-{os.getpid()}-{id(object())}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(RECV_TIMEOUT)
        notifier = Notifier({"NOTIFY_SOCKET": "@" + name})
        assert notifier.ready() is True
        assert sock.recv(4096) == b"READY=1"
        notifier.close()


def test_no_socket_means_no_op() -> None:
    """Outside systemd (no NOTIFY_SOCKET) every call quietly does nothing and logs nothing."""
    notifier = Notifier({})
    with capture_logs() as logs:
        assert not notifier.enabled
        assert notifier.ready() is False
        assert notifier.status("x") is False
        assert notifier.watchdog() is False
        assert notifier.reloading() is False
        assert notifier.stopping() is False
        notifier.close()
    assert logs == []
    assert notifier.watchdog_interval is None


@pytest.mark.parametrize("value", ["", "relative/path", "@", "vsock:2:1234"])
def test_unusable_socket_value_means_no_op(value: str) -> None:
    """A NOTIFY_SOCKET that is neither a path nor an abstract name disables notifications, no failure."""
    notifier = Notifier({"NOTIFY_SOCKET": value})
    assert not notifier.enabled
    assert notifier.ready() is False


def test_send_failure_is_logged_once_and_never_raises() -> None:
    """A vanished notification socket does not crash the daemon and logs one warning per burst of failures."""
    with tempfile.TemporaryDirectory(prefix="m2t-") as tmp:
        path = str(Path(tmp) / "gone")
        notifier = Notifier({"NOTIFY_SOCKET": path})
        with capture_logs() as logs:
            assert notifier.ready() is False
            assert notifier.watchdog() is False
            assert notifier.status("still here") is False
        assert [entry["event"] for entry in logs] == ["sd_notify_failed"]
        assert logs[0]["log_level"] == "warning"
        assert logs[0]["socket"] == path
        assert logs[0]["notification"] == "READY=1"

        # The socket comes back: sending works again, and a new failure burst is logged again.
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(path)
            sock.settimeout(RECV_TIMEOUT)
            assert notifier.watchdog() is True
            assert sock.recv(4096) == b"WATCHDOG=1"
        os.unlink(path)
        with capture_logs() as logs:
            assert notifier.watchdog() is False
        assert [entry["event"] for entry in logs] == ["sd_notify_failed"]
        notifier.close()


def test_concurrent_senders_deliver_whole_datagrams(notify_socket: tuple[socket.socket, str]) -> None:
    """Pings from several threads each arrive as a complete datagram; none is lost or interleaved."""
    sock, path = notify_socket
    notifier = Notifier({"NOTIFY_SOCKET": path})
    threads_count, per_thread = 8, 25

    def ping(index: int) -> None:
        for n in range(per_thread):
            notifier.status(f"thread {index} ping {n}")

    threads = [threading.Thread(target=ping, args=(i,)) for i in range(threads_count)]
    for thread in threads:
        thread.start()
    received = {_recv(sock) for _ in range(threads_count * per_thread)}
    for thread in threads:
        thread.join()
    expected = {
        f"STATUS=thread {i} ping {n}".encode() for i in range(threads_count) for n in range(per_thread)
    }
    assert received == expected
    notifier.close()


@pytest.mark.parametrize(
    ("usec", "expected"),
    [("30000000", 30.0), ("1500000", 1.5), ("1", 0.000001)],
)
def test_watchdog_interval_in_seconds(usec: str, expected: float) -> None:
    """WATCHDOG_USEC from WatchdogSec= becomes the interval in seconds the daemon pings within."""
    notifier = Notifier({"WATCHDOG_USEC": usec, "WATCHDOG_PID": str(os.getpid())})
    assert notifier.watchdog_interval == pytest.approx(expected)


def test_watchdog_interval_without_pid_applies_to_us() -> None:
    """Without WATCHDOG_PID the watchdog setting is taken as meant for this process."""
    assert Notifier({"WATCHDOG_USEC": "30000000"}).watchdog_interval == pytest.approx(30.0)


def test_watchdog_for_another_pid_is_ignored() -> None:
    """An inherited WATCHDOG_USEC meant for a parent process (WATCHDOG_PID differs) does not enable pings."""
    notifier = Notifier({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)})
    assert notifier.watchdog_interval is None


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"WATCHDOG_USEC": ""},
        {"WATCHDOG_USEC": "0"},
        {"WATCHDOG_USEC": "-5"},
        {"WATCHDOG_USEC": "30s"},
        {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "not-a-pid"},
    ],
)
def test_watchdog_interval_invalid_or_missing(env: dict[str, str]) -> None:
    """A missing, zero or malformed watchdog setting means no watchdog rather than an error at start-up."""
    assert Notifier(env).watchdog_interval is None


def test_defaults_to_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without an explicit mapping the notifier reads the real environment systemd gave the process."""
    monkeypatch.setenv("NOTIFY_SOCKET", "@m2t-env-test")
    monkeypatch.setenv("WATCHDOG_USEC", "20000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    notifier = Notifier()
    assert notifier.enabled
    assert notifier.watchdog_interval == pytest.approx(20.0)
