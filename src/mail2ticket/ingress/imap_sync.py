"""IMAP folder sync: the state machine that turns new messages in one folder into intake rows, exactly once.

Place in the pipeline: IMAP ingress, between the connection (`imap_conn`) and intake. One `FolderSync`
belongs to one (mailbox, folder); `sync_pass` is called after every (re)connect, every IDLE wake-up and
every poll. A pass on a selected folder goes through these states:

| state      | what happens                                                   | on crash / connection loss            |
|------------|----------------------------------------------------------------|---------------------------------------|
| SELECT     | read UIDVALIDITY; compare with the stored one using `!=`       | nothing changed yet                   |
| RESET      | (only if it changed) WARNING, cursor := (new UIDVALIDITY, 0)   | rescan restarts from UID 1            |
| REPLAY     | pending actions of this UIDVALIDITY are carried out            | replayed again (actions idempotent)   |
| SEARCH     | UID SEARCH last+1:* NOT DELETED NOT KEYWORD; filter uid > last | nothing changed yet                   |
| SIZE       | FETCH RFC822.SIZE; over the limit → headers only, quarantined  | nothing changed yet                   |
| FETCH      | BODY.PEEK[] in batches (count and byte bounded); never \\Seen  | partial data discarded, re-fetched    |
| INTAKE     | the batch's rows + planned actions + cursor, one transaction   | all of them there, or none            |
| CURSOR     | last_uid := highest UID of the batch (same transaction)        | refetch → dedupe (source key, hash)   |
| ACT        | flag / move / delete after the commit, then mark actions done  | REPLAY on the next pass               |
| SETTLE     | pending actions of an old UIDVALIDITY: remapped or explained   | settled on the next complete pass     |

Dedupe does the rest: a message fetched twice (crash after commit, UIDVALIDITY change, the same mail in
the box twice) returns the existing intake row, and its server action is still carried out so the box
ends up clean. Failpoints: imap.after_commit_before_action, imap.after_action_before_done.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import structlog
from sqlalchemy.orm import Session, sessionmaker

from mail2ticket.config.model import MailboxConfig
from mail2ticket.db import repo_imap
from mail2ticket.db.engine import unit_of_work
from mail2ticket.db.models import InboundMessage, InboundState
from mail2ticket.failpoints import failpoint
from mail2ticket.ingress.imap_actions import KEYWORD, Outcome, ServerCaps, perform
from mail2ticket.ingress.imap_conn import ImapClient, take_exists_note
from mail2ticket.intake import Envelope, Prepared, insert_or_existing, prepare

log = structlog.get_logger("mail2ticket.imap")

BATCH_BYTES = 16 * 1024 * 1024  # bounds memory per FETCH, whatever batch_size says
SIZE_CHUNK = 1000  # UIDs per RFC822.SIZE fetch, to keep command lines short
MAX_ACTION_ATTEMPTS = 5


@dataclass
class PassReport:
    stored: int = 0
    duplicates: int = 0
    quarantined: int = 0
    gone: int = 0
    actions_done: int = 0
    uidvalidity_changed: bool = False

    @property
    def found(self) -> int:
        return self.stored + self.duplicates + self.quarantined


@dataclass
class _Planned:
    action_id: int
    uid: int
    action: str


@dataclass
class FolderSync:
    box: MailboxConfig
    folder: str
    factory: sessionmaker[Session]
    clock: Callable[[], dt.datetime]
    max_size: int
    on_stored: Callable[[], None] = lambda: None
    tick: Callable[[], None] = lambda: None  # heartbeat, lease renewal, stop check between batches
    log: Any = field(default=None)

    def __post_init__(self) -> None:
        if self.log is None:
            self.log = log.bind(mailbox=self.box.name, folder=self.folder)

    # --- the pass -----------------------------------------------------------------------------------

    def sync_pass(self, client: ImapClient) -> PassReport:
        """One complete pass over the selected folder (see the table in the module docstring)."""
        report = PassReport()
        selected = client.select_folder(self.folder)
        take_exists_note(client)  # SELECT always reports EXISTS; only later ones mean new mail
        uidvalidity = int(selected[b"UIDVALIDITY"])
        caps = ServerCaps.of(client, selected)
        last_uid = self._check_uidvalidity(uidvalidity, report)
        self._replay(client, caps, uidvalidity, report)
        for batch in self._batches(client, caps, uidvalidity, last_uid, report):
            self.tick()
            planned = self._ingest(client, uidvalidity, batch, report)
            self._act(client, caps, planned, report)
        with unit_of_work(self.factory) as session:
            remapped, gone = repo_imap.close_stale_actions(session, self.box.name, self.folder, uidvalidity,
                                                           self.clock())
        if remapped or gone:
            self.log.warning("imap_stale_actions_settled", remapped=remapped, not_found=gone)
        return report

    def _check_uidvalidity(self, uidvalidity: int, report: PassReport) -> int:
        with unit_of_work(self.factory) as session:
            cursor = repo_imap.cursor(session, self.box.name, self.folder)
            if cursor.uidvalidity == uidvalidity:
                return cursor.last_uid
            repo_imap.reset_cursor(session, self.box.name, self.folder, uidvalidity, self.clock())
        if cursor.uidvalidity is not None:
            report.uidvalidity_changed = True
            self.log.warning("imap_uidvalidity_changed", old=cursor.uidvalidity, new=uidvalidity,
                             last_uid=cursor.last_uid, effect="rescanning the folder; dedupe keeps old mail out")
        else:
            self.log.info("imap_folder_first_sync", uidvalidity=uidvalidity)
        return 0

    def _replay(self, client: ImapClient, caps: ServerCaps, uidvalidity: int, report: PassReport) -> None:
        with unit_of_work(self.factory) as session:
            pending = repo_imap.pending_actions(session, self.box.name, self.folder, uidvalidity)
        if pending:
            self.log.info("imap_actions_replayed", count=len(pending))
            self._act(client, caps, [_Planned(p.id, p.uid, p.action) for p in pending], report)

    # --- SEARCH and SIZE ----------------------------------------------------------------------------

    def _batches(self, client: ImapClient, caps: ServerCaps, uidvalidity: int, last_uid: int,
                 report: PassReport) -> Iterator[list[tuple[int, int]]]:
        criteria: list[Any] = ["UID", f"{last_uid + 1}:*", "NOT", "DELETED"]
        if caps.keywords:
            criteria += ["NOT", "KEYWORD", KEYWORD.decode()]
        # `UID n:*` always matches the highest UID, even when it is below n (RFC 3501 6.4.8): filter here.
        uids = sorted(u for u in client.search(criteria) if u > last_uid)
        if not uids:
            return
        batch: list[tuple[int, int]] = []
        batch_bytes = 0
        for start in range(0, len(uids), SIZE_CHUNK):
            chunk = uids[start : start + SIZE_CHUNK]
            sizes = client.fetch(chunk, ["RFC822.SIZE"])
            for uid in chunk:
                if uid not in sizes:  # expunged by someone else since the SEARCH (RELIABILITY T15)
                    report.gone += 1
                    continue
                size = int(sizes[uid].get(b"RFC822.SIZE", 0))
                if size > self.max_size:
                    if batch:
                        yield batch
                        batch, batch_bytes = [], 0
                    self._quarantine_oversize(client, caps, uidvalidity, uid, size, report)
                    continue
                if batch and (len(batch) >= self.box.batch_size or batch_bytes + size > BATCH_BYTES):
                    yield batch
                    batch, batch_bytes = [], 0
                batch.append((uid, size))
                batch_bytes += size
        if batch:
            yield batch

    # --- FETCH and INTAKE ---------------------------------------------------------------------------

    def _ingest(self, client: ImapClient, uidvalidity: int, batch: list[tuple[int, int]],
                report: PassReport) -> list[_Planned]:
        """Store a fetched batch, its planned server actions and the new cursor in one transaction (one fsync)."""
        uids = [uid for uid, _ in batch]
        data = client.fetch(uids, ["BODY.PEEK[]"])
        fetched: list[tuple[int, Prepared]] = []
        for uid in uids:
            raw = data.pop(uid, {}).get(b"BODY[]")
            if raw is None:  # expunged between SEARCH and FETCH: nothing to ingest, nothing to act on
                report.gone += 1
                continue
            fetched.append((uid, prepare(bytes(raw), self._envelope(uidvalidity, uid))))
        del data
        planned: list[_Planned] = []
        with unit_of_work(self.factory) as session:
            for uid, prepared in fetched:
                planned.append(self._store(session, prepared, uidvalidity, uid, self.box.after, report))
            repo_imap.advance_cursor(session, self.box.name, self.folder, uidvalidity, uids[-1], self.clock())
        if planned:
            self.on_stored()
        return planned

    def _envelope(self, uidvalidity: int, uid: int) -> Envelope:
        return Envelope(source="imap", mailbox=self.box.name,
                        source_key=f"imap:{self.box.name}:{self.folder}:{uidvalidity}:{uid}")

    def _store(self, session: Session, prepared: Prepared, uidvalidity: int, uid: int, action: str,
               report: PassReport, quarantine_reason: str | None = None) -> _Planned:
        """Inside the caller's transaction: the intake row (or the existing one) and its planned server action."""
        def record(session: Session, row: InboundMessage) -> None:
            if quarantine_reason is not None:
                row.state = InboundState.QUARANTINED
                row.reason = quarantine_reason
                row.processed_at = self.clock()

        stored = insert_or_existing(session, prepared, record)
        new = not stored.duplicate
        action_id = repo_imap.plan_action(
            session, inbound_id=stored.inbound_id, mailbox=self.box.name, folder=self.folder, uidvalidity=uidvalidity,
            uid=uid, action=action, message_id=prepared.message_id if new else None,
            content_hash=prepared.content_hash if new else None)
        if stored.duplicate:
            # Already stored (refetch after a crash, a rescan, or the same mail twice): still acknowledge it.
            report.duplicates += 1
        elif quarantine_reason is not None:
            report.quarantined += 1
        else:
            report.stored += 1
        self.log.info("imap_message_stored", uid=uid, inbound_id=stored.inbound_id, duplicate=stored.duplicate,
                      size=prepared.size, quarantined=quarantine_reason is not None and new)
        return _Planned(action_id, uid, action)

    def _quarantine_oversize(self, client: ImapClient, caps: ServerCaps, uidvalidity: int, uid: int, size: int,
                             report: PassReport) -> None:
        """Never download an oversize message: keep its headers as a quarantined row, park it on the server."""
        data = client.fetch([uid], ["BODY.PEEK[HEADER]"])
        header = data.get(uid, {}).get(b"BODY[HEADER]")
        if header is None:
            report.gone += 1
            return
        target = self.box.quarantine_folder
        action = f"move:{target}" if target else "mark"
        reason = (f"message too large: {size} bytes, limit {self.max_size}; only the headers were fetched, "
                  + (f"the message was moved to {target!r} on the server" if target
                     else "the message stays in the mailbox, marked $Mail2Ticket"))
        prepared = prepare(bytes(header), self._envelope(uidvalidity, uid))
        with unit_of_work(self.factory) as session:
            planned = self._store(session, prepared, uidvalidity, uid, action, report, quarantine_reason=reason)
            repo_imap.advance_cursor(session, self.box.name, self.folder, uidvalidity, uid, self.clock())
        self.log.warning("imap_message_oversize", uid=uid, size=size, limit=self.max_size, action=action)
        self._act(client, caps, [planned], report)

    # --- ACT ----------------------------------------------------------------------------------------

    def _act(self, client: ImapClient, caps: ServerCaps, planned: list[_Planned], report: PassReport) -> None:
        if not planned:
            return
        failpoint("imap.after_commit_before_action")
        by_action: dict[str, list[_Planned]] = {}
        for item in planned:
            by_action.setdefault(item.action, []).append(item)
        outcomes: dict[int, Outcome] = {}
        for action, items in by_action.items():
            for outcome in perform(client, caps, action, sorted({i.uid for i in items})):
                outcomes[outcome.uid] = outcome
        failpoint("imap.after_action_before_done")
        now = self.clock()
        with unit_of_work(self.factory) as session:
            done = [(item.action_id, outcomes[item.uid].note) for item in planned if outcomes[item.uid].ok]
            repo_imap.finish_actions(session, done, now)
            report.actions_done += len(done)
            for item in planned:
                if not outcomes[item.uid].ok:
                    self._action_failed(session, item, outcomes[item.uid].note or "refused")
        notes = {o.note for o in outcomes.values() if o.ok and o.note}
        for note in notes:
            self.log.info("imap_action_note", note=note)

    def _action_failed(self, session: Session, item: _Planned, error: str) -> None:
        attempts = repo_imap.action_attempts(session, item.action_id)
        give_up = attempts + 1 >= MAX_ACTION_ATTEMPTS
        repo_imap.action_failed(session, item.action_id, error, give_up=give_up)
        (self.log.error if give_up else self.log.warning)(
            "imap_action_failed", uid=item.uid, action=item.action, error=error, attempts=attempts + 1,
            gave_up=give_up)
