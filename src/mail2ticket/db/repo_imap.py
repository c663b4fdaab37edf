"""Repositories for IMAP ingress: the per-folder cursor (`mailbox_state`) and planned server actions (`imap_action`).

Functions may flush, never commit; the IMAP sync owns its (short) transactions. An action row is written in
the intake transaction of its message, so "stored but not yet flagged/moved" is always visible after a crash.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from mail2ticket.db.conversation_repo import flush_for
from mail2ticket.db.direct import Direct
from mail2ticket.db.models import ActionState, ImapAction, MailboxState, utcnow

MAX_ERROR = 1000


@dataclass(frozen=True, slots=True)
class Cursor:
    uidvalidity: int | None
    last_uid: int


@dataclass(frozen=True, slots=True)
class PlannedAction:
    id: int
    inbound_id: int | None
    uidvalidity: int
    uid: int
    action: str
    attempts: int


def cursor(session: Session, mailbox: str, folder: str) -> Cursor:
    row = session.scalar(select(MailboxState).where(MailboxState.mailbox == mailbox, MailboxState.folder == folder))
    if row is None:
        return Cursor(None, 0)
    return Cursor(row.uidvalidity, row.last_uid)


def reset_cursor(session: Session, mailbox: str, folder: str, uidvalidity: int, now: dt.datetime) -> None:
    """Start over at UID 0 under a (new) UIDVALIDITY."""
    row = session.scalar(select(MailboxState).where(MailboxState.mailbox == mailbox, MailboxState.folder == folder))
    if row is None:
        try:
            with session.begin_nested():
                session.add(MailboxState(mailbox=mailbox, folder=folder, uidvalidity=uidvalidity, last_uid=0,
                                         updated_at=now))
            return
        except IntegrityError:
            row = session.scalar(
                select(MailboxState).where(MailboxState.mailbox == mailbox, MailboxState.folder == folder)
            )
            assert row is not None
    row.uidvalidity = uidvalidity
    row.last_uid = 0
    row.updated_at = now


def advance_cursor(session: Session, mailbox: str, folder: str, uidvalidity: int, uid: int,
                   now: dt.datetime) -> None:
    """Move last_uid forward (never back, and only under the UIDVALIDITY it belongs to)."""
    session.execute(
        update(MailboxState)
        .where(MailboxState.mailbox == mailbox, MailboxState.folder == folder,
               MailboxState.uidvalidity == uidvalidity, MailboxState.last_uid < uid)
        .values(last_uid=uid, updated_at=now)
        .execution_options(synchronize_session=False)
    )


def plan_action(session: Session, *, inbound_id: int | None, mailbox: str, folder: str, uidvalidity: int,
                uid: int, action: str, message_id: str | None, content_hash: str | None) -> int:
    """Record the server action for one message (idempotent: an existing row for the same UID is returned)."""
    # Direct statements on the session's connection: one of each per fetched message, no ORM object needed.
    flush_for(session, ImapAction)
    key = {"mailbox": mailbox, "folder": folder, "uidvalidity": uidvalidity, "uid": uid}
    existing = _ACTION_FOR_UID.scalar(session, key)
    if existing is not None:
        return int(existing)
    action_id = _INSERT_ACTION.scalar(session, {
        **key, "inbound_id": inbound_id, "action": action,
        "message_id": message_id[:998] if message_id else None, "content_hash": content_hash, "now": utcnow()})
    assert action_id is not None
    return int(action_id)


_ACTION_FOR_UID = Direct(select(ImapAction.id).where(
    ImapAction.mailbox == bindparam("mailbox"), ImapAction.folder == bindparam("folder"),
    ImapAction.uidvalidity == bindparam("uidvalidity"), ImapAction.uid == bindparam("uid")))
_INSERT_ACTION = Direct(insert(ImapAction).values({
    **{name: bindparam(name) for name in (
        "mailbox", "folder", "uidvalidity", "uid", "inbound_id", "action", "message_id", "content_hash")},
    "state": ActionState.PENDING, "attempts": 0, "created_at": bindparam("now")}).returning(ImapAction.id))


def action_attempts(session: Session, action_id: int) -> int:
    return int(session.scalar(select(ImapAction.attempts).where(ImapAction.id == action_id)) or 0)


def pending_actions(session: Session, mailbox: str, folder: str, uidvalidity: int) -> list[PlannedAction]:
    """Pending actions of this folder under the current UIDVALIDITY, oldest UID first."""
    rows = session.scalars(
        select(ImapAction)
        .where(ImapAction.mailbox == mailbox, ImapAction.folder == folder, ImapAction.uidvalidity == uidvalidity,
               ImapAction.state == ActionState.PENDING)
        .order_by(ImapAction.uid)
    )
    return [PlannedAction(r.id, r.inbound_id, r.uidvalidity, r.uid, r.action, r.attempts) for r in rows]


def finish_actions(session: Session, actions: Sequence[tuple[int, str | None]], now: dt.datetime) -> None:
    """Mark actions (id, note) done: one statement for a whole fetched batch."""
    if actions:
        session.connection().execute(_FINISH_ACTION, [
            {"action_id": action_id, "now": now, "note": note[:MAX_ERROR] if note else None}
            for action_id, note in actions])


_FINISH_ACTION = (
    update(ImapAction).where(ImapAction.id == bindparam("action_id"))
    .values(state=ActionState.DONE, done_at=bindparam("now"), last_error=bindparam("note"),
            attempts=ImapAction.attempts + 1)
)


def action_failed(session: Session, action_id: int, error: str, *, give_up: bool) -> None:
    values: dict[str, object] = {"last_error": error[:MAX_ERROR], "attempts": ImapAction.attempts + 1}
    if give_up:
        values["state"] = ActionState.FAILED
    session.execute(
        update(ImapAction).where(ImapAction.id == action_id).values(**values)
        .execution_options(synchronize_session=False)
    )


def close_stale_actions(session: Session, mailbox: str, folder: str, uidvalidity: int,
                        now: dt.datetime) -> tuple[int, int]:
    """After a full rescan under a new UIDVALIDITY: settle the pending actions planned under an old one.

    An old action whose message was found again (a row under the current UIDVALIDITY for the same intake id)
    is done, remapped; one whose message is gone is failed with the explanation. Returns (remapped, gone).
    """
    stale = list(session.scalars(
        select(ImapAction).where(ImapAction.mailbox == mailbox, ImapAction.folder == folder,
                                 ImapAction.uidvalidity != uidvalidity, ImapAction.state == ActionState.PENDING)
    ))
    remapped = gone = 0
    for row in stale:
        current = None
        if row.inbound_id is not None:
            current = session.execute(
                select(ImapAction.uid).where(ImapAction.mailbox == mailbox, ImapAction.folder == folder,
                                             ImapAction.uidvalidity == uidvalidity,
                                             ImapAction.inbound_id == row.inbound_id).limit(1)
            ).scalar()
        if current is not None:
            row.state = ActionState.DONE
            row.done_at = now
            row.last_error = f"remapped: UIDVALIDITY changed to {uidvalidity}, now UID {current}"
            remapped += 1
        else:
            row.state = ActionState.FAILED
            row.last_error = (f"UIDVALIDITY changed from {row.uidvalidity} to {uidvalidity} and the message was "
                              "not found in the folder again (removed or already handled)")
            gone += 1
    return remapped, gone
