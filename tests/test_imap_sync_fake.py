"""Deterministic unit tests of the IMAP folder sync state machine, with an in-memory IMAP server at the seam.

Place in the test suite: the `ImapClient` Protocol is the seam (STYLE.md §11); `FakeImap` below plays a
server whose behaviour each test controls exactly (UIDVALIDITY jumps, expunges between SEARCH and FETCH,
missing MOVE/UIDPLUS). The database, intake and sync code are real. The same behaviours are proven
against a real Dovecot in test_imap_sync_dovecot.py and test_imap_daemon.py.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from mail2ticket.config.model import MailboxConfig
from mail2ticket.db.engine import unit_of_work
from mail2ticket.db.models import ActionState, ImapAction, InboundMessage, InboundState, MailboxState
from mail2ticket.ingress.imap_actions import KEYWORD
from mail2ticket.ingress.imap_sync import FolderSync
from tests.support.mails import citizen_mail


class FakeImap:
    """A one-folder-at-a-time IMAP server in memory; records every command that changes the server."""

    def __init__(self, *, move: bool = True, uidplus: bool = True) -> None:
        self.caps = {b"IMAP4REV1", b"IDLE"} | ({b"MOVE"} if move else set()) | ({b"UIDPLUS"} if uidplus else set())
        self.folders: dict[str, dict[int, tuple[bytes, set[bytes]]]] = {"INBOX": {}, "Processed": {}}
        self.uidvalidity = {"INBOX": 100, "Processed": 200}
        self.uidnext = {"INBOX": 1, "Processed": 1}
        self.selected = "INBOX"
        self.commands: list[str] = []
        self.before_fetch: Callable[[list[int], Sequence[str]], None] | None = None
        self.search_extra: list[int] = []

    # --- test helpers ---
    def add(self, raw: bytes, folder: str = "INBOX", flags: Sequence[bytes] = ()) -> int:
        uid = self.uidnext[folder]
        self.uidnext[folder] += 1
        self.folders[folder][uid] = (raw, set(flags))
        return uid

    def flags_of(self, uid: int, folder: str = "INBOX") -> set[bytes]:
        return self.folders[folder][uid][1]

    # --- the ImapClient protocol ---
    def capabilities(self) -> tuple[bytes, ...]:
        return tuple(self.caps)

    def has_capability(self, capability: str) -> bool:
        return capability.upper().encode() in self.caps

    def select_folder(self, folder: str, readonly: bool = False) -> dict[bytes, Any]:
        self.selected = folder
        return {b"UIDVALIDITY": self.uidvalidity[folder], b"EXISTS": len(self.folders[folder]),
                b"PERMANENTFLAGS": (b"\\Seen", b"\\Deleted", b"\\*")}

    def folder_exists(self, folder: str) -> bool:
        return folder in self.folders

    def create_folder(self, folder: str) -> None:
        self.folders[folder] = {}
        self.uidvalidity[folder] = 300
        self.uidnext[folder] = 1

    def search(self, criteria: Any = "ALL", charset: str | None = None) -> list[int]:
        box = self.folders[self.selected]
        lo = int(criteria[1].split(":")[0])
        hits = [u for u, (_, fl) in box.items() if u >= lo and b"\\Deleted" not in fl and KEYWORD not in fl]
        if box and not hits:
            hits = [max(box)]  # RFC 3501: "n:*" always includes the highest UID
        return sorted(set(hits) | set(self.search_extra))

    def fetch(self, messages: Sequence[int], data: Sequence[str], modifiers: Any = None) -> dict[int, dict[bytes, Any]]:
        if self.before_fetch is not None:
            self.before_fetch(list(messages), data)
        box = self.folders[self.selected]
        out: dict[int, dict[bytes, Any]] = {}
        for uid in messages:
            if uid not in box:
                continue
            raw, flags = box[uid]
            item: dict[bytes, Any] = {}
            for name in data:
                if name == "RFC822.SIZE":
                    item[b"RFC822.SIZE"] = len(raw)
                elif name == "BODY.PEEK[]":
                    item[b"BODY[]"] = raw
                elif name == "BODY.PEEK[HEADER]":
                    item[b"BODY[HEADER]"] = raw.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"
                elif name == "FLAGS":
                    item[b"FLAGS"] = tuple(flags)
            out[uid] = item
        return out

    def add_flags(self, messages: Sequence[int], flags: Sequence[bytes], silent: bool = False) -> None:
        self.commands.append(f"STORE {list(messages)} +{sorted(f.decode() for f in flags)}")
        for uid in messages:
            if uid in self.folders[self.selected]:
                self.folders[self.selected][uid][1].update(flags)

    def copy(self, messages: Sequence[int], folder: str) -> None:
        self.commands.append(f"COPY {list(messages)} {folder}")
        for uid in messages:
            if uid in self.folders[self.selected]:
                raw, flags = self.folders[self.selected][uid]
                self.add(raw, folder, tuple(flags))

    def move(self, messages: Sequence[int], folder: str) -> None:
        assert b"MOVE" in self.caps, "MOVE used without the capability"
        self.commands.append(f"MOVE {list(messages)} {folder}")
        for uid in messages:
            if uid in self.folders[self.selected]:
                raw, flags = self.folders[self.selected].pop(uid)
                self.add(raw, folder, tuple(flags))

    def uid_expunge(self, messages: Sequence[int]) -> None:
        assert b"UIDPLUS" in self.caps, "UID EXPUNGE used without UIDPLUS"
        self.commands.append(f"UID EXPUNGE {list(messages)}")
        box = self.folders[self.selected]
        for uid in messages:
            if uid in box and b"\\Deleted" in box[uid][1]:
                del box[uid]

    def idle(self) -> None: ...

    def idle_check(self, timeout: float | None = None) -> list[Any]:
        return []

    def idle_done(self) -> None: ...

    def noop(self) -> None: ...

    def logout(self) -> None: ...

    def shutdown(self) -> None: ...


BOX = {"name": "bauamt", "host": "127.0.0.1", "security": "none", "username": "u", "password_env": "X"}


def make_sync(factory: sessionmaker[Session], *, max_size: int = 1_000_000, **box: Any) -> FolderSync:
    config = MailboxConfig.model_validate({**BOX, **box})
    return FolderSync(config, "INBOX", factory, lambda: dt.datetime.now(dt.UTC), max_size)


def count(factory: sessionmaker[Session], model: Any, *where: Any) -> int:
    with unit_of_work(factory) as session:
        return int(session.scalar(select(func.count()).select_from(model).where(*where)) or 0)


def test_new_messages_are_stored_once_and_moved(factory: sessionmaker[Session]) -> None:
    """Each new message becomes one intake row, and only then is it moved away with one UID MOVE."""
    server = FakeImap()
    for i in range(3):
        server.add(citizen_mail(subject=f"Antrag {i}"))
    report = make_sync(factory, after="move:Processed").sync_pass(server)
    assert report.stored == 3
    assert count(factory, InboundMessage) == 3
    assert server.folders["INBOX"] == {} and len(server.folders["Processed"]) == 3
    assert server.commands == ["MOVE [1, 2, 3] Processed"]
    assert count(factory, ImapAction, ImapAction.state == ActionState.DONE) == 3


def test_uid_range_star_returning_the_last_uid_is_not_reingested(factory: sessionmaker[Session]) -> None:
    """`UID n:*` answers with the highest UID even below n; that message is not stored again (T14)."""
    server = FakeImap()
    server.add(citizen_mail(subject="schon da"))
    sync = make_sync(factory, after="flag")
    sync.sync_pass(server)
    server.search_extra = [1]  # the server "repeats" UID 1 for the range 2:*
    report = sync.sync_pass(server)
    assert report.found == 0
    assert count(factory, InboundMessage) == 1


def test_message_expunged_between_search_and_fetch_is_skipped(factory: sessionmaker[Session]) -> None:
    """A message another client expunges after SEARCH yields no row and no error; the rest go on (T15)."""
    server = FakeImap()
    for i in range(3):
        server.add(citizen_mail(subject=f"m{i}"))

    def expunge_uid_2(uids: list[int], data: Sequence[str]) -> None:
        if "BODY.PEEK[]" in data:
            server.folders["INBOX"].pop(2, None)

    server.before_fetch = expunge_uid_2
    report = make_sync(factory).sync_pass(server)
    assert (report.stored, report.gone) == (2, 1)
    assert count(factory, InboundMessage) == 2


def test_uidvalidity_change_rescans_without_new_rows(factory: sessionmaker[Session]) -> None:
    """After UIDVALIDITY changes the folder is rescanned; known mail is recognised, new mail is stored (T12)."""
    server = FakeImap()
    old = [citizen_mail(subject=f"alt {i}") for i in range(2)]
    for raw in old:
        server.add(raw)
    sync = make_sync(factory, after="flag")
    sync.sync_pass(server)
    server.folders["INBOX"] = {}
    server.uidnext["INBOX"] = 1
    server.uidvalidity["INBOX"] = 99  # lower than before: still a change (compare with !=)
    for raw in old:
        server.add(raw)
    server.add(citizen_mail(subject="neu"))
    report = sync.sync_pass(server)
    assert report.uidvalidity_changed
    assert (report.stored, report.duplicates) == (1, 2)
    assert count(factory, InboundMessage) == 3
    assert all(KEYWORD in server.flags_of(uid) for uid in (1, 2, 3))
    with unit_of_work(factory) as session:
        state = session.scalar(select(MailboxState))
        assert state is not None and (state.uidvalidity, state.last_uid) == (99, 3)


def test_pending_action_of_old_uidvalidity_is_remapped(factory: sessionmaker[Session]) -> None:
    """A server action still pending when UIDVALIDITY changes is carried out on the message's new UID (T12)."""
    server = FakeImap()
    raw = citizen_mail(subject="wartet")
    server.add(raw)
    sync = make_sync(factory, after="flag")
    server.add_flags = lambda *a, **k: (_ for _ in ()).throw(OSError("connection reset"))  # type: ignore[method-assign]
    with pytest.raises(OSError):
        sync.sync_pass(server)
    del server.add_flags  # back to the class method
    server.folders["INBOX"] = {}
    server.uidvalidity["INBOX"] = 555
    new_uid = server.add(raw)
    sync.sync_pass(server)
    assert KEYWORD in server.flags_of(new_uid)
    with unit_of_work(factory) as session:
        actions = session.scalars(select(ImapAction).order_by(ImapAction.id)).all()
        assert [(a.uidvalidity, a.state) for a in actions] == [(100, ActionState.DONE), (555, ActionState.DONE)]
        assert actions[0].last_error is not None and "remapped" in actions[0].last_error


