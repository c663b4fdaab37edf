"""Header safety for generated mail (RELIABILITY.md P11, test T31); addresses are in `addresses`, display text
in `safe_text`.

Place in the pipeline: every stage that *reads* addresses from inbound mail (ingress, classify) normalises them
with `addresses`, and every stage that *writes* mail (outbox, status mails, auto-replies) builds its header values
here and its SMTP envelope with `addresses.envelope_address`.  Nothing taken from an inbound message may add a
header to generated mail.

Python 3.11.7 lacks the fixes for two stdlib bugs, so this module does not rely on them:

* CVE-2024-6923: ``policy.default`` decodes RFC 2047 encoded words when a header is *set*, and the folder writes the
  decoded CR/LF back out verbatim (``msg["Subject"] = "=?utf-8?q?x=0D=0ABcc:_evil@x?="`` serialises as a ``Bcc``
  line).  :func:`set_header` checks the value before *and after* the email package has interpreted it, defangs
  literal encoded-word syntax in free text, and checks the folded wire form; :func:`serialize_checked` re-checks the
  whole header block of the finished message.
* CVE-2023-27043: ``parseaddr``/``getaddresses`` can return a different address than the one a human sees, and the
  ``strict=`` parameter only exists from 3.11.10/3.12.6.  We use the RFC 5322 parser behind
  ``email.headerregistry`` (``email._header_value_parser``), accept only mailboxes it reports as valid, and then
  apply our own, stricter addr-spec check (dot-atom local part, LDH host name, IDNA 2008 A-labels via ``idna``).

Generated mail is written either as an ``EmailMessage`` (:func:`set_header`, :func:`set_address`,
:func:`serialize_checked`) or line by line (:func:`header_line`, :func:`address_line`, and
:func:`check_wire_message` from `wire_check`), with the same checks.  The line-by-line path skips the email package
on two fast paths: plain short ASCII values whose wire form is provably the value itself (the checked path's bytes),
and a non-ASCII display name or unstructured text without ``=?``, written as RFC 2047 encoded words that are safe by
construction (`encoded_words`: other bytes than ``policy.SMTP`` folds, the same name, address and text for a
recipient).

Generated mail is serialised with ``policy.SMTP`` (7-bit headers, no SMTPUTF8), so addresses with a non-ASCII local
part can be *matched* (:func:`normalize_address` keeps them) but not *written* (:func:`format_address` and
:func:`envelope_address` raise :class:`UnsafeValue`; the outbox should treat that as a permanent failure).
"""

from __future__ import annotations

import re
from email import policy as _policy
from email.headerregistry import Address, AddressHeader, BaseHeader
from email.message import EmailMessage
from email.policy import EmailPolicy
from email.utils import format_datetime, parsedate_to_datetime
from typing import Any

from mail2ticket import encoded_words
from mail2ticket.addresses import domain_to_ascii, parse_list, split_addr_spec
from mail2ticket.safe_text import _ENCODED_WORD_START, UnsafeValue, clean_text, defang_encoded_words, has_unsafe_char
from mail2ticket.wire_check import FTEXT_RE, check_wire_message

__all__ = [
    "address_line",
    "check_wire_message",
    "format_address",
    "header_line",
    "message_id",
    "serialize_checked",
    "set_address",
    "set_header",
    "strip_control_headers",
]

MAX_HEADER_VALUE_LEN = 16_384  # far above any sane generated header; bounds folding work

_MSGID_UNIQUE_RE = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*")

_SMTP = _policy.SMTP
_DEFAULT = _policy.default


