"""Addresses: strict parsing of what inbound mail claims, and validation of what we write (CVE-2023-27043).

`parseaddr`/`getaddresses` of Python 3.11.7 can return a different address than the one a human sees, so this
uses the RFC 5322 parser behind ``email.headerregistry`` (``email._header_value_parser``), accepts only mailboxes
it reports as valid, and then applies a stricter addr-spec check of its own: dot-atom local part, LDH host name,
IDNA 2008 A-labels via ``idna``. Addresses with a non-ASCII local part can be matched (`normalize_address` keeps
them) but not written (`envelope_address` raises `UnsafeValue`).
"""

from __future__ import annotations

import re
import unicodedata
from email import _header_value_parser as _parser

import idna

from mail2ticket.safe_text import _DROP_CATEGORIES, UnsafeValue, clean_text, has_unsafe_char

MAX_ADDRESS_LEN = 254  # RFC 5321 path limit minus the angle brackets
MAX_LOCAL_LEN = 64
MAX_DOMAIN_LEN = 253
_MAX_PARSE_INPUT = 65_536  # address-list input beyond this is not parsed at all (parser cost)

_ATOM_RE = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-\u0080-\U0010ffff]+")
_ASCII_ATOM_RE = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-]+")
_LDH_LABEL_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


def domain_to_ascii(domain: str) -> str | None:
    """Lower-cased, IDNA 2008 (UTS #46, non-transitional) A-label form of a host name, or None if invalid."""
    if not domain or domain.endswith(".") or len(domain) > 4 * MAX_DOMAIN_LEN:
        return None
    if domain.isascii():
        ascii_domain = domain.lower()
        if "xn--" in ascii_domain:  # an A-label must be valid Punycode of a valid U-label
            try:
                idna.decode(ascii_domain)
            except (idna.IDNAError, UnicodeError, ValueError):
                return None
    else:
        try:
            ascii_domain = idna.encode(domain, uts46=True, transitional=False).decode("ascii")
        except (idna.IDNAError, UnicodeError, ValueError):
            return None
    if len(ascii_domain) > MAX_DOMAIN_LEN:
        return None
    if not all(_LDH_LABEL_RE.fullmatch(label) for label in ascii_domain.split(".")):
        return None
    return ascii_domain


def _local_part_ok(local: str, *, ascii_only: bool) -> bool:
    """Dot-atom local part (quoted local parts are refused), at most 64 characters, printable only."""
    if not local or len(local) > MAX_LOCAL_LEN:
        return False
    atom = _ASCII_ATOM_RE if ascii_only else _ATOM_RE
    if not all(atom.fullmatch(part) for part in local.split(".")):
        return False
    # Non-ASCII is allowed (RFC 6532) but only letters, marks, numbers, punctuation and symbols.
    return all(ch.isascii() or unicodedata.category(ch)[0] in "LMNPS" for ch in local)


def split_addr_spec(addr: str, *, ascii_local: bool) -> tuple[str, str] | None:
    """(local, A-label domain) for a bare ``local@domain`` string, or None if it is not one strict addr-spec."""
    if not addr or len(addr) > 4 * MAX_ADDRESS_LEN or has_unsafe_char(addr) or addr.count("@") != 1:
        return None
    local, domain = addr.split("@")
    if not _local_part_ok(local, ascii_only=ascii_local):
        return None
    ascii_domain = domain_to_ascii(domain)
    if ascii_domain is None or len(local) + 1 + len(ascii_domain) > MAX_ADDRESS_LEN:
        return None
    return local, ascii_domain


def _normalize_mailbox(mailbox: _parser.Mailbox) -> str | None:
    """Lower-cased ``local@a-label-domain`` for one parsed mailbox, or None."""
    try:
        local = mailbox.local_part
        domain = mailbox.domain
    except (AttributeError, IndexError, TypeError):
        return None
    if not isinstance(local, str) or not isinstance(domain, str):
        return None
    parts = split_addr_spec(f"{local}@{domain}", ascii_local=False)
    if parts is None:
        return None
    return unicodedata.normalize("NFC", parts[0].lower()) + "@" + parts[1]


