"""sd_notify client: tells systemd how the daemon is doing (operations edge, no pipeline stage).

`mail2ticket run` builds one `Notifier` at start-up and uses it from the orchestrator:

    READY=1              once the database is reachable and the listeners and pollers are up
    STATUS=...           one human line shown by `systemctl status mail2ticket`
    WATCHDOG=1           every `watchdog_interval / 2` seconds while the main loop is healthy
    RELOADING=1          on SIGHUP, before re-reading rules and templates; send READY=1 afterwards
    STOPPING=1           on SIGTERM, before draining in-flight work

It speaks the datagram protocol of sd_notify(3) directly (about 40 lines) instead of depending on the
unmaintained `sdnotify` or the LGPL `systemd-python` packages. When `$NOTIFY_SOCKET` is unset (a
terminal, tests, another supervisor) every call is a no-op. Sending never raises: a broken socket
must not take the daemon down, so the first failure of a burst is logged as `sd_notify_failed` and
the rest stay quiet until a send succeeds again.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Mapping

import structlog

__all__ = ["Notifier"]

# A datagram to systemd must not block the watchdog thread for long if the manager is stuck.
_SEND_TIMEOUT_SECONDS = 2.0


class Notifier:
    """Sends sd_notify datagrams to `$NOTIFY_SOCKET`; thread-safe, never raises."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        """Read `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` from `environ` (default `os.environ`)."""
        env = os.environ if environ is None else environ
        self._address = _socket_address(env.get("NOTIFY_SOCKET", ""))
        self._display_address = env.get("NOTIFY_SOCKET", "")
        self._watchdog_interval = _watchdog_interval(env)
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._failing = False

    @property
    def enabled(self) -> bool:
        """True when a notification socket is configured, i.e. we run under `Type=notify`."""
        return self._address is not None

    @property
    def watchdog_interval(self) -> float | None:
        """The watchdog timeout in seconds (ping at half of it), or None when no watchdog is set for us."""
        return self._watchdog_interval

    def ready(self, status: str | None = None) -> bool:
        """Start-up (or a reload) is complete; optionally set the status line in the same datagram."""
        fields = ["READY=1"]
        if status is not None:
            fields.append("STATUS=" + _one_line(status))
        return self._send(fields)

    def status(self, text: str) -> bool:
        """Set the free-form status line; line breaks are folded into spaces."""
        return self._send(["STATUS=" + _one_line(text)])

    def watchdog(self) -> bool:
        """Keep-alive ping; call it only from a loop that proves the daemon still makes progress."""
        return self._send(["WATCHDOG=1"])

    def stopping(self) -> bool:
        """Graceful shutdown has begun."""
        return self._send(["STOPPING=1"])

    def reloading(self) -> bool:
        """A reload has begun; the CLOCK_MONOTONIC stamp lets systemd >= 253 match it to the request."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self._send(["RELOADING=1", f"MONOTONIC_USEC={usec}"])

    def close(self) -> None:
        """Release the socket; later calls open a new one."""
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None

    def _send(self, fields: list[str]) -> bool:
        """Send one datagram; True if it was handed to the kernel, False if disabled or failed."""
        if self._address is None:
            return False
        payload = "\n".join(fields).encode("utf-8")
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                    self._sock.settimeout(_SEND_TIMEOUT_SECONDS)
                self._sock.sendto(payload, self._address)
            except OSError as exc:
                if not self._failing:
                    self._failing = True
                    structlog.get_logger().warning(
                        "sd_notify_failed",
                        socket=self._display_address,
                        notification=fields[0],
                        error=f"{type(exc).__name__}: {exc}",
                    )
                if self._sock is not None:
                    self._sock.close()
                    self._sock = None
                return False
            self._failing = False
            return True


def _socket_address(value: str) -> str | None:
    """`/path` is a file-system socket, `@name` an abstract one; anything else means no notifications."""
    if value.startswith("/"):
        return value
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]
    return None


def _watchdog_interval(env: Mapping[str, str]) -> float | None:
    """`WATCHDOG_USEC` in seconds, if it is a positive integer and `WATCHDOG_PID` (when set) is us."""
    pid = env.get("WATCHDOG_PID")
    if pid is not None:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 1_000_000 if usec > 0 else None


def _one_line(text: str) -> str:
    """Fold CR, LF (and every other line boundary) into spaces and drop NULs: STATUS is one line."""
    return " ".join(text.replace("\0", "").splitlines())