def format_address(display_name: str | None, addr: str) -> str:
    """A safe header value 'Display <addr>' built with email.headerregistry.Address (display name cleaned with
    clean_text, max 78 chars, encoded-word syntax defanged); raises UnsafeValue if addr is not one plain ASCII-local
    addr-spec.  The domain is written in A-label form; the local part's case is kept."""
    parts = split_addr_spec(addr, ascii_local=True) if isinstance(addr, str) else None
    if parts is None:
        raise UnsafeValue("not a plain local@domain address")
    name = defang_encoded_words(clean_text(display_name, max_len=78))
    try:
        formatted = str(Address(display_name=name, username=parts[0], domain=parts[1]))
    except (ValueError, TypeError) as exc:
        raise UnsafeValue("address could not be formatted") from exc
    # Round trip: what a recipient parses must be exactly what we meant.
    parsed = parse_list(formatted)
    if parsed is None or len(parsed.mailboxes) != 1 or len(parsed.all_mailboxes) != 1:
        raise UnsafeValue("formatted address does not parse back to one mailbox")
    mailbox = parsed.mailboxes[0]
    if mailbox.addr_spec != f"{parts[0]}@{parts[1]}" or (mailbox.display_name or "") != name:
        raise UnsafeValue("formatted address does not round-trip")
    return formatted


# --------------------------------------------------------------------------------------------------------------
# Headers of generated mail


def _check_folded(name: str, folded: str) -> None:
    """The wire form of one header: CRLF-terminated ASCII lines, continuation lines start with WSP and are not
    blank, no bare CR or LF, and the first line is ``name:``."""
    if not folded.isascii() or not folded.endswith("\r\n"):
        raise UnsafeValue(f"{name}: folded header is not CRLF-terminated ASCII")
    lines = folded[:-2].split("\r\n")
    if any("\r" in line or "\n" in line or "\x00" in line for line in lines):
        raise UnsafeValue(f"{name}: folded header contains a bare CR/LF/NUL")
    if not lines[0].lower().startswith(name.lower() + ":"):
        raise UnsafeValue(f"{name}: folded header does not start with its name")
    for line in lines[1:]:
        if not line[:1] in (" ", "\t") or not line.strip(" \t"):
            raise UnsafeValue(f"{name}: folded header has an unsafe continuation line")


def set_header(msg: EmailMessage, name: str, value: str) -> None:
    """Set (replace) a header on generated mail after validating name (RFC 5322 ftext) and value (no CR/LF/NUL or
    other line breaks and controls).  Raises UnsafeValue and leaves the message unchanged if the value is unsafe.

    Beyond the input check, the value is checked as the email package interprets it (free text gets literal
    encoded-word syntax defanged, CVE-2024-6923) and as it goes on the wire: folded with ``policy.SMTP`` and parsed
    back, it must mean exactly the same.  Python 3.11.7 also mis-folds some multi-address lists with non-ASCII
    display names (gh-100884 / CVE-2025-1795: the separating comma becomes an encoded word and an address is lost);
    such a list is written as bare addresses instead."""
    policy = msg.policy
    if not isinstance(policy, EmailPolicy):
        _check_name_and_value(name, value)
        raise UnsafeValue("generated mail must use an email.policy.EmailPolicy (e.g. policy.default)")
    header, _ = _checked_header(policy, name, value)
    del msg[name]
    msg[name] = header


def _check_name_and_value(name: str, value: str) -> None:
    if not isinstance(name, str) or not FTEXT_RE.fullmatch(name):
        raise UnsafeValue(f"invalid header name {name!r}")
    if not isinstance(value, str) or has_unsafe_char(value):
        raise UnsafeValue(f"{name}: value contains CR, LF, NUL or another control character")
    if len(value) > MAX_HEADER_VALUE_LEN:
        raise UnsafeValue(f"{name}: value longer than {MAX_HEADER_VALUE_LEN} characters")


def _checked_header(policy: EmailPolicy[Any], name: str, value: str) -> tuple[BaseHeader, str]:
    """The checked path of set_header: the header object and its verified wire form (folded with policy.SMTP)."""
    _check_name_and_value(name, value)
    header = _make_header(policy, name, value)
    if not isinstance(header, AddressHeader) and str(header) != value and _ENCODED_WORD_START in value:
        # The email package decoded literal "=?...?=" text; keep the text literal (and harmless) instead.
        header = _make_header(policy, name, defang_encoded_words(value))
    if has_unsafe_char(str(header)):
        raise UnsafeValue(f"{name}: value decodes to CR, LF, NUL or another control character")
    try:
        folded = _check_wire_form(name, header)
    except UnsafeValue:
        if not isinstance(header, AddressHeader) or len(header.addresses) < 2:
            raise
        if any(group.display_name is not None for group in header.groups):
            raise
        header = _make_header(policy, name, ", ".join(address.addr_spec for address in header.addresses))
        folded = _check_wire_form(name, header)
    return header, folded