def test_server_without_move_and_uidplus_never_expunges(factory: sessionmaker[Session]) -> None:
    """Without MOVE and UIDPLUS a move becomes a flag: no EXPUNGE of any kind, others' \\Deleted untouched (T16)."""
    server = FakeImap(move=False, uidplus=False)
    someone_elses = server.add(citizen_mail(subject="gelöscht von Kollegin"), flags=[b"\\Deleted"])
    mine = server.add(citizen_mail(subject="Antrag"))
    report = make_sync(factory, after="move:Processed").sync_pass(server)
    assert report.stored == 1
    assert not any("EXPUNGE" in c or "MOVE" in c or "COPY" in c for c in server.commands)
    assert server.flags_of(mine) >= {b"\\Seen", KEYWORD}
    assert server.flags_of(someone_elses) == {b"\\Deleted"}


def test_copy_based_move_is_not_repeated_on_replay(factory: sessionmaker[Session]) -> None:
    """With UIDPLUS but no MOVE, a replayed move after a crash does not copy the message a second time."""
    server = FakeImap(move=False, uidplus=True)
    server.add(citizen_mail(subject="Antrag"))
    real_expunge = server.uid_expunge
    server.uid_expunge = lambda m: (_ for _ in ()).throw(OSError("cut"))  # type: ignore[method-assign]
    sync = make_sync(factory, after="move:Processed")
    with pytest.raises(OSError):
        sync.sync_pass(server)
    server.uid_expunge = real_expunge  # type: ignore[method-assign]
    sync.sync_pass(server)
    assert server.folders["INBOX"] == {}
    assert len(server.folders["Processed"]) == 1
    assert count(factory, ImapAction, ImapAction.state == ActionState.DONE) == 1


