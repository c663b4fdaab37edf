"""Trust checks: is this mail from staff, and did it really come from them?

Used by the staff stage (commands by mail, replies to citizens) and by requester detection (forwards).
A From header proves nothing, so privileges need one of:

* arrival through a channel the admin marked internal (`[conversation] internal_channels`), or
* an `Authentication-Results` header (RFC 8601) written by our own relay, i.e. carrying a configured
  trusted authserv-id, that says `dmarc=pass`, or `dkim=pass` / `spf=pass` aligned with the From domain.

Only the relay's header counts: relays prepend, so we read the leading block of trace headers and take
the *first* Authentication-Results with a trusted id. A header the sender wrote into the message sits
below the relay's and is never looked at, even when it names our authserv-id (RELIABILITY T38 d).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mail2ticket.config.model import Config, QueueConfig
from mail2ticket.db.models import InboundMessage
from mail2ticket.parse import ParsedMail

# Headers a relay prepends above the sender's own header block.
_TRACE = frozenset({
    "received", "authentication-results", "arc-seal", "arc-message-signature", "arc-authentication-results",
    "return-path", "delivered-to", "x-original-to", "received-spf", "x-spam-status", "x-spam-score",
    "x-spam-flag", "x-spam-level", "x-virus-scanned", "x-envelope-from", "x-envelope-to",
})
_COMMENT = re.compile(r"\([^()]*\)")
_RESULT = re.compile(r"^\s*(?P<method>[a-z0-9_-]+)(?:/\d+)?\s*=\s*(?P<result>[a-z]+)", re.IGNORECASE)
_PROP = re.compile(r"(?P<key>[a-z]+\.[a-z0-9_-]+)\s*=\s*(?P<value>\"[^\"]*\"|[^\s;]+)", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Trust:
    trusted: bool
    reason: str  # stable snake_case code for the audit trail


def is_staff(queue: QueueConfig, address: str | None) -> bool:
    """The address is listed in the queue's staff, directly or through an "@domain" entry."""
    if not address:
        return False
    lowered = address.lower()
    domain = lowered.rpartition("@")[2]
    for entry in queue.staff:
        entry = entry.strip().lower()
        if entry.startswith("@"):
            if domain == entry[1:]:
                return True
        elif entry == lowered:
            return True
    return False


def is_staff_anywhere(config: Config, address: str | None) -> bool:
    return any(is_staff(q, address) for q in config.queue)


def channel_of(inbound: InboundMessage) -> tuple[str, ...]:
    """The channel names this mail arrived through, most specific first."""
    if inbound.source == "imap" and inbound.mailbox:
        return (f"imap:{inbound.mailbox}", "imap")
    return (inbound.source,)


def relay_results(parsed: ParsedMail, trusted_ids: tuple[str, ...]) -> str | None:
    """The topmost Authentication-Results in the relay's trace block with a trusted authserv-id, or None."""
    if not trusted_ids:
        return None
    wanted = {t.lower() for t in trusted_ids}
    for name, value in parsed.header_fields():
        key = name.strip().lower()
        if key not in _TRACE:
            return None  # the sender's own headers start here; nothing below is the relay's
        if key != "authentication-results":
            continue
        text = _COMMENT.sub(" ", " ".join(str(value).split()))
        authserv = text.split(";", 1)[0].strip().split(" ", 1)[0].lower()
        if authserv in wanted:
            return text
    return None


def _aligned(domain: str | None, from_domain: str) -> bool:
    if not domain:
        return False
    domain = domain.strip().strip('"').lower().rpartition("@")[2]
    return domain == from_domain or from_domain.endswith("." + domain) or domain.endswith("." + from_domain)


def evaluate_results(results: str, from_addr: str) -> Trust:
    """Read the resinfo of one Authentication-Results value for the From address."""
    from_domain = from_addr.rpartition("@")[2].lower()
    passed: list[str] = []
    for resinfo in results.split(";")[1:]:
        match = _RESULT.match(resinfo)
        if match is None:
            continue
        method, result = match.group("method").lower(), match.group("result").lower()
        props = {m.group("key").lower(): m.group("value") for m in _PROP.finditer(resinfo[match.end():])}
        if result != "pass":
            if method == "dmarc":
                return Trust(False, f"dmarc_{result}")
            continue
        if method == "dmarc":
            header_from = props.get("header.from")
            if header_from is None or _aligned(header_from, from_domain):
                passed.append("dmarc")
        elif method == "dkim" and _aligned(props.get("header.d") or props.get("header.i"), from_domain):
            passed.append("dkim")
        elif method == "spf" and _aligned(props.get("smtp.mailfrom") or props.get("smtp.helo"), from_domain):
            passed.append("spf")
    if "dmarc" in passed:
        return Trust(True, "dmarc_pass")
    if passed:
        return Trust(True, f"{passed[0]}_aligned_pass")
    return Trust(False, "no_aligned_pass")


def authenticate(config: Config, inbound: InboundMessage, parsed: ParsedMail, queue: str | None) -> Trust:
    """Did this mail pass authentication for its From address? (Never raises.)"""
    internal = set(config.conversation.internal_channels)
    if internal.intersection(channel_of(inbound)):
        return Trust(True, "internal_channel")
    if not parsed.from_addr:
        return Trust(False, "no_from_address")
    trusted_ids = config.conversation.authserv_ids(queue)
    if not trusted_ids:
        return Trust(False, "no_trusted_authserv_id_configured")
    results = relay_results(parsed, trusted_ids)
    if results is None:
        return Trust(False, "no_authentication_results_from_trusted_relay")
    return evaluate_results(results, parsed.from_addr)
