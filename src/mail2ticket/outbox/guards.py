"""Loop and amplification guards: may we send an automatic mail to this address now?

Checked inside the processing transaction, against the outbox itself (the rows are the counters), so
limits hold across restarts and across several instances.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
from collections.abc import Iterable

from sqlalchemy.orm import Session

from mail2ticket.config.model import LoopProtectionConfig
from mail2ticket.db import repo


def is_noreply(address: str, patterns: Iterable[str]) -> bool:
    lowered = address.lower()
    return any(fnmatch.fnmatchcase(lowered, p.lower()) for p in patterns)


def refuse_automatic_mail(
    session: Session,
    *,
    recipient: str | None,
    ticket_id: int | None,
    own_addresses: frozenset[str],
    own_domain: str,
    loop: LoopProtectionConfig,
    now: dt.datetime,
) -> str | None:
    """None if an automatic mail may go out, else the reason (a stable snake_case code)."""
    if not recipient:
        return "no_recipient"
    if recipient in own_addresses or recipient.split("+", 1)[0] + "@" + recipient.rsplit("@", 1)[-1] in own_addresses:
        return "own_address"
    if recipient.rsplit("@", 1)[-1] == own_domain and recipient.startswith("bounces"):
        return "own_address"
    if is_noreply(recipient, loop.noreply_patterns):
        return "noreply_address"
    hour = repo.automatic_mails_since(session, recipient=recipient, since=now - dt.timedelta(hours=1))
    if hour >= loop.per_recipient_per_hour:
        return "rate_limit_recipient_hour"
    day = repo.automatic_mails_since(session, recipient=recipient, since=now - dt.timedelta(days=1))
    if day >= loop.per_recipient_per_day:
        return "rate_limit_recipient_day"
    if ticket_id is not None:
        recent = repo.automatic_mails_since(session, ticket_id=ticket_id, since=now - dt.timedelta(minutes=10))
        if recent >= loop.per_ticket_per_10_minutes:
            return "rate_limit_ticket"
    return None
