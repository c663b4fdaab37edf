"""Staff by mail: new-ticket notifications, staff replies to the citizen, and commands by mail.

Called by the conversation stage inside the orchestrator's transaction.

| staff follow-up                                   | result                                                 |
|---------------------------------------------------|--------------------------------------------------------|
| not authenticated (P10)                           | internal article, commands ignored, event says why     |
| an unknown or invalid command                     | internal article, nothing changed, error mail to staff |
| `#note`                                           | internal article, other commands applied               |
| text after the command lines                      | outbound article, mailed to requester (and CCs) from   |
|                                                   | the queue address; status mail folded into the reply   |
| only commands                                     | internal article, commands applied, status mails sent  |

The citizen never sees the staff member's address unless the queue sets `show_staff_address`, and never
sees the command lines, the quoted notification or its routing summary: only the new text goes out.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from sqlalchemy.orm import Session

from mail2ticket import workflow
from mail2ticket.classify import Classification
from mail2ticket.config.conversation import COMMANDS
from mail2ticket.db import conversation_repo, repo
from mail2ticket.db.models import Article, InboundMessage, Ticket
from mail2ticket.safe_text import clean_text
from mail2ticket.outbox.enqueue import MailRequest, enqueue
from mail2ticket.outbox.guards import refuse_automatic_mail
from mail2ticket.parse import ParsedMail
from mail2ticket.pipeline import commands, store
from mail2ticket.pipeline.trust import authenticate
from mail2ticket.runtime import Runtime
from mail2ticket.text.body import body_text
from mail2ticket.text.quotes import new_text

MAX_NOTIFY_TEXT = 20_000
REPLY_ROLES = ("requester", "cc")
# Every key the staff_new template may read; callers fill in what they know.
EMPTY_SUMMARY: dict[str, Any] = {
    "queue": None, "rule": None, "matched": [], "priority": None, "category": None, "tags": [],
    "classification": None, "also_addressed": [], "forwarded_by": None, "linked": None, "refused_tag": None,
    "moved_from": None,
}


# First lines of our own notification (templates staff_new, de and en): a staff client that quotes it without
# any quote marker must still not send the routing summary or the citizen's text back out.
_NOTIFICATION_START = re.compile(
    r"^\s*(?:Neuer Vorgang in |New ticket in |Ein Vorgang wurde in |A ticket was moved to |"
    r"----- Nachricht -----|----- Message -----|Befehle \(jeweils|Commands \(each)"
)


def cut_notification(text: str) -> str:
    """The text above the first line that starts a copy of our notification."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if _NOTIFICATION_START.match(line):
            return "\n".join(lines[:i])
    return text


def notify_enabled(runtime: Runtime, queue: str) -> bool:
    conv = runtime.config.conversation
    override = conv.override(queue)
    return override.notify_staff if override.notify_staff is not None else conv.notify_staff


def notify_addresses(runtime: Runtime, queue: str) -> tuple[str, ...]:
    config = runtime.config
    override = config.conversation.override(queue)
    if not notify_enabled(runtime, queue):
        return ()
    if override.notify is not None:
        return override.notify
    return tuple(a.lower() for a in config.queue_by_name(queue).staff if "@" in a and not a.startswith("@"))


def notify_new_ticket(session: Session, runtime: Runtime, ticket: Ticket, article: Article | None,
                      summary: dict[str, Any], now: dt.datetime, *, reason: str = "new") -> int:
    """Mail the queue's staff about a (new or moved) ticket; returns the number of mails enqueued."""
    recipients = notify_addresses(runtime, ticket.queue)
    if not recipients:
        reason_code = "no_staff_address" if notify_enabled(runtime, ticket.queue) else "disabled"
        repo.add_event(session, "staff_notification_skipped", ticket_id=ticket.id, reason=reason_code)
        return 0
    body = (article.text if article is not None else "")[:MAX_NOTIFY_TEXT]
    count = 0
    for address in recipients:
        row = enqueue(session, runtime, ticket, MailRequest(
            template="staff_new",
            recipient=address,
            recipient_name=None,
            dedupe_key=f"notify:{ticket.id}:{ticket.queue}:{reason}:{address}"[:200],
            auto_submitted="auto-generated",
            counted=False,
            to_staff=True,
            extra={"body": body, "summary": {**EMPTY_SUMMARY, **summary}, "requester": ticket.requester or "",
                   "requester_display": clean_text(ticket.requester_name, max_len=60), "reason": reason},
        ), now)
        count += row is not None
    if count:
        repo.add_event(session, "staff_notified", ticket_id=ticket.id, recipients=list(recipients), reason=reason)
    return count