def test_replayed_action_for_a_vanished_uid_is_done(factory: sessionmaker[Session]) -> None:
    """A pending action whose message is already gone is marked done, not retried forever (T08)."""
    server = FakeImap()
    server.add(citizen_mail(subject="weg"))
    sync = make_sync(factory, after="move:Processed")
    server.move = lambda *a: (_ for _ in ()).throw(OSError("cut"))  # type: ignore[method-assign]
    with pytest.raises(OSError):
        sync.sync_pass(server)
    del server.move
    server.folders["INBOX"].pop(1)  # e.g. the MOVE went through before the connection died
    sync.sync_pass(server)
    with unit_of_work(factory) as session:
        action = session.scalar(select(ImapAction))
        assert action is not None and action.state == ActionState.DONE
        assert action.last_error is not None and "no longer in the folder" in action.last_error


def test_oversize_message_is_quarantined_from_headers_only(factory: sessionmaker[Session]) -> None:
    """A message over the size limit is never downloaded: its headers are quarantined and it is moved aside."""
    server = FakeImap()
    server.create_folder("Quarantaene")
    big = server.add(citizen_mail(subject="Riesenanhang", body="x" * 5000))
    fetched: list[Sequence[str]] = []
    server.before_fetch = lambda uids, data: fetched.append(data)
    report = make_sync(factory, max_size=2048, quarantine_folder="Quarantaene").sync_pass(server)
    assert report.quarantined == 1
    assert not any("BODY.PEEK[]" in d for d in fetched)
    assert big not in server.folders["INBOX"] and len(server.folders["Quarantaene"]) == 1
    with unit_of_work(factory) as session:
        row = session.scalar(select(InboundMessage))
        assert row is not None and row.state == InboundState.QUARANTINED
        assert row.reason is not None and "too large" in row.reason


def test_refused_action_is_retried_then_given_up(factory: sessionmaker[Session]) -> None:
    """A server that refuses an action does not block the folder; after five attempts it is marked failed."""
    from imapclient.exceptions import IMAPClientError

    server = FakeImap()
    server.add(citizen_mail(subject="Antrag"))
    server.move = lambda *a: (_ for _ in ()).throw(IMAPClientError("NO [TRYCREATE] no such folder"))  # type: ignore[method-assign]
    sync = make_sync(factory, after="move:Processed")
    for _ in range(6):
        sync.sync_pass(server)
    assert count(factory, InboundMessage) == 1
    with unit_of_work(factory) as session:
        action = session.scalar(select(ImapAction))
        assert action is not None and action.state == ActionState.FAILED and action.attempts == 5
