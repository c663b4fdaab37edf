"""Ticket workflow: status changes and other field changes, each validated and recorded as an event.

Callers (the CLI, commands by mail, the conversation stage on a citizen's reply) own the transaction.
A status change can mail the requester and the CC participants a status mail: per status
(`[conversation] statuses[].mail`), per queue (`[[queue]] status_mails`), never to our own or no-reply
addresses (a refusal is an event). Staff cause status mails, so the inbound-flood limits do not apply.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy.orm import Session

from mail2ticket.config.conversation import DEFAULT_STATUSES as _DEFAULT_STATUS_CONFIGS
from mail2ticket.db import conversation_repo, repo
from mail2ticket.db.models import Ticket
from mail2ticket.outbox.enqueue import MailRequest, enqueue
from mail2ticket.outbox.guards import is_noreply
from mail2ticket.runtime import Runtime

DEFAULT_STATUSES = tuple(s.name for s in _DEFAULT_STATUS_CONFIGS)
MAIL_ROLES = ("requester", "cc")


class WorkflowError(ValueError):
    """A requested change is not allowed; the message is shown to the user as is."""


def statuses(runtime: Runtime) -> tuple[str, ...]:
    return runtime.config.conversation.status_names()


def initial_status(runtime: Runtime) -> str:
    return statuses(runtime)[0]


def status_label(runtime: Runtime, status: str, language: str) -> str:
    found = runtime.config.conversation.status(status)
    return found.label(language) if found is not None else status


def change_status(session: Session, runtime: Runtime, ticket: Ticket, status: str, *, actor: str, via: str,
                  now: dt.datetime, notify: bool = True) -> bool:
    """Set the status; False when it already had it. Raises WorkflowError for an unknown status.

    With `notify`, the participants get the status mail configured for the new status.
    """
    valid = statuses(runtime)
    if status not in valid:
        raise WorkflowError(f"unknown status {status!r}; valid statuses: {', '.join(valid)}")
    if ticket.status == status:
        return False
    old = ticket.status
    ticket.status = status
    ticket.updated_at = now
    ticket.closed_at = now if status == runtime.config.conversation.closed_status else None
    repo.add_event(session, "status_changed", ticket_id=ticket.id, actor=actor, old=old, new=status, via=via)
    session.flush()
    if notify:
        send_status_mail(session, runtime, ticket, old, status, now=now)
    return True


def status_mail_enabled(runtime: Runtime, ticket: Ticket, status: str) -> bool:
    queue = runtime.config.queue_by_name(ticket.queue)
    if queue.status_mails is not None:
        return status in queue.status_mails
    found = runtime.config.conversation.status(status)
    return found is not None and found.mail


def status_template(runtime: Runtime, ticket: Ticket, status: str) -> str:
    specific = f"status_{status}"
    return specific if runtime.renderer.exists(specific, ticket.language, ticket.queue) else "status"


def staff_triggered_refusal(runtime: Runtime, recipient: str) -> str | None:
    """Why a mail that staff caused (status mail, reply) must not go to `recipient`, or None.

    Only address checks: staff actions cannot be triggered by an outsider, so the flood and rate limits of
    `refuse_automatic_mail` (which protect against mail that answers inbound mail) do not apply, and such
    mails are not counted against the citizen's budget for acknowledgements.
    """
    config = runtime.config
    lowered = recipient.lower()
    local, _, domain = lowered.rpartition("@")
    if lowered in config.own_addresses or f"{local.split('+', 1)[0]}@{domain}" in config.own_addresses:
        return "own_address"
    if domain == config.daemon.domain and local.startswith("bounces"):
        return "own_address"
    if is_noreply(lowered, config.loop_protection.noreply_patterns):
        return "noreply_address"
    return None


def send_status_mail(session: Session, runtime: Runtime, ticket: Ticket, old: str, new: str, *,
                     now: dt.datetime) -> int:
    """Enqueue the status mail for `new` to every participant who may get it; the number enqueued."""
    if not status_mail_enabled(runtime, ticket, new):
        return 0
    template = status_template(runtime, ticket, new)
    sequence = len([e for e in repo.events(session, ticket.id) if e.type == "status_changed"])
    last_in = conversation_repo.last_inbound_from(session, ticket.id, [ticket.requester] if ticket.requester else [])
    references = conversation_repo.thread_message_ids(session, ticket.id)
    sent = 0
    for participant in conversation_repo.participant_rows(session, ticket.id, MAIL_ROLES):
        reason = staff_triggered_refusal(runtime, participant.address)
        if reason is not None:
            repo.add_event(session, "status_mail_suppressed", ticket_id=ticket.id, recipient=participant.address,
                           status=new, reason=reason)
            continue
        row = enqueue(session, runtime, ticket, MailRequest(
            template=template,
            recipient=participant.address,
            recipient_name=participant.name,
            dedupe_key=f"status:{ticket.id}:{sequence}:{participant.address}"[:200],
            in_reply_to=last_in.message_id if last_in is not None else None,
            references=references,
            extra={"old_status": old, "old_status_label": status_label(runtime, old, ticket.language)},
            counted=False,
        ), now)
        sent += row is not None
    return sent
