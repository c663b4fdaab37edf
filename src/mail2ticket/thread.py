"""Thread stage: does an inbound mail continue an existing ticket?

| order | evidence                                   | accepted when                                  |
|-------|--------------------------------------------|------------------------------------------------|
| 1     | In-Reply-To / References                   | a Message-ID we stored or sent for the ticket  |
| 2     | subject tag `[PREFIX#NUMBER]`              | the sender is already a participant            |
| -     | anything else                              | new ticket; a refused tag is reported back     |

A subject tag alone is guessable, so a stranger's tag never attaches a mail to someone else's ticket.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlalchemy.orm import Session

from mail2ticket.db import repo
from mail2ticket.db.models import Ticket
from mail2ticket.parse import ParsedMail


@dataclass(frozen=True, slots=True)
class ThreadResult:
    ticket: Ticket | None
    method: str | None = None
    refused_number: str | None = None  # a subject tag we did not accept (for the audit trail)


def subject_tag_pattern(prefix: str) -> re.Pattern[str]:
    return re.compile(rf"\[\s*{re.escape(prefix)}\s*#\s*(?P<number>[A-Za-z0-9-]{{1,40}})\s*\]", re.IGNORECASE)


def subject_tag(prefix: str, number: str) -> str:
    return f"[{prefix}#{number}]"


def find_thread(session: Session, parsed: ParsedMail, tag_pattern: re.Pattern[str]) -> ThreadResult:
    ticket = repo.ticket_by_message_ids(session, [*parsed.references, *parsed.in_reply_to])
    if ticket is not None:
        return ThreadResult(ticket, "references")
    match = tag_pattern.search(parsed.subject)
    if match is None:
        return ThreadResult(None)
    number = match.group("number")
    tagged = repo.ticket_by_number(session, number)
    if tagged is not None and parsed.from_addr and repo.is_participant(session, tagged.id, parsed.from_addr):
        return ThreadResult(tagged, "subject_tag")
    return ThreadResult(None, refused_number=number)
