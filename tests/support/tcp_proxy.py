"""A loopback TCP proxy with switchable network faults, for reliability tests.

Place in the test suite: it sits between the code under test and a real server on 127.0.0.1
(usually the test Dovecot) to produce the failures of RELIABILITY.md: connections reset by the
peer, a silent network (half-open TCP), and a server dying in the middle of a response.

Modes (switchable at any time, they apply to open and to new connections):

| mode          | open connections                                | new connections                |
| ------------- | ----------------------------------------------- | ------------------------------ |
| `pass`        | bytes are forwarded both ways (the default)     | forwarded                      |
| `reset`       | closed with RST (SO_LINGER 0) before it returns | accepted, then RST at once     |
| `blackhole`   | stay open; bytes in both directions are dropped | accepted; bytes are dropped    |
| `cut_after n` | forward n more server->client bytes, then RST   | forward n bytes, then RST      |

Each proxied connection has one thread that does all I/O on its two sockets (so no socket is
ever closed under another thread's feet); the controller talks to it through a wake-up pipe.
All threads are daemons, `stop()` ends them, and only loopback addresses are accepted.
"""

from __future__ import annotations

import enum
import ipaddress
import select
import socket
import struct
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Self

TcpProxyFactory = Callable[[str, int], "TcpProxy"]
"""The `tcp_proxy` fixture: `tcp_proxy(upstream_host, upstream_port) -> TcpProxy` (started)."""

_RECV = 65536
_JOIN_TIMEOUT = 2.0


class Fault(enum.Enum):
    PASS = "pass"
    RESET = "reset"
    BLACKHOLE = "blackhole"
    CUT = "cut_after"


def _require_loopback(host: str) -> None:
    address = ipaddress.ip_address(socket.gethostbyname(host))
    if not address.is_loopback:
        raise ValueError(f"tcp_proxy only talks to loopback addresses, not {host} ({address})")


def _abort(sock: socket.socket) -> None:
    """Close with RST instead of FIN."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


class _Link:
    """One client connection and its upstream connection, served by one thread."""

    def __init__(self, proxy: TcpProxy, client: socket.socket, upstream: socket.socket) -> None:
        self.proxy = proxy
        self.client = client
        self.upstream = upstream
        self.budget: int | None = None  # server->client bytes left before a cut
        self.done = threading.Event()
        self._abort_requested = False
        self._wake_r, self._wake_w = socket.socketpair()
        for s in (client, upstream, self._wake_r):
            s.setblocking(False)
        self.thread = threading.Thread(target=self._run, name="tcp-proxy-link", daemon=True)

    def request_abort(self) -> None:
        """Ask the link thread to reset both sides, and wait until it has."""
        self._abort_requested = True
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        self.done.wait(_JOIN_TIMEOUT)

    def _run(self) -> None:
        abort = True
        try:
            abort = self._pump()
        except OSError:
            abort = True
        finally:
            for s in (self.client, self.upstream):
                if abort:
                    _abort(s)
                else:
                    s.close()
            self._wake_r.close()
            self._wake_w.close()
            self.proxy._forget(self)
            self.done.set()

    def _pump(self) -> bool:
        """Forward until EOF (returns False: graceful close) or a reset (returns True).

        In blackhole mode even an EOF is swallowed, as on a dead network: the side that closed
        is no longer read, and the link closes gracefully once the mode changes again.
        """
        peers = {self.client: self.upstream, self.upstream: self.client}
        watched = [self.client, self.upstream]
        while True:
            readable, _, _ = select.select([*watched, self._wake_r], [], [])
            if self._wake_r in readable:
                self._wake_r.recv(_RECV)
            if self._abort_requested:
                return True
            blackholed = self.proxy.mode is Fault.BLACKHOLE
            if len(watched) < 2 and not blackholed:
                return False
            for src in (s for s in readable if s is not self._wake_r):
                try:
                    data = src.recv(_RECV)
                except BlockingIOError:
                    continue
                if not data and blackholed:
                    watched.remove(src)
                    continue
                if not data:
                    return False
                if blackholed:
                    continue
                cut = False
                if src is self.upstream:
                    with self.proxy._lock:
                        if self.budget is not None:
                            cut = len(data) >= self.budget
                            data = data[: self.budget]
                            self.budget -= len(data)
                if data and not self._send_all(peers[src], data):
                    return True
                if cut:
                    return True

    def wake(self) -> None:
        """Make the link thread look at the proxy's mode again."""
        try:
            self._wake_w.send(b"m")
        except OSError:
            pass

    def _send_all(self, dst: socket.socket, data: bytes) -> bool:
        view = memoryview(data)
        while view:
            readable, writable, _ = select.select([self._wake_r], [dst], [])
            if self._wake_r in readable:
                self._wake_r.recv(_RECV)
                if self._abort_requested:
                    return False
            if writable:
                try:
                    view = view[dst.send(view) :]
                except BlockingIOError:
                    continue
        return True


