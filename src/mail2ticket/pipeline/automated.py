"""Automated-mail stage: our own mail coming back, and bounces of our mail.

Runs after parse/classify and before threading and routing (called by the orchestrator):

* `reject_own_mail` raises `Ignore` for mail we generated ourselves (our loop header, or a Message-ID we
  minted) that came back in, e.g. through a forwarding rule: answering it would start a loop.
* `handle_automated` settles bounces. A bounce is matched to the outbound row it reports, first through
  the VERP return path it was sent to (`bounces+<id>-<hmac>@domain`, unforgeable), else through the
  original Message-ID quoted in the DSN. A permanent failure marks the row failed, puts a `mail_bounced`
  event on the ticket and tells the queue's staff (`bounce_notice`, rate-limited like every automatic
  mail); a delay report only adds an event. A bounce never creates, reopens or changes a ticket, and is
  returned as a `Handled` outcome (not raised) so these effects commit together with the intake row.

Auto-replies are not handled here: they pass on to the conversation stage, which threads them to their
ticket as an internal note and never answers them (the classification suppresses every automatic mail).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import structlog
from sqlalchemy.orm import Session

from mail2ticket import verp
from mail2ticket.classify import Classification
from mail2ticket.config.model import Config
from mail2ticket.db import repo
from mail2ticket.db.models import InboundMessage, OutboundMail, OutboundState
from mail2ticket.addresses import normalize_address
from mail2ticket.outbox.compose import LOOP_HEADER
from mail2ticket.outbox.enqueue import MailRequest, enqueue
from mail2ticket.outbox.guards import refuse_automatic_mail
from mail2ticket.outcomes import Ignore
from mail2ticket.parse import ParsedMail
from mail2ticket.runtime import Runtime

log = structlog.get_logger("mail2ticket.automated")

BOUNCE_NOTICE = "bounce_notice"


@dataclass(frozen=True, slots=True)
class Handled:
    """This mail is settled without a ticket; its effects are already in the session."""

    reason: str
    ticket_id: int | None = None


def reject_own_mail(parsed: ParsedMail, config: Config) -> None:
    """Ignore mail we generated ourselves (loop header or our Message-ID) that came back in."""
    domain = config.daemon.domain
    if any(v.strip().lower() == domain for v in parsed.header(LOOP_HEADER)):
        raise Ignore("own mail came back (loop header)")
    mid = parsed.message_id or ""
    if mid.startswith("<m2t.") and mid.lower().endswith("@" + domain + ">"):
        raise Ignore("own mail came back (our Message-ID)")


def handle_automated(session: Session, runtime: Runtime, inbound: InboundMessage, parsed: ParsedMail,
                     classification: Classification, now: dt.datetime) -> Handled | None:
    """Settle a bounce (always, matched or not); None for every other kind of mail."""
    if classification.kind != "bounce":
        return None
    outbound, matched_by = match_bounce(session, runtime, inbound, classification)
    failed = ", ".join(classification.failed_recipients[:5]) or "no recipient named"
    if outbound is None:
        return Handled(f"bounce not matching any mail of ours ({failed})")
    log.info("bounce_matched", inbound_id=inbound.id, outbound_id=outbound.id, matched_by=matched_by,
             permanent=classification.permanent_failure)
    if classification.permanent_failure is False:
        repo.add_event(session, "mail_delayed", ticket_id=outbound.ticket_id, inbound_id=inbound.id,
                       recipient=outbound.recipient, outbound_id=outbound.id, matched_by=matched_by)
        return Handled(f"delay report for outbound mail {outbound.id} ({matched_by})", outbound.ticket_id)
    first_bounce = outbound.state != OutboundState.FAILED or not (outbound.last_error or "").startswith("bounced")
    outbound.state = OutboundState.FAILED
    outbound.claimed_by = None
    outbound.claim_expires_at = None
    outbound.last_error = f"bounced: {failed}"[:1000]
    repo.add_event(session, "mail_bounced", ticket_id=outbound.ticket_id, inbound_id=inbound.id,
                   recipient=outbound.recipient, outbound_id=outbound.id, template=outbound.template,
                   matched_by=matched_by, failed_recipients=list(classification.failed_recipients[:20]),
                   permanent=classification.permanent_failure)
    if first_bounce:
        notify_staff(session, runtime, outbound, now)
    return Handled(f"bounce of outbound mail {outbound.id} ({matched_by}): {failed}", outbound.ticket_id)


def match_bounce(session: Session, runtime: Runtime, inbound: InboundMessage,
                 classification: Classification) -> tuple[OutboundMail | None, str]:
    """The outbound row a bounce reports and how it was found ("verp" or "message_id")."""
    domain = runtime.config.daemon.domain
    candidates = [*(inbound.envelope_to or ()), *([classification.verp_recipient] if classification.verp_recipient else [])]
    for address in candidates:
        outbound_id = verp.parse_verp(address, runtime.secret, domain)
        if outbound_id is not None and (row := repo.get_outbound(session, outbound_id)) is not None:
            return row, "verp"
    if classification.original_message_id:
        row = repo.outbound_by_message_id(session, classification.original_message_id)
        if row is not None:
            return row, "message_id"
    return None, "unmatched"


def staff_addresses(runtime: Runtime, queue_name: str) -> list[str]:
    """The queue's staff entries that are mailboxes (domain entries like "@stadt.example" cannot be written to)."""
    queue = runtime.config.queue_by_name(queue_name)
    found: list[str] = []
    for entry in queue.staff:
        address = normalize_address(entry) if not entry.startswith("@") else None
        if address and address not in found:
            found.append(address)
    return found


def notify_staff(session: Session, runtime: Runtime, outbound: OutboundMail, now: dt.datetime) -> None:
    """Tell the ticket's queue staff that a mail bounced; never for a bounced notice (that would loop)."""
    if outbound.ticket_id is None or outbound.template == BOUNCE_NOTICE:
        return
    ticket = repo.ticket_by_id(session, outbound.ticket_id)
    if ticket is None:
        return
    config = runtime.config
    for address in staff_addresses(runtime, ticket.queue):
        refused = refuse_automatic_mail(session, recipient=address, ticket_id=None, own_addresses=config.own_addresses,
                                        own_domain=config.daemon.domain, loop=config.loop_protection, now=now)
        if refused is not None:
            repo.add_event(session, "bounce_notice_suppressed", ticket_id=ticket.id, recipient=address,
                           reason=refused)
            continue
        enqueue(session, runtime, ticket, MailRequest(
            template=BOUNCE_NOTICE,
            recipient=address,
            recipient_name=None,
            dedupe_key=f"{BOUNCE_NOTICE}:{outbound.id}:{address}"[:200],
            automatic=True,
            auto_submitted="auto-generated",
            extra={"failed_recipient": outbound.recipient, "failed_template": outbound.template},
        ), now)
