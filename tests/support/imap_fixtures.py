"""pytest plugin with the real-server IMAP fixtures: Dovecot on loopback and a fault proxy.

Place in the test suite: loaded from tests/conftest.py (`pytest_plugins = [...]`) or with
`-p tests.support.imap_fixtures`. One Dovecot serves the whole session; tests isolate themselves
by taking a fresh user (`dovecot_user`, or `dovecot.user()`), so every test starts with an empty
mailbox. When the Dovecot binaries are missing, tests are skipped locally but fail when CI=true
(run `.ci/install-system-deps.sh`). Tests that use these fixtures get the `dovecot` marker, and a
failing one gets the tail of the Dovecot log attached to its report.
"""

from __future__ import annotations

import os
from collections.abc import Generator, Iterator

import pytest

from tests.support.dovecot import Dovecot, ImapUser, binaries_available
from tests.support.tcp_proxy import TcpProxy, TcpProxyFactory

__all__ = ["TcpProxyFactory", "dovecot", "dovecot_no_move", "dovecot_user", "tcp_proxy"]

_DOVECOT_FIXTURES = ("dovecot", "dovecot_user", "dovecot_no_move")
_LOG_TAIL_LINES = 40


def _require_binaries() -> None:
    if binaries_available():
        return
    message = "dovecot/doveadm not installed; run `bash .ci/install-system-deps.sh` as root"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true but {message}", pytrace=False)
    pytest.skip(message)


def _serve(drop_capabilities: tuple[str, ...] = ()) -> Iterator[Dovecot]:
    _require_binaries()
    server = Dovecot(drop_capabilities=drop_capabilities)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def dovecot() -> Iterator[Dovecot]:
    """The session's shared Dovecot (IMAP, LMTP); take a fresh user per test."""
    yield from _serve()


@pytest.fixture
def dovecot_user(dovecot: Dovecot) -> ImapUser:
    """A never-used account on the shared Dovecot: its INBOX is empty."""
    return dovecot.user()


@pytest.fixture(scope="session")
def dovecot_no_move() -> Iterator[Dovecot]:
    """A Dovecot that does not advertise MOVE or UIDPLUS (RELIABILITY.md T16)."""
    yield from _serve(drop_capabilities=("MOVE", "UIDPLUS"))


@pytest.fixture
def tcp_proxy() -> Iterator[TcpProxyFactory]:
    """Factory `tcp_proxy(host, port) -> TcpProxy`; every proxy made is stopped after the test."""
    proxies: list[TcpProxy] = []

    def make(upstream_host: str, upstream_port: int) -> TcpProxy:
        proxy = TcpProxy(upstream_host, upstream_port)
        proxy.start()
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        proxy.stop()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if any(name in getattr(item, "fixturenames", ()) for name in _DOVECOT_FIXTURES):
            item.add_marker(pytest.mark.dovecot)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed:
        funcargs = getattr(item, "funcargs", {})
        for name in ("dovecot", "dovecot_no_move"):
            server = funcargs.get(name)
            if isinstance(server, Dovecot) and server.running:
                tail = server.read_log().splitlines()[-_LOG_TAIL_LINES:]
                report.sections.append((f"{name} log (last {_LOG_TAIL_LINES} lines)", "\n".join(tail)))
    return report