# The fast path of header_line/address_line. A value qualifies when its wire form is provably "Name: value" CRLF,
# i.e. exactly what the checked path (set_header + policy.SMTP) writes for it:
# * printable ASCII words separated by single spaces: no control character, no line break, nothing to encode,
#   no leading, trailing or doubled whitespace;
# * no "=?": the email package would read an RFC 2047 encoded word into it (CVE-2024-6923);
# * "Name: value" fits in policy.SMTP's 78 characters, so the folder leaves it on one line, and
# * the header class keeps the value verbatim: unstructured headers (their parse tree is the text itself),
#   Message-ID in our own "<unique@host>" form, and a Date in the form format_datetime writes; address headers
#   only through address_line, which builds "atom phrase <dot-atom@host>" itself.
# Anything else (non-ASCII, long, odd) takes the checked path.
_PLAIN_VALUE_RE = re.compile(r"[\x21-\x7e]+(?: [\x21-\x7e]+)*")
_PLAIN_PHRASE_RE = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?: [A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
_PLAIN_MSGID_RE = re.compile(r"<[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*@[a-z0-9-]+(?:\.[a-z0-9-]+)*>")
_MAX_LINE = 78  # policy.SMTP.max_line_length
_STRUCTURED = frozenset(_DEFAULT.header_factory.registry) - {"subject"}  # type: ignore[attr-defined]


def _plain_fits(name: str, value: str) -> bool:
    return (len(name) + 2 + len(value) <= _MAX_LINE and _ENCODED_WORD_START not in value
            and _PLAIN_VALUE_RE.fullmatch(value) is not None)


def _verbatim(name: str, value: str) -> bool:
    """True if the checked path provably writes exactly ``name: value`` CRLF (see _PLAIN_VALUE_RE)."""
    if not _plain_fits(name, value):
        return False
    lname = name.lower()
    if lname not in _STRUCTURED:
        return True
    if lname == "message-id":
        return _PLAIN_MSGID_RE.fullmatch(value) is not None
    if lname == "date":
        try:
            return format_datetime(parsedate_to_datetime(value)) == value
        except (TypeError, ValueError):
            return False
    return False


def header_line(name: str, value: str) -> str:
    """The wire form of one header of generated mail, ``Name: value`` folded into CRLF-terminated lines, with the
    guarantees of set_header: same checks, and the bytes ``set_header`` + ``serialize_checked`` would write, except
    that non-ASCII unstructured text is written as encoded words of the same meaning (`encoded_words`).
    Raises UnsafeValue like set_header."""
    if not isinstance(name, str) or not FTEXT_RE.fullmatch(name):
        raise UnsafeValue(f"invalid header name {name!r}")
    if isinstance(value, str):
        if _verbatim(name, value):
            return f"{name}: {value}\r\n"
        if not value.isascii() and name.lower() not in _STRUCTURED:
            line = encoded_words.text_line(name, value)
            if line is not None:
                _check_folded(name, line)
                return line
    return _checked_header(_DEFAULT, name, value)[1]


def address_line(name: str, display_name: str | None, addr: str) -> str:
    """The wire form of a one-mailbox header (From, To, Reply-To): what set_address + serialize_checked write,
    except that a non-ASCII display name is written as encoded words of the same meaning (`encoded_words`)."""
    try:
        return _address_line(name, display_name, addr)
    except UnsafeValue:
        if not display_name:
            raise
        return _address_line(name, None, addr)


def _address_line(name: str, display_name: str | None, addr: str) -> str:
    if not isinstance(name, str) or not FTEXT_RE.fullmatch(name):
        raise UnsafeValue(f"invalid header name {name!r}")
    parts = split_addr_spec(addr, ascii_local=True) if isinstance(addr, str) else None
    if parts is not None:
        spec = f"{parts[0]}@{parts[1]}"
        phrase = clean_text(display_name, max_len=78)
        # Fast path: a phrase of atoms needs no quoting, a dot-atom@LDH address none either, so format_address
        # writes "phrase <local@host>" (or the bare address) and the email package keeps it verbatim.
        if not phrase or _PLAIN_PHRASE_RE.fullmatch(phrase):
            value = f"{phrase} <{spec}>" if phrase else spec
            if _plain_fits(name, value):
                return f"{name}: {value}\r\n"
        elif not phrase.isascii():
            # The checked path writes defang_encoded_words(phrase); encoded_words refuses a phrase with "=?".
            line = encoded_words.address_line(name, phrase, spec)
            if line is not None:
                _check_folded(name, line)
                return line
        if phrase and len(spec) <= _MAX_TEMPLATE_ADDR:
            key = (name, display_name, _SHAPE_RE.sub("x", spec))
            template = _TEMPLATES.get(key)
            if template is not None:
                line = _line_from_template(name, phrase, spec, template)
                if line is not None:
                    return line
            line = _checked_header(_DEFAULT, name, format_address(display_name, addr))[1]
            _remember_template(key, line, spec)
            return line
    return _checked_header(_DEFAULT, name, format_address(display_name, addr))[1]


# Templates for "display name <address>" headers whose name needs quoting or folding (a queue's "Stadt, Amt 7" with
# each ticket's reply address; most non-ASCII names take the encoded-word path above). The folder's choices for the
# address part depend only on its length and token structure (dots, "@", atext) as long as "<address>" fits on a
# line of its own, so the checked line of one address, split around "<address>", is the checked line of every
# address of the same shape with that display name; tests compare the bytes with the checked path. Keyed by (header,
# display name, shape: "xxxx.xx@xxxx.xxxxx"). A line built from a template is parsed back and compared like every
# checked line (_check_wire_line), so a wrong template could only cost the checked path, never change a mail's
# meaning; except where both addresses are plain (_PLAIN_SPEC_RE: letters, digits, "+", "_", "-" between the dots
# and the "@"). The parser reads every such character alike (no specials, no "=?" of an encoded word), so it reads
# the new line as it read the checked one, with the new address in the old one's place: the parse-back, a third of
# the cost of a citizen's acknowledgement, proves nothing more there.
_MAX_TEMPLATE_ADDR = _MAX_LINE - 3  # " <" ... ">" on a continuation line
_SHAPE_RE = re.compile(r"[^.@]")
_MAX_TEMPLATES = 256
_PLAIN_SPEC_RE = re.compile(r"[A-Za-z0-9+_-]+(?:\.[A-Za-z0-9+_-]+)*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*")
# (the line before "<address>", the line after it, whether the address it was checked with is plain)
_TEMPLATES: dict[tuple[str, str | None, str], tuple[str, str, bool]] = {}


def _remember_template(key: tuple[str, str | None, str], line: str, spec: str) -> None:
    marker = f"<{spec}>"
    if line.count(marker) != 1:
        return
    if len(_TEMPLATES) >= _MAX_TEMPLATES:
        _TEMPLATES.clear()  # citizens' names come and go; the queues' names come back at once
    before, _, after = line.partition(marker)
    _TEMPLATES[key] = (before, after, _PLAIN_SPEC_RE.fullmatch(spec) is not None)


def _line_from_template(name: str, phrase: str, spec: str, template: tuple[str, str, bool]) -> str | None:
    line = f"{template[0]}<{spec}>{template[1]}"
    if template[2] and _PLAIN_SPEC_RE.fullmatch(spec):
        return line  # read like the checked line (see above); same length, so folded the same
    meaning = [(None, [("".join(defang_encoded_words(phrase).split()), spec)])]
    try:
        _check_wire_line(name, line, meaning)
    except UnsafeValue:
        return None
    return line


def set_address(msg: EmailMessage, name: str, display_name: str | None, addr: str) -> None:
    """Set a one-mailbox header (From, To, Reply-To) on generated mail. A display name that cannot be
    written safely (set_header refuses its folded form) is dropped rather than failing the whole mail:
    the address is what matters, the name is decoration. Raises UnsafeValue only for a bad address."""
    try:
        set_header(msg, name, format_address(display_name, addr))
    except UnsafeValue:
        if not display_name:
            raise
        set_header(msg, name, format_address(None, addr))


def _make_header(policy: EmailPolicy, name: str, value: str) -> BaseHeader:
    try:
        header: BaseHeader = policy.header_factory(name, value)
    except Exception as exc:  # headerregistry raises ValueError, IndexError, ... on hostile input
        raise UnsafeValue(f"{name}: value rejected by the email package") from exc
    return header


def _meaning(header: BaseHeader) -> object:
    """What a recipient sees: the groups and mailboxes of an address header, else the decoded text.  Whitespace in
    text is ignored: Python's parser keeps the folding space between adjacent encoded words in a phrase, which RFC
    2047 readers drop; that is cosmetic, a lost or changed address is not."""

    def squash(text: str | None) -> str | None:
        return None if text is None else "".join(text.split())

    if isinstance(header, AddressHeader):
        return [
            (squash(group.display_name), [(squash(a.display_name), a.addr_spec) for a in group.addresses])
            for group in header.groups
        ]
    return squash(str(header))


def _check_wire_form(name: str, header: BaseHeader) -> str:
    """Fold the header with policy.SMTP, check the lines, parse it back the way a recipient would, and compare;
    returns the folded form."""
    try:
        folded = str(_SMTP.fold(name, header))
    except Exception as exc:  # any folding failure means we cannot vouch for the wire form
        raise UnsafeValue(f"{name}: value cannot be folded safely") from exc
    _check_wire_line(name, folded, _meaning(header))
    return folded


def _check_wire_line(name: str, folded: str, meaning: object) -> None:
    """The folded header is well-formed and a recipient parsing it sees `meaning` (see _meaning)."""
    _check_folded(name, folded)
    raw_value = folded.partition(":")[2].lstrip(" \t").rstrip("\r\n")
    try:
        reparsed = _DEFAULT.header_fetch_parse(name, raw_value)
    except Exception as exc:  # see _make_header
        raise UnsafeValue(f"{name}: folded value does not parse back") from exc
    if not isinstance(reparsed, BaseHeader) or _meaning(reparsed) != meaning:
        raise UnsafeValue(f"{name}: folded value does not mean the same as the value set")


def message_id(domain: str, unique: str) -> str:
    """'<unique@domain>' after validating both parts (unique: dot-separated runs of [A-Za-z0-9_-], at most 128
    characters; domain: a host name, written in A-label form)."""
    if not isinstance(unique, str) or len(unique) > 128 or not _MSGID_UNIQUE_RE.fullmatch(unique):
        raise UnsafeValue("invalid Message-ID unique part")
    ascii_domain = (
        domain_to_ascii(domain) if isinstance(domain, str) and not has_unsafe_char(domain) else None
    )
    if ascii_domain is None:
        raise UnsafeValue("invalid Message-ID domain")
    return f"<{unique}@{ascii_domain}>"


def strip_control_headers(msg: EmailMessage, prefix: str = "X-Mail2Ticket-") -> list[str]:
    """Delete every inbound header whose name starts with prefix (case-insensitive, surrounding whitespace in the
    stored name ignored); return the names removed, one entry per removed occurrence, in message order."""
    if not prefix.strip():
        raise ValueError("prefix must not be empty")
    wanted = prefix.strip().lower()
    removed = [key for key in msg if key.strip().lower().startswith(wanted)]
    for key in dict.fromkeys(key.lower() for key in removed):
        del msg[key]
    return removed


def serialize_checked(msg: EmailMessage) -> bytes:
    """``msg.as_bytes(policy=policy.SMTP)`` plus a final check of the header block: every line is CRLF-terminated,
    there is no bare CR or LF anywhere, every header line is ``ftext-name:`` or a non-blank continuation, and the
    header names on the wire are exactly ``msg.keys()``.  Raises UnsafeValue otherwise."""
    data = msg.as_bytes(policy=_SMTP)
    check_wire_message(data, msg.keys())
    return data