def handle_staff_followup(session: Session, runtime: Runtime, inbound: InboundMessage, parsed: ParsedMail,
                          ticket: Ticket, classification: Classification, method: str | None,
                          now: dt.datetime) -> str:
    """Record a staff member's mail to a ticket and act on it; returns the outcome for the log."""
    sender = parsed.from_addr or ""
    body = body_text(parsed)
    lines, rest = commands.split_commands(body)
    trust = authenticate(runtime.config, inbound, parsed, ticket.queue)
    if not trust.trusted:
        store.add_inbound_article(session, ticket, parsed, inbound, internal=True, now=now)
        repo.add_event(session, "staff_mail_not_authenticated", ticket_id=ticket.id, inbound_id=inbound.id,
                       actor=sender, reason=trust.reason, commands_ignored=len(lines), method=method)
        return "staff_untrusted"

    changes, errors = commands.validate(runtime.config, ticket.queue, sender, lines)
    if errors:
        store.add_inbound_article(session, ticket, parsed, inbound, internal=True, now=now)
        repo.add_event(session, "staff_commands_rejected", ticket_id=ticket.id, inbound_id=inbound.id,
                       actor=sender, errors=errors)
        _command_error_mail(session, runtime, ticket, parsed, errors, now)
        return "staff_commands_rejected"

    internal = any(c.command == "note" for c in changes)
    reply_text = "" if internal else new_text(cut_notification(rest)).strip() if rest.strip() else ""
    article = store.add_inbound_article(session, ticket, parsed, inbound, internal=True, now=now,
                                        text=rest if lines else None)
    article.kind = "note" if internal else "staff"
    if changes:
        repo.add_event(session, "staff_commands", ticket_id=ticket.id, inbound_id=inbound.id, actor=sender,
                       via="mail", auth=trust.reason, commands=[c.line[:200] for c in changes])
    status_changes = [c for c in changes if c.command == "status"]
    apply_changes(session, runtime, ticket, [c for c in changes if c.command != "status"], actor=sender, now=now)
    will_reply = bool(reply_text) and ticket.requester is not None
    status_changed = False
    for change in status_changes:
        assert change.value is not None
        status_changed |= workflow.change_status(session, runtime, ticket, change.value, actor=sender, via="mail",
                                                 now=now, notify=not will_reply)
    if will_reply:
        send_reply(session, runtime, ticket, reply_text, staff_address=sender, staff_name=parsed.from_name,
                   now=now, inbound_id=inbound.id, status_changed=status_changed, key=f"in{inbound.id}")
    return "staff_note" if internal else "staff_reply" if will_reply else "staff_commands"


def apply_changes(session: Session, runtime: Runtime, ticket: Ticket, changes: list[commands.Change], *,
                  actor: str, now: dt.datetime) -> None:
    """Apply the non-status changes; each is an event."""
    for change in changes:
        if change.command == "priority" and change.value and change.value != ticket.priority:
            repo.add_event(session, "priority_changed", ticket_id=ticket.id, actor=actor, old=ticket.priority,
                           new=change.value, via="mail")
            ticket.priority = change.value
        elif change.command == "assign" and change.value != ticket.assignee:
            repo.add_event(session, "assigned", ticket_id=ticket.id, actor=actor, old=ticket.assignee,
                           new=change.value, via="mail")
            ticket.assignee = change.value
        elif change.command == "tag" and change.value and change.value not in ticket.tags:
            ticket.tags = [*ticket.tags, change.value]
            repo.add_event(session, "tag_added", ticket_id=ticket.id, actor=actor, tag=change.value, via="mail")
        elif change.command == "queue" and change.value and change.value != ticket.queue:
            old = ticket.queue
            ticket.queue = change.value
            repo.add_event(session, "queue_changed", ticket_id=ticket.id, actor=actor, old=old, new=change.value,
                           via="mail")
            session.flush()
            notify_new_ticket(session, runtime, ticket, conversation_repo.first_article(session, ticket.id),
                              {"queue": change.value, "moved_from": old, "priority": ticket.priority,
                               "tags": list(ticket.tags)}, now, reason="moved")
        ticket.updated_at = now


