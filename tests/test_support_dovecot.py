"""Tests of the real-Dovecot test fixture (tests/support/dovecot.py, imap_fixtures.py).

Place in the test suite: they prove the IMAP test server behaves like the production servers
the daemon will face (login, APPEND, IDLE, MOVE, UIDVALIDITY changes, a server without MOVE),
so the integration tests built on it can be trusted.
"""

from __future__ import annotations

import smtplib

import pytest
from imapclient import IMAPClient
from imapclient.exceptions import CapabilityError, LoginError

from tests.support.dovecot import Dovecot, ImapUser

pytest_plugins = ["tests.support.imap_fixtures"]


def _mail(subject: str, body: str = "Hallo Amt,\r\nbitte um Rueckruf.\r\n") -> bytes:
    return (
        f"From: buerger@example.org\r\nTo: amt@example.org\r\nSubject: {subject}\r\n"
        f"Message-ID: <{subject.replace(' ', '-')}@example.org>\r\n\r\n{body}"
    ).encode()


def test_fresh_user_logs_in_to_an_empty_inbox(dovecot: Dovecot, dovecot_user: ImapUser) -> None:
    """A fresh test user can log in and finds an empty INBOX plus the Processed folder."""
    with dovecot.client(dovecot_user) as c:
        assert c.select_folder("INBOX")[b"EXISTS"] == 0
        assert c.folder_exists("Processed")
    assert dovecot.uids(dovecot_user) == []


def test_each_fresh_user_is_a_different_account(dovecot: Dovecot) -> None:
    """Two tests never share a mailbox: every fresh user is a new account."""
    first, second = dovecot.user(), dovecot.user()
    assert first.name != second.name
    dovecot.append(first, "INBOX", _mail("only for the first"))
    assert dovecot.uids(second) == []


def test_append_round_trips_bytes_and_flags(dovecot: Dovecot, dovecot_user: ImapUser) -> None:
    """An appended message comes back byte for byte with its flags, and reading it leaves it unseen."""
    raw = _mail("Antrag 1")
    uid = dovecot.append(dovecot_user, "INBOX", raw, flags=["\\Flagged"])
    assert dovecot.messages(dovecot_user) == {uid: raw}
    assert dovecot.flags(dovecot_user) == {uid: {"\\Flagged"}}


def test_append_many_returns_consecutive_uids(dovecot: Dovecot, dovecot_user: ImapUser) -> None:
    """Appending a batch into a new folder creates it and yields one UID per message, in order."""
    uids = dovecot.append_many(dovecot_user, "Eingang/Bauamt", [_mail(f"m{i}") for i in range(5)])
    assert uids == [1, 2, 3, 4, 5]
    assert dovecot.uids(dovecot_user, "Eingang/Bauamt") == uids


def test_idle_is_woken_by_an_append_from_another_connection(dovecot: Dovecot, dovecot_user: ImapUser) -> None:
    """A client in IDLE hears about new mail delivered through another connection."""
    with dovecot.client(dovecot_user) as watcher:
        watcher.select_folder("INBOX")
        watcher.idle()
        dovecot.append(dovecot_user, "INBOX", _mail("new mail"))
        responses = watcher.idle_check(timeout=5)
        watcher.idle_done()
    assert (1, b"EXISTS") in responses


@pytest.mark.usefixtures("dovecot")  # for the skip/fail when Dovecot is not installed
def test_idle_notify_interval_variant_sends_still_here() -> None:
    """With idle_notify_interval=1 an idle client gets a keep-alive without any new mail."""
    with Dovecot(pool_size=1, idle_notify_interval=1) as server, server.client(server.user()) as c:
        c.select_folder("INBOX")
        c.idle()
        responses = c.idle_check(timeout=5)
        c.idle_done()
    assert (b"OK", b"Still here") in responses


def test_move_puts_the_message_into_processed(dovecot: Dovecot, dovecot_user: ImapUser) -> None:
    """MOVE takes a message out of INBOX and into Processed."""
    uid = dovecot.append(dovecot_user, "INBOX", _mail("to move"))
    with dovecot.client(dovecot_user) as c:
        assert c.has_capability("MOVE")
        c.select_folder("INBOX")
        c.move([uid], "Processed")
    assert dovecot.uids(dovecot_user) == []
    assert len(dovecot.uids(dovecot_user, "Processed")) == 1


@pytest.mark.parametrize("folder", ["Processed", "INBOX"])
def test_recreate_folder_changes_uidvalidity(dovecot: Dovecot, dovecot_user: ImapUser, folder: str) -> None:
    """Re-creating a folder empties it and gives it a new UIDVALIDITY, as an admin's rebuild would."""
    dovecot.append(dovecot_user, folder, _mail("before the rebuild"))
    before = dovecot.uidvalidity(dovecot_user, folder)
    after = dovecot.recreate_folder(dovecot_user, folder)
    assert after != before
    assert dovecot.uidvalidity(dovecot_user, folder) == after
    assert dovecot.uids(dovecot_user, folder) == []


def test_no_move_variant_lacks_move_and_uidplus(dovecot_no_move: Dovecot) -> None:
    """The T16 server advertises neither MOVE nor UIDPLUS, so a capability-aware client cannot MOVE."""
    user = dovecot_no_move.user()
    caps = dovecot_no_move.capabilities(user)
    assert "MOVE" not in caps and "UIDPLUS" not in caps
    assert "IDLE" in caps
    uid = dovecot_no_move.append(user, "INBOX", _mail("stays"))
    with dovecot_no_move.client(user) as c:
        c.select_folder("INBOX")
        with pytest.raises(CapabilityError):
            c.move([uid], "Processed")


@pytest.mark.timeout(10)
def test_wrong_password_is_rejected_and_later_logins_still_work(
    dovecot: Dovecot, dovecot_user: ImapUser
) -> None:
    """A wrong password is refused, and it does not slow down the next correct login."""
    c = dovecot.connect()
    with pytest.raises(LoginError):
        c.login(dovecot_user.name, "wrong")
    c.shutdown()
    with dovecot.client(dovecot_user) as good:
        assert good.noop()


def test_doveadm_reports_mailbox_status(dovecot: Dovecot, dovecot_user: ImapUser) -> None:
    """doveadm, run as the server's user, sees the mail appended over IMAP."""
    dovecot.append_many(dovecot_user, "INBOX", [_mail("a"), _mail("b")])
    out = dovecot.doveadm("mailbox", "status", "-u", dovecot_user.name, "messages", "INBOX").stdout
    assert out.split() == ["INBOX", "messages=2"]


def test_lmtp_delivery_lands_in_the_inbox(dovecot: Dovecot, dovecot_user: ImapUser) -> None:
    """A message delivered over LMTP can be read back over IMAP."""
    with smtplib.LMTP(dovecot.host, dovecot.lmtp_port) as lmtp:
        lmtp.sendmail("buerger@example.org", [dovecot_user.name], _mail("via lmtp"))
    [raw] = dovecot.messages(dovecot_user).values()
    assert b"Subject: via lmtp" in raw


@pytest.mark.usefixtures("dovecot")  # for the skip/fail when Dovecot is not installed
def test_tls_variant_accepts_imaps_logins() -> None:
    """With tls=True the server also speaks implicit TLS, trusted through its own CA file."""
    with Dovecot(pool_size=1, tls=True) as server:
        assert server.imaps_port is not None
        with server.client(server.user(), tls=True) as c:
            assert isinstance(c, IMAPClient)
            assert c.select_folder("INBOX")[b"EXISTS"] == 0
