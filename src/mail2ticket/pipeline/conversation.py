"""Conversation stage: attach a mail to its ticket, or open a new ticket and acknowledge it.

Called by the orchestrator for every mail that survived parsing, loop checks and classification, inside
the orchestrator's transaction. Returns the ticket and what happened; raises `Ignore`/`Quarantine` for
rule actions.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy.orm import Session

from mail2ticket.classify import Classification
from mail2ticket.db import repo
from mail2ticket.db.models import InboundMessage, Ticket
from mail2ticket.outbox.enqueue import MailRequest, enqueue
from mail2ticket.outbox.guards import refuse_automatic_mail
from mail2ticket.outcomes import Ignore, Quarantine
from mail2ticket.parse import ParsedMail
from mail2ticket.pipeline import store
from mail2ticket.rules import Decision, MailFacts
from mail2ticket.runtime import Runtime
from mail2ticket.thread import find_thread


def handle(session: Session, runtime: Runtime, inbound: InboundMessage, parsed: ParsedMail,
           classification: Classification, now: dt.datetime) -> tuple[Ticket, str]:
    """The ticket this mail now belongs to, and "followup" or "created"."""
    thread = find_thread(session, parsed, runtime.tag_pattern)
    if thread.ticket is not None:
        ticket = thread.ticket
        kind = "auto-reply" if classification.kind == "auto-reply" else "mail"
        store.add_inbound_article(session, ticket, parsed, inbound, kind=kind, internal=kind != "mail", now=now)
        if parsed.from_addr and kind == "mail" and parsed.from_addr not in runtime.config.own_addresses:
            repo.add_participant(session, ticket.id, parsed.from_addr, parsed.from_name, "cc")
        repo.add_event(session, "article_added", ticket_id=ticket.id, inbound_id=inbound.id,
                       actor=parsed.from_addr, method=thread.method, classification=classification.kind)
        return ticket, "followup"

    arrival = arrival_queues(runtime, inbound, parsed)
    decision = runtime.router.route(MailFacts(parsed, classification.kind, arrival))
    if decision.action == "ignore":
        raise Ignore(f"rule {decision.rule!r}: {decision.reason or 'ignore'}")
    if decision.action == "quarantine":
        raise Quarantine(f"rule {decision.rule!r}: {decision.reason or 'quarantine'}")
    if classification.kind == "list" and decision.rule is None:
        raise Ignore("list or bulk mail and no rule asks for a ticket")

    ticket = new_ticket(session, runtime, inbound, parsed, decision, classification, arrival, now)
    if thread.refused_number:
        repo.add_event(session, "subject_tag_refused", ticket_id=ticket.id, inbound_id=inbound.id,
                       actor=parsed.from_addr, referenced=thread.refused_number)
    return ticket, "created"


def arrival_queues(runtime: Runtime, inbound: InboundMessage, parsed: ParsedMail) -> tuple[str, ...]:
    """Queues addressed by this mail: envelope recipients first, then To/Cc, then the mailbox's queue."""
    config = runtime.config
    by_address: dict[str, str] = {}
    for q in config.queue:
        for addr in (q.address, *q.aliases):
            by_address[addr] = q.name
    found: list[str] = []
    for addr in [*inbound.envelope_to, *parsed.to, *parsed.cc]:
        lowered = addr.lower()
        local, _, domain = lowered.partition("@")
        base = local.split("+", 1)[0] + "@" + domain
        for candidate in (lowered, base):
            if candidate in by_address and by_address[candidate] not in found:
                found.append(by_address[candidate])
    if inbound.mailbox:
        box = next((m for m in config.mailbox if m.name == inbound.mailbox), None)
        if box is not None and box.queue and box.queue not in found:
            found.append(box.queue)
    return tuple(found)


def new_ticket(session: Session, runtime: Runtime, inbound: InboundMessage, parsed: ParsedMail,
               decision: Decision, classification: Classification, arrival: tuple[str, ...],
               now: dt.datetime) -> Ticket:
    config = runtime.config
    own = config.own_addresses
    requester = parsed.reply_to if decision.requester == "reply-to" and parsed.reply_to else parsed.from_addr
    requester_name = parsed.from_name if requester == parsed.from_addr else None
    queue = config.queue_by_name(decision.queue)
    created = parsed.date if inbound.archive and parsed.date else now
    ticket = store.create_ticket(
        session,
        number_format=config.daemon.ticket_number_format,
        parsed=parsed,
        decision=decision,
        requester=requester,
        requester_name=requester_name,
        language=queue.language or config.daemon.language,
        now=created,
    )
    kind = "auto-reply" if classification.kind == "auto-reply" else "mail"
    store.add_inbound_article(session, ticket, parsed, inbound, kind=kind, now=created)
    if requester and requester not in own:
        repo.add_participant(session, ticket.id, requester, requester_name, "requester")
    if queue.cc_participants:
        for cc in parsed.cc:
            if cc not in own and cc != requester:
                repo.add_participant(session, ticket.id, cc, None, "cc")
    repo.add_event(session, "ticket_created", ticket_id=ticket.id, inbound_id=inbound.id, actor=requester,
                   queue=ticket.queue, classification=classification.kind)
    if decision.rule:
        repo.add_event(session, "rule_matched", ticket_id=ticket.id, rule=decision.rule,
                       matched=list(decision.matched))
    other_queues = [q for q in arrival if q != ticket.queue]
    if other_queues:
        repo.add_event(session, "also_addressed", ticket_id=ticket.id, queues=other_queues)
    acknowledge(session, runtime, inbound, parsed, ticket, decision, classification, now)
    return ticket


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
                ticket: Ticket, decision: Decision, classification: Classification, now: dt.datetime) -> None:
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
            in_reply_to=parsed.message_id,
            references=parsed.references,
        ),
        now,
    )