def send_reply(session: Session, runtime: Runtime, ticket: Ticket, text: str, *, staff_address: str,
               staff_name: str | None, now: dt.datetime, inbound_id: int | None = None,
               status_changed: bool = False, key: str) -> Article | None:
    """Send staff text to the requester (and CC participants) from the queue address, as an outbound article."""
    config = runtime.config
    queue = config.queue_by_name(ticket.queue)
    roles = REPLY_ROLES if config.conversation.reply_to_cc else ("requester",)
    recipients = [p for p in conversation_repo.participant_rows(session, ticket.id, roles)
                  if p.address not in config.own_addresses]
    if not recipients:
        repo.add_event(session, "reply_not_sent", ticket_id=ticket.id, actor=staff_address, reason="no_recipient")
        return None
    last_in = conversation_repo.last_inbound_from(session, ticket.id, [p.address for p in recipients])
    references = conversation_repo.thread_message_ids(session, ticket.id)
    article = store.add_outbound_article(
        session, ticket, sender=queue.address, sender_name=queue.display_name,
        recipients=[p.address for p in recipients], subject=ticket.subject, text=text, message_id=None,
        in_reply_to=last_in.message_id if last_in is not None else None, now=now, inbound_id=inbound_id,
    )
    extra = {
        "body": text,
        "status_changed": status_changed,
        "staff_name": clean_text(staff_name, max_len=60) if queue.show_staff_address else "",
        "staff_address": staff_address if queue.show_staff_address else "",
    }
    for participant in recipients:
        refusal = workflow.staff_triggered_refusal(runtime, participant.address)
        if refusal is not None:
            repo.add_event(session, "reply_not_sent", ticket_id=ticket.id, recipient=participant.address,
                           reason=refusal)
            continue
        row = enqueue(session, runtime, ticket, MailRequest(
            template="reply",
            recipient=participant.address,
            recipient_name=participant.name,
            dedupe_key=f"reply:{ticket.id}:{key}:{participant.address}"[:200],
            automatic=False,
            in_reply_to=article.in_reply_to,
            references=references,
            extra=extra,
            article_id=article.id,
        ), now)
        if row is not None and article.message_id is None:
            article.message_id = row.message_id
    repo.add_event(session, "reply_sent", ticket_id=ticket.id, actor=staff_address,
                   recipients=[p.address for p in recipients], status_changed=status_changed)
    target = config.conversation.status_on_staff_reply
    if not status_changed and target is not None and ticket.status == workflow.initial_status(runtime):
        workflow.change_status(session, runtime, ticket, target, actor=staff_address, via="reply", now=now,
                               notify=False)
    return article


def _command_error_mail(session: Session, runtime: Runtime, ticket: Ticket, parsed: ParsedMail, errors: list[str],
                        now: dt.datetime) -> None:
    config = runtime.config
    recipient = parsed.from_addr
    reason = refuse_automatic_mail(
        session, recipient=recipient, ticket_id=ticket.id, own_addresses=config.own_addresses,
        own_domain=config.daemon.domain, loop=config.loop_protection, now=now,
    )
    if reason is not None or recipient is None:
        repo.add_event(session, "command_error_mail_suppressed", ticket_id=ticket.id, reason=reason or "no_sender")
        return
    enqueue(session, runtime, ticket, MailRequest(
        template="command_error",
        to_staff=True,
        recipient=recipient,
        recipient_name=parsed.from_name,
        dedupe_key=f"cmderr:{ticket.id}:{parsed.message_id or now.isoformat()}"[:200],
        in_reply_to=parsed.message_id,
        references=parsed.references,
        extra={"errors": errors, "commands": list(COMMANDS),
               "aliases": sorted(config.conversation.command_aliases.items())},
    ), now)
