"""Tests of the fault-injecting TCP proxy (tests/support/tcp_proxy.py) in front of real Dovecot.

Place in the test suite: reliability tests (RELIABILITY.md: resets, dead links, responses cut
short) rely on these faults looking to an IMAP client exactly like real network failures.
"""

from __future__ import annotations

import threading

import pytest
from imapclient.exceptions import IMAPClientAbortError

from tests.support.dovecot import Dovecot, ImapUser
from tests.support.tcp_proxy import Fault, TcpProxy, TcpProxyFactory

pytest_plugins = ["tests.support.imap_fixtures"]

# What an imapclient user sees when the connection breaks: imaplib's abort, or the raw socket error.
CONNECTION_LOST = (IMAPClientAbortError, OSError)
RESET = "reset by peer"  # a TCP RST, not an orderly close
TIMEOUT = "timed out"


def _mail(subject: str, body: bytes = b"Bitte um Rueckruf.\r\n") -> bytes:
    return f"From: buerger@example.org\r\nSubject: {subject}\r\n\r\n".encode() + body


def test_pass_mode_forwards_a_whole_imap_session(
    dovecot: Dovecot, dovecot_user: ImapUser, tcp_proxy: TcpProxyFactory
) -> None:
    """Through a proxy in pass mode a client logs in, appends and reads mail as if direct."""
    proxy = tcp_proxy(dovecot.host, dovecot.port)
    assert proxy.mode is Fault.PASS
    with dovecot.client(dovecot_user, port=proxy.port) as c:
        c.append("INBOX", _mail("via proxy"))
        c.select_folder("INBOX", readonly=True)
        assert c.search("ALL") == [1]
    assert dovecot.uids(dovecot_user) == [1]
    assert proxy.accepted == 1


def test_reset_breaks_open_and_new_connections_until_healed(
    dovecot: Dovecot, dovecot_user: ImapUser, tcp_proxy: TcpProxyFactory
) -> None:
    """After reset() a logged-in session dies and reconnects fail, until pass_through() heals it."""
    proxy = tcp_proxy(dovecot.host, dovecot.port)
    c = dovecot.client(dovecot_user, port=proxy.port)
    proxy.reset()
    with pytest.raises(CONNECTION_LOST, match=RESET):
        c.noop()
    c.shutdown()
    with pytest.raises(CONNECTION_LOST, match=RESET):
        dovecot.client(dovecot_user, port=proxy.port)
    proxy.pass_through()
    with dovecot.client(dovecot_user, port=proxy.port) as again:
        assert again.noop()


def test_blackhole_keeps_the_connection_open_but_silent(
    dovecot: Dovecot, dovecot_user: ImapUser, tcp_proxy: TcpProxyFactory
) -> None:
    """In blackhole mode commands get no answer (the client times out) yet nothing is closed, until healed."""
    proxy = tcp_proxy(dovecot.host, dovecot.port)
    c = dovecot.client(dovecot_user, port=proxy.port)
    c.socket().settimeout(0.5)  # short read timeout only after the login went through
    proxy.blackhole()
    with pytest.raises(CONNECTION_LOST, match=TIMEOUT):
        c.noop()
    assert proxy.active_connections == 1
    with pytest.raises(CONNECTION_LOST, match=TIMEOUT):  # a new connection never sees the greeting either
        dovecot.connect(port=proxy.port, timeout=0.5)
    c.shutdown()
    proxy.pass_through()
    with dovecot.client(dovecot_user, port=proxy.port) as healed:
        assert healed.noop()


def test_cut_after_resets_in_the_middle_of_a_fetch(
    dovecot: Dovecot, dovecot_user: ImapUser, tcp_proxy: TcpProxyFactory
) -> None:
    """cut_after(n) lets n more bytes of a big FETCH through, then the connection is reset."""
    raw = _mail("big attachment", b"x" * 200_000 + b"\r\n")
    uid = dovecot.append(dovecot_user, "INBOX", raw)
    proxy = tcp_proxy(dovecot.host, dovecot.port)
    c = dovecot.client(dovecot_user, port=proxy.port)
    c.select_folder("INBOX", readonly=True)
    proxy.cut_after(1000)
    with pytest.raises(CONNECTION_LOST, match=RESET):
        c.fetch([uid], ["BODY.PEEK[]"])
    c.shutdown()
    assert dovecot.messages(dovecot_user) == {uid: raw}  # the mail itself is untouched on the server


def test_cut_after_applies_to_new_connections_from_their_start(
    dovecot: Dovecot, tcp_proxy: TcpProxyFactory
) -> None:
    """With cut_after(5) set beforehand, a new client gets only 5 bytes of the greeting, then a reset."""
    proxy = tcp_proxy(dovecot.host, dovecot.port)
    proxy.cut_after(5)
    with pytest.raises(CONNECTION_LOST, match=RESET):
        dovecot.connect(port=proxy.port)


def test_stop_ends_all_proxy_threads_and_refuses_connections(
    dovecot: Dovecot, dovecot_user: ImapUser
) -> None:
    """Stopping the proxy resets its sessions, leaves no proxy thread behind and frees the port."""
    with TcpProxy(dovecot.host, dovecot.port) as proxy:
        c = dovecot.client(dovecot_user, port=proxy.port)
    with pytest.raises(CONNECTION_LOST):
        c.noop()
    c.shutdown()
    assert not [t for t in threading.enumerate() if t.name.startswith("tcp-proxy") and t.is_alive()]
    with pytest.raises(ConnectionRefusedError):
        dovecot.connect(port=proxy.port)


def test_proxy_refuses_non_loopback_upstreams() -> None:
    """The proxy only ever forwards to this machine; any other address is rejected up front."""
    with pytest.raises(ValueError, match="loopback"):
        TcpProxy("192.0.2.1", 143)
