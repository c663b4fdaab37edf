"""Automated-mail stage: our own mail coming back, bounces of our mail, and other machine mail.

Runs before threading and routing. Raises `Ignore` for mail that must not become a ticket (loops,
bounces); returns normally for mail the conversation stage should handle (auto-replies become notes).
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy.orm import Session

from mail2ticket.classify import Classification
from mail2ticket.config.model import Config
from mail2ticket.db import repo
from mail2ticket.db.models import InboundMessage, OutboundState
from mail2ticket.outbox.compose import LOOP_HEADER
from mail2ticket.outcomes import Ignore
from mail2ticket.parse import ParsedMail
from mail2ticket.runtime import Runtime


def reject_own_mail(parsed: ParsedMail, config: Config) -> None:
    """Ignore mail we generated ourselves (loop header or our Message-ID) that came back in."""
    domain = config.daemon.domain
    if any(v.strip().lower() == domain for v in parsed.header(LOOP_HEADER)):
        raise Ignore("own mail came back (loop header)")
    mid = parsed.message_id or ""
    if mid.startswith("<m2t.") and mid.lower().endswith("@" + domain + ">"):
        raise Ignore("own mail came back (our Message-ID)")


def handle_automated(session: Session, runtime: Runtime, inbound: InboundMessage, parsed: ParsedMail,
                     classification: Classification, now: dt.datetime) -> None:
    if classification.kind != "bounce":
        return
    original = classification.original_message_id
    outbound = repo.outbound_by_message_id(session, original) if original else None
    if outbound is not None:
        outbound.state = OutboundState.FAILED
        outbound.last_error = "bounced: " + ", ".join(classification.failed_recipients[:5])
        repo.add_event(session, "mail_bounced", ticket_id=outbound.ticket_id, inbound_id=inbound.id,
                       recipient=outbound.recipient, permanent=classification.permanent_failure)
    raise Ignore("bounce: " + ", ".join(classification.failed_recipients[:5] or ("no recipient found",)))
