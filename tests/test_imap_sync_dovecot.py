"""The IMAP folder sync against a real Dovecot: UIDVALIDITY changes, the N:* boundary, concurrent expunges,
a server without MOVE/UIDPLUS, oversize mail (RELIABILITY T12-T16, T34).

Place in the test suite: drives `FolderSync.sync_pass` directly (fast, no daemon process) with a real
`IMAPClient` on a real Dovecot and a real database; the daemon-level tests are in test_imap_daemon.py.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from imapclient import IMAPClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from mail2ticket.config.model import MailboxConfig
from mail2ticket.db.engine import unit_of_work
from mail2ticket.db.models import ActionState, ImapAction, InboundMessage, InboundState
from mail2ticket.ingress.imap_sync import FolderSync
from tests.support.dovecot import Dovecot, ImapUser
from tests.support.mails import citizen_mail


def make_sync(factory: sessionmaker[Session], folder: str = "INBOX", *, max_size: int = 10_000_000,
              **box: Any) -> FolderSync:
    config = MailboxConfig.model_validate(
        {"name": "bauamt", "host": "127.0.0.1", "security": "none", "username": "u", "password_env": "X",
         "folders": [folder], **box})
    return FolderSync(config, folder, factory, lambda: dt.datetime.now(dt.UTC), max_size)


def rows(factory: sessionmaker[Session]) -> list[InboundMessage]:
    with unit_of_work(factory) as session:
        return list(session.scalars(select(InboundMessage).order_by(InboundMessage.id)))


def actions(factory: sessionmaker[Session]) -> list[ImapAction]:
    with unit_of_work(factory) as session:
        return list(session.scalars(select(ImapAction).order_by(ImapAction.id)))


def no_message_id_mail(body: str) -> bytes:
    """Two of these differ only in the body: same From, Subject and Date second, and no Message-ID (T13)."""
    return (b"From: Erika Mustermann <erika@example.org>\r\nTo: bauamt@stadt.example\r\n"
            b"Subject: Bauantrag\r\nDate: Mon, 02 Mar 2026 09:15:00 +0100\r\n\r\n" + body.encode() + b"\r\n")


def test_uidvalidity_change_brings_no_new_rows(dovecot: Dovecot, dovecot_user: ImapUser,
                                                factory: sessionmaker[Session]) -> None:
    """Recreating the folder and re-adding the same mails (two without Message-ID) creates no new rows (T12, T13)."""
    folder = "Antraege"
    mails = [no_message_id_mail("Erster Antrag."), no_message_id_mail("Zweiter Antrag."), citizen_mail()]
    dovecot.append_many(dovecot_user, folder, mails)
    sync = make_sync(factory, folder)
    with dovecot.client(dovecot_user) as client:
        assert sync.sync_pass(client).stored == 3
    dovecot.recreate_folder(dovecot_user, folder)
    dovecot.append_many(dovecot_user, folder, [*mails, citizen_mail(subject="Neu nach dem Wechsel")])
    with dovecot.client(dovecot_user) as client:
        report = sync.sync_pass(client)
    assert report.uidvalidity_changed
    assert (report.stored, report.duplicates) == (1, 3)
    assert len(rows(factory)) == 4
    assert all("\\Seen" in flags for flags in dovecot.flags(dovecot_user, folder).values())


def test_last_uid_returned_by_star_range_is_not_reingested(dovecot: Dovecot, dovecot_user: ImapUser,
                                                           factory: sessionmaker[Session]) -> None:
    """With no new mail, `UID last+1:*` returns the last UID; the sync stores nothing again (T14)."""
    dovecot.append_many(dovecot_user, "INBOX", [citizen_mail(subject=f"m{i}") for i in range(2)])
    sync = make_sync(factory, after="flag")
    with dovecot.client(dovecot_user) as client:
        sync.sync_pass(client)
        client.remove_flags([1, 2], [b"$Mail2Ticket"])  # so the server really answers 3:* with UID 2
        client.select_folder("INBOX")
        assert client.search(["UID", "3:*"]) == [2]
        report = sync.sync_pass(client)
    assert report.found == 0
    assert len(rows(factory)) == 2


class ExpungeAfterSearch:
    """A real client whose first FETCH is preceded by another connection expunging one message (T15)."""

    def __init__(self, client: IMAPClient, other: IMAPClient, victim: int) -> None:
        self._client, self._other, self._victim, self.fired = client, other, victim, False

    def fetch(self, messages: Sequence[int], data: Sequence[str], modifiers: Any = None) -> Any:
        if not self.fired:
            self.fired = True
            self._other.select_folder("INBOX")
            self._other.add_flags([self._victim], [b"\\Deleted"])
            self._other.uid_expunge([self._victim])
            self._client.noop()  # let our session hear of the expunge, as it would on a busy server
        return self._client.fetch(messages, data, modifiers)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def test_concurrent_expunge_between_search_and_fetch(dovecot: Dovecot, dovecot_user: ImapUser,
                                                     factory: sessionmaker[Session]) -> None:
    """A message expunged by another client between SEARCH and FETCH is skipped: no error, no phantom row (T15)."""
    uids = dovecot.append_many(dovecot_user, "INBOX", [citizen_mail(subject=f"m{i}") for i in range(3)])
    sync = make_sync(factory, after="move:Processed")
    with dovecot.client(dovecot_user) as client, dovecot.client(dovecot_user) as other:
        report = sync.sync_pass(ExpungeAfterSearch(client, other, uids[1]))  # type: ignore[arg-type]
    assert (report.stored, report.gone) == (2, 1)
    assert [r.source_key.rsplit(":", 1)[1] for r in rows(factory) if r.source_key] == [str(uids[0]), str(uids[2])]
    assert dovecot.uids(dovecot_user) == [] and len(dovecot.uids(dovecot_user, "Processed")) == 2
    assert all(a.state == ActionState.DONE for a in actions(factory))


def test_server_without_move_or_uidplus_never_expunges(dovecot_no_move: Dovecot,
                                                       factory: sessionmaker[Session]) -> None:
    """Without MOVE/UIDPLUS, move and delete degrade to flags; another user's \\Deleted mail stays (T16)."""
    user = dovecot_no_move.user()
    deleted_by_colleague = dovecot_no_move.append(user, "INBOX", citizen_mail(subject="Spam"), flags=["\\Deleted"])
    ours = dovecot_no_move.append_many(user, "INBOX", [citizen_mail(subject=f"Antrag {i}") for i in range(2)])
    for after in ("move:Processed", "delete"):
        with dovecot_no_move.client(user) as client:
            make_sync(factory, after=after).sync_pass(client)
        ours.append(dovecot_no_move.append(user, "INBOX", citizen_mail(subject=after)))
    assert len(rows(factory)) == 3  # the mail appended last was not synced
    flags = dovecot_no_move.flags(user)
    assert flags[deleted_by_colleague] == {"\\Deleted"}
    assert all("$Mail2Ticket" in flags[uid] for uid in ours[:3])
    assert "\\Deleted" in flags[ours[2]]  # "delete" without UIDPLUS: marked, never expunged
    assert dovecot_no_move.uids(user) == [deleted_by_colleague, *ours]  # a plain EXPUNGE would have removed some


def test_oversize_message_is_quarantined_without_download(dovecot: Dovecot, dovecot_user: ImapUser,
                                                          factory: sessionmaker[Session]) -> None:
    """An oversize message is recorded from its headers only, quarantined, and moved to the quarantine folder."""
    big = citizen_mail(subject="Pläne im Anhang", body="Bauplan " * 20_000)
    small = citizen_mail(subject="Kurze Frage")
    dovecot.append_many(dovecot_user, "INBOX", [big, small])
    sync = make_sync(factory, max_size=50_000, quarantine_folder="Quarantaene", after="move:Processed")
    with dovecot.client(dovecot_user) as client:
        if not client.folder_exists("Quarantaene"):
            client.create_folder("Quarantaene")
        report = sync.sync_pass(client)
    assert (report.stored, report.quarantined) == (1, 1)
    stored = rows(factory)
    quarantined = [r for r in stored if r.state == InboundState.QUARANTINED]
    assert len(quarantined) == 1 and quarantined[0].size < 2000
    assert quarantined[0].reason is not None and "too large" in quarantined[0].reason
    assert list(dovecot.messages(dovecot_user, "Quarantaene").values()) == [big]
    assert list(dovecot.messages(dovecot_user, "Processed").values()) == [small]
