"""Thread stage: does an inbound mail continue an existing ticket?

| order | evidence                                        | accepted when                                          |
|-------|-------------------------------------------------|--------------------------------------------------------|
| 1     | In-Reply-To / References                        | a Message-ID we stored or sent for the ticket          |
| 2     | reply token `queue+<number>-<hmac>@domain`      | the HMAC over the ticket id verifies, token not off    |
| 3     | subject tag `[PREFIX#NUMBER]`                   | the sender is a participant or staff of its queue      |
| 4     | Outlook `Thread-Index` (first 22 bytes)         | same conversation as a mail of the ticket, same sender,|
|       |                                                 | same subject after reply prefixes are stripped         |
| -     | anything else                                   | new ticket; a refused tag is reported back             |

A subject tag alone is guessable, so a stranger's tag never attaches a mail to someone else's ticket.
What happens to a follow-up of a resolved or long-closed ticket (reopen, or a new linked ticket) is the
conversation stage's decision; this stage only finds the ticket.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy.orm import Session

from mail2ticket import tokens
from mail2ticket.config.model import Config
from mail2ticket.db import conversation_repo, repo
from mail2ticket.db.models import Ticket
from mail2ticket.parse import ParsedMail
from mail2ticket.pipeline.trust import is_staff

# Reply/forward prefixes in the languages our citizens' mail clients use, with counters like RE[2]: or Re^2:.
_REPLY_PREFIX = re.compile(
    r"^\s*(?:re|aw|antw|antwort|wg|wtr|fw|fwd|sv|vs|tr|rv|r|ref|odp|vá|ynt|enc|res)"
    r"\s*(?:\[\d{1,3}\]|\(\d{1,3}\)|\^\d{1,3})?\s*[:：]\s*",
    re.IGNORECASE,
)
# Markers that gateways put in front of the subject of external mail.
_GATEWAY_MARK = re.compile(r"^\s*(?:\[(?:extern|external|ext|extern\w*)\]|\*extern\*)\s*", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class ThreadResult:
    ticket: Ticket | None
    method: str | None = None
    refused_number: str | None = None  # a subject tag we did not accept (for the audit trail)


def subject_tag_pattern(prefix: str) -> re.Pattern[str]:
    return re.compile(rf"\[\s*{re.escape(prefix)}\s*#\s*(?P<number>[A-Za-z0-9-]{{1,40}})\s*\]", re.IGNORECASE)


def subject_tag(prefix: str, number: str) -> str:
    return f"[{prefix}#{number}]"


def strip_reply_prefixes(subject: str) -> str:
    """The subject without any chain of reply/forward prefixes ("Re: AW: WG: RE[2]: x" → "x")."""
    text = subject
    while True:
        stripped = _GATEWAY_MARK.sub("", _REPLY_PREFIX.sub("", text, count=1), count=1)
        if stripped == text:
            return text.strip()
        text = stripped


def normalize_subject(subject: str, tag_pattern: re.Pattern[str] | None = None) -> str:
    """The subject as a conversation key: tags and reply prefixes removed, whitespace collapsed, casefolded."""
    text = tag_pattern.sub(" ", subject) if tag_pattern is not None else subject
    text = strip_reply_prefixes(" ".join(text.split()))
    if tag_pattern is not None:
        text = strip_reply_prefixes(" ".join(tag_pattern.sub(" ", text).split()))
    return " ".join(text.split()).casefold()


def recipient_addresses(envelope_to: Iterable[str], parsed: ParsedMail) -> list[str]:
    """Every address this mail was delivered or written to (reply tokens can be in any of them)."""
    out: list[str] = [a.lower() for a in envelope_to]
    out.extend(parsed.to)
    out.extend(parsed.cc)
    for name in ("delivered-to", "x-original-to"):
        out.extend(v.strip().strip("<>").lower() for v in parsed.header(name))
    return list(dict.fromkeys(out))


def find_thread(session: Session, parsed: ParsedMail, tag_pattern: re.Pattern[str], *, config: Config | None = None,
                secret: bytes = b"", envelope_to: Iterable[str] = ()) -> ThreadResult:
    """The ticket this mail continues, by the methods above in order. Without `config` (a dry run that
    knows no queues) reply tokens and staff are not considered."""
    ticket = repo.ticket_by_message_ids(session, [*parsed.references, *parsed.in_reply_to])
    if ticket is not None:
        return ThreadResult(ticket, "references")

    if config is not None and secret:
        ticket = _by_token(session, config, secret, recipient_addresses(envelope_to, parsed))
        if ticket is not None:
            return ThreadResult(ticket, "reply_token")

    refused: str | None = None
    for match in list(tag_pattern.finditer(parsed.subject))[:5]:
        number = match.group("number")
        tagged = conversation_repo.ticket_by_number_ci(session, number)
        if tagged is not None and _may_use_tag(session, config, tagged, parsed.from_addr):
            return ThreadResult(tagged, "subject_tag")
        refused = refused or number

    ticket = _by_thread_index(session, secret, tag_pattern, parsed)
    if ticket is not None:
        return ThreadResult(ticket, "thread_index")
    return ThreadResult(None, refused_number=refused)


def _by_token(session: Session, config: Config, secret: bytes, addresses: list[str]) -> Ticket | None:
    for number, mac in tokens.candidate_tokens(addresses, config.own_addresses):
        ticket = conversation_repo.ticket_by_number_ci(session, number)
        if ticket is None or not tokens.verify(ticket.id, mac, secret):
            continue
        queue = next((q for q in config.queue if q.name == ticket.queue), None)
        if queue is not None and not queue.reply_token:
            continue
        return ticket
    return None


def _may_use_tag(session: Session, config: Config | None, ticket: Ticket, sender: str | None) -> bool:
    if not sender:
        return False
    if repo.is_participant(session, ticket.id, sender):
        return True
    if config is None:
        return False
    queue = next((q for q in config.queue if q.name == ticket.queue), None)
    return queue is not None and is_staff(queue, sender)


def _by_thread_index(session: Session, secret: bytes, tag_pattern: re.Pattern[str],
                     parsed: ParsedMail) -> Ticket | None:
    key = tokens.conversation_key(parsed.thread_index)
    sender = parsed.from_addr
    if key is None or not sender:
        return None
    subject = normalize_subject(parsed.subject, tag_pattern)
    own_ticket_id = tokens.ticket_from_conversation(key, secret)
    if own_ticket_id is not None:
        ticket = repo.ticket_by_id(session, own_ticket_id)
        if (ticket is not None and repo.is_participant(session, ticket.id, sender)
                and subject == normalize_subject(ticket.subject, tag_pattern)):
            return ticket
        return None
    # 21 bytes are exactly 28 base64 characters: a safe SQL prefix; the 22nd byte is checked after decoding.
    prefix = base64.b64encode(key[:21]).decode()
    for article in conversation_repo.articles_with_thread_prefix(session, prefix, sender):
        if tokens.conversation_key(article.thread_index) != key:
            continue
        ticket = repo.ticket_by_id(session, article.ticket_id)
        if ticket is None:
            continue
        if subject in (normalize_subject(article.subject, tag_pattern), normalize_subject(ticket.subject, tag_pattern)):
            return ticket
    return None
