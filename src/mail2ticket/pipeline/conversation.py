"""Conversation stage: attach a mail to its ticket, or open a new ticket, acknowledge it and tell staff.

Called by the orchestrator for every mail that survived parsing, loop checks and classification, inside
the orchestrator's transaction. Returns the ticket and what happened; raises `Ignore`/`Quarantine` for
rule actions.

| the mail                                              | result                                              |
|-------------------------------------------------------|-----------------------------------------------------|
| continues a ticket (see `thread`), from staff         | `staff.handle_staff_followup` (reply, commands)     |
| continues a ticket, from the citizen or a CC          | article; a resolved/closed ticket is reopened       |
| continues a ticket closed > reopen_window_days ago    | new ticket linked to the old one                    |
| is new                                                | ticket (requester: From, Reply-To by rule, or the   |
|                                                       | citizen in a staff forward), ack, staff notified    |
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence
from typing import Any

from sqlalchemy.orm import Session

from mail2ticket import workflow
from mail2ticket.classify import Classification
from mail2ticket.config.model import Config, QueueConfig
from mail2ticket.db import repo
from mail2ticket.db.models import InboundMessage, Ticket
from mail2ticket.outbox.enqueue import MailRequest, enqueue
from mail2ticket.outbox.guards import refuse_automatic_mail
from mail2ticket.outcomes import Ignore, Quarantine
from mail2ticket.parse import ParsedMail
from mail2ticket.pipeline import staff, store
from mail2ticket.pipeline.requester import forwarded_requester
from mail2ticket.pipeline.trust import authenticate, is_staff
from mail2ticket.rules import Decision, MailFacts
from mail2ticket.runtime import Runtime
from mail2ticket.text.body import body_text
from mail2ticket.thread import find_thread, strip_reply_prefixes

CONTROL_PREFIX = "x-mail2ticket-"
LANGUAGES = ("de", "en")


def handle(session: Session, runtime: Runtime, inbound: InboundMessage, parsed: ParsedMail,
           classification: Classification, now: dt.datetime) -> tuple[Ticket, str]:
    """The ticket this mail now belongs to, and what happened ("followup", "created", "staff_reply", …)."""
    parsed = without_control_headers(parsed)
    thread = find_thread(session, parsed, runtime.tag_pattern, config=runtime.config, secret=runtime.secret,
                         envelope_to=inbound.envelope_to)
    linked: Ticket | None = None
    if thread.ticket is not None:
        outcome = followup(session, runtime, inbound, parsed, thread.ticket, thread.method, classification, now)
        if outcome is not None:
            return thread.ticket, outcome
        linked = thread.ticket

    arrival = arrival_queues(runtime, inbound, parsed)
    decision = runtime.router.route(MailFacts(parsed, classification.kind, arrival))
    if decision.action == "ignore":
        raise Ignore(f"rule {decision.rule!r}: {decision.reason or 'ignore'}")
    if decision.action == "quarantine":
        raise Quarantine(f"rule {decision.rule!r}: {decision.reason or 'quarantine'}")
    if classification.kind == "list" and decision.rule is None:
        raise Ignore("list or bulk mail and no rule asks for a ticket")
    if linked is not None and linked.queue in {q.name for q in runtime.config.queue}:
        decision = dataclasses.replace(decision, queue=linked.queue)

    ticket = new_ticket(session, runtime, inbound, parsed, decision, classification, arrival, now,
                        linked=linked, refused_number=thread.refused_number)
    return ticket, "created"


def without_control_headers(parsed: ParsedMail) -> ParsedMail:
    """The mail as rules and threading may see it: inbound `X-Mail2Ticket-*` headers are never believed."""
    if not any(k.startswith(CONTROL_PREFIX) for k in parsed.headers):
        return parsed
    headers = {k: v for k, v in parsed.headers.items() if not k.startswith(CONTROL_PREFIX)}
    return dataclasses.replace(parsed, headers=headers)


def _queue(config: Config, name: str) -> QueueConfig | None:
    return next((q for q in config.queue if q.name == name), None)


def is_own(config: Config, address: str) -> bool:
    """One of our queue addresses, a plus-tagged form of one, or an address of our VERP return path."""
    lowered = address.lower()
    local, _, domain = lowered.rpartition("@")
    base = local.split("+", 1)[0] + "@" + domain
    if lowered in config.own_addresses or base in config.own_addresses:
        return True
    return domain == config.daemon.domain and local.startswith("bounces+")


def followup(session: Session, runtime: Runtime, inbound: InboundMessage, parsed: ParsedMail, ticket: Ticket,
             method: str | None, classification: Classification, now: dt.datetime) -> str | None:
    """Record a mail that continues `ticket`; None when the ticket is closed for too long (a new ticket is due)."""
    config = runtime.config
    conv = config.conversation
    sender = parsed.from_addr
    human = classification.kind == "human"
    queue = _queue(config, ticket.queue)
    if human and sender and sender != ticket.requester and queue is not None and is_staff(queue, sender):
        outcome = staff.handle_staff_followup(session, runtime, inbound, parsed, ticket, classification, method, now)
        repo.add_event(session, "article_added", ticket_id=ticket.id, inbound_id=inbound.id, actor=sender,
                       method=method, classification=classification.kind, staff=True)
        return outcome

    window = dt.timedelta(days=config.daemon.reopen_window_days)
    if (human and ticket.status == conv.closed_status and ticket.closed_at is not None
            and now - ticket.closed_at > window):
        return None

    kind = "auto-reply" if classification.kind == "auto-reply" else "mail"
    store.add_inbound_article(session, ticket, parsed, inbound, kind=kind, internal=kind != "mail", now=now)
    if sender and kind == "mail" and not is_own(config, sender) and not (queue and is_staff(queue, sender)):
        repo.add_participant(session, ticket.id, sender, parsed.from_name, "cc")
    repo.add_event(session, "article_added", ticket_id=ticket.id, inbound_id=inbound.id,
                   actor=sender, method=method, classification=classification.kind)
    if not human:
        return "followup"
    trust = authenticate(config, inbound, parsed, ticket.queue)
    if trust.reason.startswith("dmarc_") and not trust.trusted:
        # T38 b: the right token or tag, but the relay says the From is forged: keep it, flag it, change nothing.
        repo.add_event(session, "followup_flagged", ticket_id=ticket.id, inbound_id=inbound.id, actor=sender,
                       reason=trust.reason, method=method)
        return "followup_flagged"
    if ticket.status in conv.reopen_from:
        workflow.change_status(session, runtime, ticket, conv.reopen_status, actor=sender or "requester",
                               via="reply", now=now, notify=False)
        repo.add_event(session, "reopened", ticket_id=ticket.id, inbound_id=inbound.id, actor=sender)
        return "reopened"
    return "followup"


def arrival_queues(runtime: Runtime, inbound: InboundMessage, parsed: ParsedMail) -> tuple[str, ...]:
    """Queues addressed by this stored mail (see `addressed_queues`)."""
    return addressed_queues(runtime.config, inbound.envelope_to, inbound.mailbox, parsed)


def addressed_queues(config: Config, envelope_to: Sequence[str], mailbox: str | None,
                     parsed: ParsedMail) -> tuple[str, ...]:
    """Queues addressed by a mail: envelope recipients first, then To/Cc (plus-tags ignored), then the
    queue of the IMAP mailbox it came from."""
    by_address: dict[str, str] = {}
    for q in config.queue:
        for addr in (q.address, *q.aliases):
            by_address[addr] = q.name
    found: list[str] = []
    for addr in [*envelope_to, *parsed.to, *parsed.cc]:
        lowered = addr.lower()
        local, _, domain = lowered.partition("@")
        base = local.split("+", 1)[0] + "@" + domain
        for candidate in (lowered, base):
            if candidate in by_address and by_address[candidate] not in found:
                found.append(by_address[candidate])
    if mailbox:
        box = next((m for m in config.mailbox if m.name == mailbox), None)
        if box is not None and box.queue and box.queue not in found:
            found.append(box.queue)
    return tuple(found)


def requester_language(runtime: Runtime, parsed: ParsedMail, queue: QueueConfig) -> str:
    if runtime.config.conversation.detect_language:
        for value in parsed.header("content-language"):
            lang = value.strip().split(",")[0].split("-")[0].strip().lower()
            if lang in LANGUAGES:
                return lang
    return queue.language or runtime.config.daemon.language


def new_ticket(session: Session, runtime: Runtime, inbound: InboundMessage, parsed: ParsedMail,
               decision: Decision, classification: Classification, arrival: tuple[str, ...],
               now: dt.datetime, *, linked: Ticket | None = None, refused_number: str | None = None) -> Ticket:
    config = runtime.config
    queue = config.queue_by_name(decision.queue)
    requester = parsed.reply_to if decision.requester == "reply-to" and parsed.reply_to else parsed.from_addr
    requester_name = parsed.from_name if requester == parsed.from_addr else None
    subject: str | None = None
    forwarder: str | None = None
    forward_event: dict[str, Any] | None = None
    body = body_text(parsed)
    if queue.forwarded_requester and classification.kind == "human" and is_staff(queue, parsed.from_addr):
        found = forwarded_requester(parsed, body)
        if found is not None and not is_own(config, found.address) and found.address != parsed.from_addr:
            trust = authenticate(config, inbound, parsed, queue.name)
            if trust.trusted:
                forwarder, requester, requester_name = parsed.from_addr, found.address, found.name
                subject = strip_reply_prefixes(found.subject or parsed.subject) or parsed.subject
                forward_event = {"forwarder": forwarder, "source": found.source, "auth": trust.reason}
            else:
                forward_event = {"ignored": True, "reason": trust.reason, "source": found.source}
    created = parsed.date if inbound.archive and parsed.date else now
    ticket = store.create_ticket(
        session,
        number_format=config.daemon.ticket_number_format,
        parsed=parsed,
        decision=decision,
        requester=requester,
        requester_name=requester_name,
        language=requester_language(runtime, parsed, queue),
        now=created,
        status=workflow.initial_status(runtime),
        subject=subject,
    )
    kind = "auto-reply" if classification.kind == "auto-reply" else "mail"
    article = store.add_inbound_article(session, ticket, parsed, inbound, kind=kind, now=created)
    if requester and not is_own(config, requester):
        repo.add_participant(session, ticket.id, requester, requester_name, "requester")
    if forwarder:
        repo.add_participant(session, ticket.id, forwarder, parsed.from_name, "forwarder")
    if queue.cc_participants and forwarder is None:
        for cc in parsed.cc:
            if not is_own(config, cc) and cc != requester and not is_staff(queue, cc):
                repo.add_participant(session, ticket.id, cc, None, "cc")
    repo.add_event(session, "ticket_created", ticket_id=ticket.id, inbound_id=inbound.id, actor=requester,
                   queue=ticket.queue, classification=classification.kind)
    if forward_event is not None:
        repo.add_event(session, "forward_not_trusted" if forward_event.get("ignored") else "forwarded_by",
                       ticket_id=ticket.id, inbound_id=inbound.id, actor=parsed.from_addr, **forward_event)
    if decision.rule:
        repo.add_event(session, "rule_matched", ticket_id=ticket.id, rule=decision.rule,
                       matched=list(decision.matched))
    other_queues = [q for q in arrival if q != ticket.queue]
    if other_queues:
        repo.add_event(session, "also_addressed", ticket_id=ticket.id, queues=other_queues)
    if refused_number:
        repo.add_event(session, "subject_tag_refused", ticket_id=ticket.id, inbound_id=inbound.id,
                       actor=parsed.from_addr, referenced=refused_number)
    if linked is not None:
        ticket.linked_ticket_id = linked.id
        repo.add_event(session, "linked_to_closed", ticket_id=ticket.id, inbound_id=inbound.id,
                       actor=parsed.from_addr, linked=linked.number)
        repo.add_event(session, "followup_after_close", ticket_id=linked.id, inbound_id=inbound.id,
                       actor=parsed.from_addr, new_ticket=ticket.number)
    acknowledge(session, runtime, inbound, parsed, ticket, decision, classification, now,
                forwarded=forwarder is not None)
    if not inbound.archive and classification.kind != "auto-reply":
        staff.notify_new_ticket(session, runtime, ticket, article, routing_summary(
            decision, classification, other_queues, forwarder, linked, refused_number), now)
    return ticket


def routing_summary(decision: Decision, classification: Classification, other_queues: list[str],
                    forwarder: str | None, linked: Ticket | None, refused_number: str | None) -> dict[str, Any]:
    """What staff see about the routing: plain values, no links."""
    return {
        "queue": decision.queue,
        "rule": decision.rule,
        "matched": list(decision.matched),
        "priority": decision.priority,
        "category": decision.category,
        "tags": list(decision.tags),
        "classification": classification.kind,
        "also_addressed": other_queues,
        "forwarded_by": forwarder,
        "linked": linked.number if linked is not None else None,
        "refused_tag": refused_number,
        "moved_from": None,
    }


def suppression_reason(inbound: InboundMessage, classification: Classification) -> str | None:
    if inbound.archive:
        return "archive_import"
    if inbound.envelope_from == "":
        return "null_sender"
    if classification.kind != "human":
        return f"classification_{classification.kind}"
    if classification.suppress_autoreply:
        return "sender_asks_no_autoreply"
    return None


def acknowledge(session: Session, runtime: Runtime, inbound: InboundMessage, parsed: ParsedMail,
                ticket: Ticket, decision: Decision, classification: Classification, now: dt.datetime, *,
                forwarded: bool = False) -> None:
    if decision.reply is None:
        return
    reason = suppression_reason(inbound, classification)
    if reason is None:
        reason = refuse_automatic_mail(
            session,
            recipient=ticket.requester,
            ticket_id=ticket.id,
            own_addresses=runtime.config.own_addresses,
            own_domain=runtime.config.daemon.domain,
            loop=runtime.config.loop_protection,
            now=now,
        )
    if reason is not None:
        repo.add_event(session, "ack_suppressed", ticket_id=ticket.id, reason=reason)
        return
    assert ticket.requester is not None
    enqueue(
        session,
        runtime,
        ticket,
        MailRequest(
            template=decision.reply,
            recipient=ticket.requester,
            recipient_name=ticket.requester_name,
            dedupe_key=f"ack:{ticket.id}",
            # A forward's Message-ID is the staff member's mail, which the citizen never saw.
            in_reply_to=None if forwarded else parsed.message_id,
            references=() if forwarded else parsed.references,
        ),
        now,
    )
