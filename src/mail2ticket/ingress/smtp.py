"""SMTP/LMTP ingress (aiosmtpd): the relay hands us mail, we answer 250 only after the intake commit.

| stage | check                                   | reply on failure                          |
|-------|-----------------------------------------|-------------------------------------------|
| MAIL  | declared SIZE over the limit            | 552 5.3.4                                 |
| MAIL  | shutting down                           | 421 4.3.2 (relay retries later)           |
| RCPT  | address is no queue (or plus-tag of one)| 550 5.1.1                                 |
| DATA  | more bytes than the limit               | 552 (aiosmtpd)                            |
| DATA  | intake commit failed (DB locked/down)   | 451 4.3.0, never 5xx                      |
| any   | unexpected exception                    | 451 4.3.0 without internals (logged only) |

Blocking work (the database) never runs on the event loop: the message goes to the intake committer
(`group_commit`), which stores the messages of all sessions in shared transactions, one fsync per batch, and
DATA is answered once the transaction holding this message has committed. In LMTP mode the reply to DATA has
one line per accepted recipient, as RFC 2033 requires.

Memory: DATA is collected into parts of about 1 MiB (`PartsEnvelope.parts`) instead of aiosmtpd's list of
one object per line joined into a second full copy at the end; intake hashes and stores the parts without
joining them. The framing rules (CRLF-only line ends, the lone-dot terminator, dot-unstuffing, the line and
size limits) are aiosmtpd 1.4.6's, copied from its `smtp_DATA`, which includes the SMTP smuggling fix.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import aiosmtpd
import structlog
from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import MISSING, SMTP
from aiosmtpd.smtp import Envelope as SmtpEnvelope
from aiosmtpd.smtp import Session as SmtpSession
from email._header_value_parser import get_addr_spec, get_angle_addr
from email.errors import HeaderParseError

from mail2ticket.config.model import Config, SmtpInConfig
from mail2ticket.failpoints import failpoint
from mail2ticket.ingress.smtp_data import BLOCK_BYTES, read_data
from mail2ticket.intake import Envelope, Stored

log = structlog.get_logger("mail2ticket.smtp")


class Intake(Protocol):
    """Where DATA goes: returns once the message is committed durably (raises when it is not)."""

    async def store(self, parts: Sequence[bytes], envelope: Envelope) -> Stored: ...


OK = "250 2.0.0 OK: queued as {id}"
TEMPFAIL = "451 4.3.0 Temporary failure, please try again later"
SHUTTING_DOWN = "421 4.3.2 Service shutting down, try again later"
UNKNOWN_RECIPIENT = "550 5.1.1 No such mailbox here"
TOO_BIG = "552 5.3.4 Message size exceeds fixed limit"
# 1.4.5 fixed SMTP smuggling (CVE-2024-27305), 1.4.6 STARTTLS command injection (CVE-2024-34083).
MIN_AIOSMTPD = (1, 4, 6)


def check_aiosmtpd_version(version: str = aiosmtpd.__version__) -> None:
    """Refuse to listen with an aiosmtpd that has known framing or injection flaws."""
    parts = tuple(int(p) for p in re.findall(r"\d+", version)[:3])
    if parts < MIN_AIOSMTPD:
        raise RuntimeError(f"aiosmtpd {version} accepts smuggled SMTP data; install aiosmtpd >= 1.4.6")


def recipient_accepted(address: str, own_addresses: frozenset[str], domain: str) -> bool:
    """A queue address, a plus-tagged form of one (reply tokens), or our VERP bounce address."""
    lowered = address.lower()
    if lowered in own_addresses:
        return True
    local, _, dom = lowered.rpartition("@")
    if "+" in local and f"{local.split('+', 1)[0]}@{dom}" in own_addresses:
        return True
    return dom == domain and local.startswith("bounces+")


class IntakeHandler:
    """aiosmtpd handler: one hook per SMTP verb, each returning the reply string."""

    def __init__(self, config: Callable[[], Config], intake: Intake, protocol: str) -> None:
        self._config = config
        self._intake = intake
        self._protocol = protocol
        self.accepting = True
        self.in_flight = 0

    async def handle_MAIL(self, server: SMTP, session: SmtpSession, envelope: SmtpEnvelope, address: str,
                          mail_options: list[str]) -> str:
        if not self.accepting:
            return SHUTTING_DOWN
        for option in mail_options:
            key, _, value = option.partition("=")
            if key.upper() == "SIZE" and value.isdigit() and int(value) > self._config().smtp_in.max_message_size:
                return TOO_BIG
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    async def handle_RCPT(self, server: SMTP, session: SmtpSession, envelope: SmtpEnvelope, address: str,
                          rcpt_options: list[str]) -> str:
        config = self._config()
        if not recipient_accepted(address, config.own_addresses, config.daemon.domain):
            log.info("smtp_recipient_rejected", recipient=address[:200], peer=str(session.peer))
            return UNKNOWN_RECIPIENT
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: SmtpSession, envelope: SmtpEnvelope) -> str:
        if isinstance(envelope, PartsEnvelope) and envelope.parts is not None:
            parts: Sequence[bytes] = envelope.parts
        elif isinstance(envelope.original_content, bytes):
            parts = (envelope.original_content,)
        else:
            return TEMPFAIL
        size = sum(len(p) for p in parts)
        intake = Envelope(
            source=self._protocol,
            mail_from=envelope.mail_from or "",
            rcpt_to=tuple(envelope.rcpt_tos),
            peer=str(session.peer[0]) if isinstance(session.peer, tuple) else None,
        )
        self.in_flight += 1
        try:
            stored = await self._intake.store(parts, intake)
        except Exception:
            log.exception("smtp_intake_failed", size=size)
            return self._reply(TEMPFAIL, envelope)
        finally:
            self.in_flight -= 1
        failpoint("smtp.after_commit_before_reply")
        log.info("smtp_received", inbound_id=stored.inbound_id, duplicate=stored.duplicate, size=size,
                 recipients=len(envelope.rcpt_tos))
        return self._reply(OK.format(id=stored.inbound_id), envelope)

    def _reply(self, line: str, envelope: SmtpEnvelope) -> str:
        if self._protocol == "lmtp":
            return "\r\n".join([line] * max(1, len(envelope.rcpt_tos)))
        return line

    async def handle_exception(self, error: Exception) -> str:
        log.error("smtp_session_error", error_type=type(error).__name__)
        return TEMPFAIL


class PartsEnvelope(SmtpEnvelope):
    """aiosmtpd's envelope plus the message as the parts DATA collected (None until DATA is complete)."""

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[bytes] | None = None


