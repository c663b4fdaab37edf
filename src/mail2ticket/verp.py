"""VERP return paths: `bounces+<outbound id>-<hmac>@domain`, so a bounce names the mail it belongs to.

The HMAC (keyed with the reply secret) makes the address unguessable: a forged bounce cannot mark
someone else's mail as failed.
"""

from __future__ import annotations

import hashlib
import hmac
import re

_VERP = re.compile(r"^bounces\+(?P<id>[0-9]{1,18})-(?P<mac>[a-z0-9]{10})@(?P<domain>[^@\s]+)$", re.IGNORECASE)


def _mac(outbound_id: int, secret: bytes) -> str:
    digest = hmac.new(secret, f"verp:{outbound_id}".encode(), hashlib.sha256).hexdigest()
    return digest[:10]


def verp_address(outbound_id: int, secret: bytes, domain: str) -> str:
    return f"bounces+{outbound_id}-{_mac(outbound_id, secret)}@{domain}"


def parse_verp(address: str, secret: bytes, domain: str) -> int | None:
    """The outbound id if `address` is a VERP address of ours with a valid HMAC, else None."""
    match = _VERP.match(address.strip().strip("<>"))
    if match is None or match.group("domain").lower() != domain.lower():
        return None
    outbound_id = int(match.group("id"))
    if not hmac.compare_digest(match.group("mac").lower(), _mac(outbound_id, secret)):
        return None
    return outbound_id
