"""Server-side actions on ingested IMAP messages: flag, delete, move, mark — always after the intake commit.

Place in the pipeline: the acknowledgement half of IMAP ingress (the IMAP analogue of SMTP's 250). Every
action is idempotent, because after a crash it is replayed without knowing how far it got:

| action       | with MOVE / UIDPLUS                         | without (RELIABILITY T16)                           |
|--------------|---------------------------------------------|-----------------------------------------------------|
| `flag`       | +FLAGS (\\Seen $Mail2Ticket)                | same                                                |
| `mark`       | +FLAGS ($Mail2Ticket) (left unread)         | same                                                |
| `delete`     | +FLAGS \\Deleted, UID EXPUNGE of that UID   | \\Deleted stays set; never a plain EXPUNGE          |
| `move:X`     | UID MOVE; else COPY, \\Deleted, UID EXPUNGE | flag instead (COPY without removal would duplicate) |

A UID that is no longer in the folder means the action already happened (or someone removed the mail):
it is reported as done, never as an error (RELIABILITY T08). For COPY-based moves our keyword is set
together with \\Deleted after the COPY, so a replay that finds the keyword does not copy a second time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mail2ticket.ingress.imap_conn import COMMAND_ERRORS, CONNECTION_ERRORS, ImapClient, error_text

KEYWORD = b"$Mail2Ticket"
SEEN, DELETED = b"\\Seen", b"\\Deleted"
GONE = "message no longer in the folder (already handled, or removed by someone else)"


@dataclass(frozen=True, slots=True)
class ServerCaps:
    move: bool
    uidplus: bool
    keywords: bool  # PERMANENTFLAGS contains \* : we may set our own keyword

    @classmethod
    def of(cls, client: ImapClient, select_response: dict[bytes, Any]) -> ServerCaps:
        permanent = select_response.get(b"PERMANENTFLAGS")
        keywords = permanent is None or b"\\*" in tuple(permanent)
        return cls(move=client.has_capability("MOVE"), uidplus=client.has_capability("UIDPLUS"), keywords=keywords)


@dataclass(frozen=True, slots=True)
class Outcome:
    uid: int
    ok: bool
    note: str | None = None  # e.g. GONE, or a fallback taken; the error text when not ok


def perform(client: ImapClient, caps: ServerCaps, action: str, uids: Sequence[int]) -> list[Outcome]:
    """Carry out one action on a set of UIDs in the selected folder; a refusal is isolated per UID."""
    if not uids:
        return []
    try:
        return _perform_set(client, caps, action, list(uids))
    except CONNECTION_ERRORS:
        raise
    except COMMAND_ERRORS as exc:
        if len(uids) == 1:
            return [Outcome(uids[0], False, error_text(exc))]
    outcomes: list[Outcome] = []
    for uid in uids:  # find the one the server objects to; the others still get done
        try:
            outcomes.extend(_perform_set(client, caps, action, [uid]))
        except CONNECTION_ERRORS:
            raise
        except COMMAND_ERRORS as exc:
            outcomes.append(Outcome(uid, False, error_text(exc)))
    return outcomes


def _perform_set(client: ImapClient, caps: ServerCaps, action: str, uids: list[int]) -> list[Outcome]:
    flags = client.fetch(uids, ["FLAGS"])
    present = [u for u in uids if u in flags]
    outcomes = [Outcome(u, True, GONE) for u in uids if u not in flags]
    if not present:
        return outcomes
    keyword = [KEYWORD] if caps.keywords else []
    note: str | None = None
    if action == "flag":
        client.add_flags(present, [SEEN, *keyword], silent=True)
    elif action == "mark":
        if keyword:
            client.add_flags(present, keyword, silent=True)
    elif action == "delete":
        client.add_flags(present, [DELETED, *keyword], silent=True)
        if caps.uidplus:
            client.uid_expunge(present)
        else:
            note = "server lacks UIDPLUS: \\Deleted is set, the message stays until the mailbox is expunged"
    elif action.startswith("move:"):
        target = action[5:]
        if caps.move:
            client.move(present, target)
        elif caps.uidplus:
            to_copy = [u for u in present if KEYWORD not in _flag_set(flags[u])]
            if to_copy:
                client.copy(to_copy, target)
            client.add_flags(present, [DELETED, *keyword], silent=True)
            client.uid_expunge(present)
        else:
            client.add_flags(present, [SEEN, *keyword], silent=True)
            note = "server lacks MOVE and UIDPLUS: flagged instead of moved"
    else:
        raise ValueError(f"unknown IMAP action {action!r}")
    outcomes.extend(Outcome(u, True, note) for u in present)
    return sorted(outcomes, key=lambda o: o.uid)


def _flag_set(item: dict[bytes, Any]) -> frozenset[bytes]:
    return frozenset(bytes(f) for f in item.get(b"FLAGS", ()))