class _ShutdownAwareSMTP(SMTP):
    handler_ref: IntakeHandler

    def _create_envelope(self) -> PartsEnvelope:
        return PartsEnvelope()

    async def smtp_DATA(self, arg: str) -> None:
        """aiosmtpd 1.4.6's DATA, read in blocks into ~1 MiB parts (`smtp_data`) instead of line by line."""
        if await self.check_helo_needed():
            return
        if await self.check_auth_needed("DATA"):
            return
        envelope = self.envelope
        assert isinstance(envelope, PartsEnvelope)
        if not envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        reader = self._reader
        line_limit = reader._limit  # type: ignore[attr-defined]
        reader._limit = max(line_limit, BLOCK_BYTES)  # type: ignore[attr-defined]  # fewer transport pauses
        try:
            result = await read_data(reader, line_length_limit=self.line_length_limit, size_limit=self.data_size_limit)
        except asyncio.CancelledError:
            self._writer.close()
            raise
        finally:
            reader._limit = line_limit  # type: ignore[attr-defined]
        if result.error is not None:
            await self.push(result.error)
            self._set_post_data_state()  # type: ignore[no-untyped-call]
            return
        envelope.parts = result.parts
        if len(envelope.parts) == 1:  # aiosmtpd's fields, for small messages (no copy: the same object)
            envelope.content = envelope.original_content = envelope.parts[0]
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()  # type: ignore[no-untyped-call]
        await self.push("250 OK" if status is MISSING else status)

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """aiosmtpd 1.4.6's, without the class it defines on every call, and remembered for repeated paths."""
        address, rest = _parse_path(arg)
        if address and self.local_part_limit and len(address.rpartition("@")[0]) > self.local_part_limit:
            return None, None
        return address, rest

    def connection_made(self, transport: Any) -> None:
        if not self.handler_ref.accepting:
            # Greet with 421 and close: the relay keeps the mail and tries again later.
            with contextlib.suppress(Exception):
                transport.write(SHUTTING_DOWN.encode() + b"\r\n")
            transport.close()
            return
        super().connection_made(transport)


@functools.lru_cache(maxsize=1024)
def _parse_path(arg: str) -> tuple[str | None, str | None]:
    """The address of a MAIL FROM or RCPT TO path and the rest of the line; (None, None) if it is no address."""
    if not arg:
        return "", ""
    try:
        address, rest = get_angle_addr(arg) if arg.lstrip().startswith("<") else get_addr_spec(arg)
    except HeaderParseError:
        return None, None
    return str(address.addr_spec), rest


class _ShutdownAwareLMTP(LMTP, _ShutdownAwareSMTP):
    pass


def make_protocol_factory(handler: IntakeHandler, cfg: SmtpInConfig) -> Callable[[], SMTP]:
    cls = _ShutdownAwareLMTP if cfg.protocol == "lmtp" else _ShutdownAwareSMTP

    def factory() -> SMTP:
        proto = cls(
            handler,
            data_size_limit=cfg.max_message_size,
            enable_SMTPUTF8=True,
            decode_data=False,
            hostname=cfg.hostname,
            ident="mail2ticket",
            timeout=cfg.timeout,
        )
        proto.handler_ref = handler
        return proto

    return factory


async def start_server(handler: IntakeHandler, cfg: SmtpInConfig) -> asyncio.Server:
    check_aiosmtpd_version()
    loop = asyncio.get_running_loop()
    return await loop.create_server(make_protocol_factory(handler, cfg), host=cfg.host, port=cfg.port,
                                    reuse_address=True)