def parse_list(value: str) -> _parser.AddressList | None:
    """Run the RFC 5322 address-list parser; None if it fails or leaves unparsed text."""
    if len(value) > _MAX_PARSE_INPUT:
        return None
    # Unfold (CRLF + WSP); any other line break or NUL makes the whole value untrustworthy.
    value = re.sub(r"\r?\n(?=[ \t])", "", value)
    if has_unsafe_char(value):
        return None
    try:
        address_list, rest = _parser.get_address_list(value)
    except Exception:  # noqa: BLE001 - the stdlib parser raises assorted errors on hostile input; never propagate
        return None
    return address_list if not rest else None


def normalize_address(value: str | None) -> str | None:
    """Parse one mailbox (possibly "Name <a@b>") strictly; return the lower-cased addr-spec 'local@domain' (domain
    lower-cased and IDNA A-label encoded; local part lower-cased and NFC, non-ASCII local parts kept) or None if it
    is not exactly one syntactically valid address (groups, multiple addresses, missing @, CR/LF/NUL, >254 chars,
    quoted local parts, domain literals → None)."""
    if not isinstance(value, str) or not value.strip() or len(value) > 4 * MAX_ADDRESS_LEN:
        return None
    parsed = parse_list(value)
    if parsed is None:
        return None
    try:
        if len(parsed.addresses) != 1 or len(parsed.all_mailboxes) != 1 or len(parsed.mailboxes) != 1:
            return None
        if parsed.addresses[0].token_type != "address" or parsed.addresses[0][0].token_type == "group":
            return None
        defects = [d for d in parsed.all_defects if type(d).__name__ != "NonASCIILocalPartDefect"]
        if defects:
            return None
        return _normalize_mailbox(parsed.mailboxes[0])
    except Exception:  # noqa: BLE001 - parse-tree accessors can raise on odd trees; "not an address"
        return None


def parse_address_list(value: str | None, *, limit: int = 1000) -> list[tuple[str, str]]:
    """(display_name_cleaned, normalized_addr) for each valid mailbox in a To/Cc-like header value (group members
    included, the group itself not); skips invalid ones; never raises; stops after `limit`."""
    if not isinstance(value, str) or limit <= 0:
        return []
    parsed = parse_list(value)
    if parsed is None:
        return []
    return address_pairs(parsed, limit=limit)


def parse_list_takes_as_is(value: str) -> bool:
    """True if `parse_list(value)` hands `value` unchanged to the RFC 5322 parser (nothing to unfold, no unsafe
    character, not too long): then its result is ``get_address_list(value)``'s list when nothing is left over."""
    return len(value) <= _MAX_PARSE_INPUT and not has_unsafe_char(value)


def address_pairs(parsed: _parser.AddressList, *, limit: int = 1000) -> list[tuple[str, str]]:
    """What `parse_address_list` returns for a value that `parse_list` parsed into `parsed`."""
    if limit <= 0:
        return []
    result: list[tuple[str, str]] = []
    try:
        mailboxes = parsed.mailboxes
    except Exception:  # noqa: BLE001 - see _parse_list
        return []
    for mailbox in mailboxes:
        addr = _normalize_mailbox(mailbox)
        if addr is None:
            continue
        try:
            name = mailbox.display_name
        except Exception:  # noqa: BLE001 - a broken display name only loses the name, not the address
            name = None
        result.append((clean_text(name if isinstance(name, str) else None), addr))
        if len(result) >= limit:
            break
    return result


def envelope_address(value: str) -> str:
    """Validate an SMTP envelope address before it reaches smtplib; return it with the domain lower-cased and in
    A-label form (the local part is returned unchanged).

    Raises UnsafeValue on CR, LF, NUL or any control/whitespace character, '<', '>', a quoted or non-ASCII local
    part (we do not speak SMTPUTF8), length > 254, or not exactly one '@'.  The empty string is allowed: it is the
    null reverse-path used for bounces and auto-replies."""
    if not isinstance(value, str):
        raise UnsafeValue("envelope address must be a str")
    if value == "":
        return ""
    if len(value) > MAX_ADDRESS_LEN:
        raise UnsafeValue("envelope address longer than 254 characters")
    if any(ch in "<>" or ch.isspace() or unicodedata.category(ch) in _DROP_CATEGORIES for ch in value):
        raise UnsafeValue("envelope address contains a control, whitespace or angle-bracket character")
    parts = split_addr_spec(value, ascii_local=True)
    if parts is None:
        raise UnsafeValue("envelope address is not a single plain local@domain address")
    return f"{parts[0]}@{parts[1]}"