class TcpProxy:
    """Listens on `host:port` (127.0.0.1, a free port) and forwards to the upstream server."""

    def __init__(self, upstream_host: str, upstream_port: int, *, host: str = "127.0.0.1") -> None:
        _require_loopback(upstream_host)
        _require_loopback(host)
        self.upstream = (upstream_host, upstream_port)
        self.host = host
        self.port = 0
        self.accepted = 0  # connections accepted so far, in any mode
        self._mode = Fault.PASS
        self._cut_bytes = 0
        self._lock = threading.Lock()
        self._links: set[_Link] = set()
        self._listener: socket.socket | None = None
        self._stop_r, self._stop_w = socket.socketpair()
        self._thread: threading.Thread | None = None

    # ----------------------------------------------------------------- lifecycle
    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, 0))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._thread = threading.Thread(target=self._accept_loop, name="tcp-proxy-accept", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop accepting, reset every open connection and join all threads."""
        if self._thread is None:
            return
        self._stop_w.send(b"x")
        self._thread.join(_JOIN_TIMEOUT)
        self._thread = None
        for link in self._snapshot():
            link.request_abort()
            link.thread.join(_JOIN_TIMEOUT)
        self._stop_r.close()
        self._stop_w.close()

    # ----------------------------------------------------------------- faults
    @property
    def mode(self) -> Fault:
        return self._mode

    @property
    def active_connections(self) -> int:
        return len(self._snapshot())

    def pass_through(self) -> None:
        """Forward everything again (open connections that were blackholed resume)."""
        self._set_mode(Fault.PASS, budget=None)

    def reset(self) -> None:
        """Reset (RST) every open connection now, and every new one until the mode changes."""
        self._set_mode(Fault.RESET, budget=None)
        for link in self._snapshot():
            link.request_abort()

    def blackhole(self) -> None:
        """Keep connections open but silently drop all bytes, both ways."""
        self._set_mode(Fault.BLACKHOLE, budget=None)

    def cut_after(self, n_bytes: int) -> None:
        """Let each connection pass `n_bytes` more server->client bytes, then reset it."""
        if n_bytes < 0:
            raise ValueError("n_bytes must be >= 0")
        self._set_mode(Fault.CUT, budget=n_bytes)

    def _set_mode(self, mode: Fault, budget: int | None) -> None:
        with self._lock:
            self._mode = mode
            self._cut_bytes = budget or 0
            links = list(self._links)
            for link in links:
                link.budget = budget
        for link in links:
            link.wake()
        if budget == 0:  # nothing may pass any more: cut idle connections right away
            for link in links:
                link.request_abort()

    # ----------------------------------------------------------------- internals
    def _snapshot(self) -> list[_Link]:
        with self._lock:
            return list(self._links)

    def _forget(self, link: _Link) -> None:
        with self._lock:
            self._links.discard(link)

    def _accept_loop(self) -> None:
        assert self._listener is not None
        try:
            while True:
                readable, _, _ = select.select([self._listener, self._stop_r], [], [])
                if self._stop_r in readable:
                    return
                client, _addr = self._listener.accept()
                self.accepted += 1
                self._serve(client)
        finally:
            self._listener.close()

    def _serve(self, client: socket.socket) -> None:
        if self._mode is Fault.RESET:
            _abort(client)
            return
        try:
            upstream = socket.create_connection(self.upstream, timeout=_JOIN_TIMEOUT)
        except OSError:
            _abort(client)
            return
        link = _Link(self, client, upstream)
        with self._lock:
            if self._mode is Fault.CUT:
                link.budget = self._cut_bytes
            self._links.add(link)
            abort_now = self.mode is Fault.RESET or link.budget == 0  # mode changed while connecting
        link.thread.start()
        if abort_now:
            link.request_abort()
