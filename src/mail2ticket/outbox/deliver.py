"""Outbox delivery: hand one pre-rendered mail to the smarthost or write it into a folder (dev mode).

Errors are sorted at this edge: `TransientDeliveryError` is retried with backoff, `PermanentDeliveryError`
fails the row at once. The envelope is validated before smtplib sees it.
"""

from __future__ import annotations

import os
import re
import smtplib
import socket
import ssl
from pathlib import Path
from typing import Protocol

from mail2ticket.config.model import SmtpOutConfig
from mail2ticket.headers import UnsafeValue, envelope_address


class TransientDeliveryError(Exception):
    """Worth retrying later: connection problems, 4xx replies, timeouts."""


class PermanentDeliveryError(Exception):
    """Retrying will not help: 5xx replies, invalid addresses."""


class Deliverer(Protocol):
    def deliver(self, envelope_from: str, recipient: str, raw: bytes, message_id: str) -> None: ...


def _checked_envelope(envelope_from: str, recipient: str) -> tuple[str, str]:
    try:
        sender = envelope_address(envelope_from)
        rcpt = envelope_address(recipient)
    except UnsafeValue as exc:
        raise PermanentDeliveryError(f"unsafe envelope address: {exc}") from exc
    if not rcpt:
        raise PermanentDeliveryError("empty recipient")
    return sender, rcpt


class FolderDeliverer:
    """Writes each mail as an .eml file; the name derives from the Message-ID, so a retry overwrites, never doubles."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def deliver(self, envelope_from: str, recipient: str, raw: bytes, message_id: str) -> None:
        _checked_envelope(envelope_from, recipient)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            stem = re.sub(r"[^A-Za-z0-9._-]", "_", message_id.strip("<>"))[:150]
            target = self.folder / f"{stem}.eml"
            tmp = self.folder / f".{stem}.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
            try:
                os.write(fd, raw)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, target)
        except OSError as exc:
            raise TransientDeliveryError(f"cannot write to {self.folder}: {exc.strerror}") from exc


class SmtpDeliverer:
    def __init__(self, config: SmtpOutConfig, password: str | None, local_hostname: str = "localhost") -> None:
        self.config = config
        self.password = password
        self.local_hostname = local_hostname

    def deliver(self, envelope_from: str, recipient: str, raw: bytes, message_id: str) -> None:
        sender, rcpt = _checked_envelope(envelope_from, recipient)
        cfg = self.config
        try:
            client: smtplib.SMTP
            if cfg.security == "tls":
                client = smtplib.SMTP_SSL(cfg.host, cfg.port, timeout=cfg.timeout, local_hostname=self.local_hostname,
                                          context=ssl.create_default_context())
            else:
                client = smtplib.SMTP(cfg.host, cfg.port, timeout=cfg.timeout, local_hostname=self.local_hostname)
            with client:
                client.ehlo()
                if cfg.security == "starttls":
                    client.starttls(context=ssl.create_default_context())
                    client.ehlo()
                if cfg.username:
                    client.login(cfg.username, self.password or "")
                refused = client.sendmail(sender, [rcpt], raw)
                if refused:
                    code, text = next(iter(refused.values()))
                    raise _error(code, text)
        except smtplib.SMTPRecipientsRefused as exc:
            code, text = next(iter(exc.recipients.values()))
            raise _error(code, text) from exc
        except smtplib.SMTPResponseException as exc:
            raise _error(exc.smtp_code, exc.smtp_error) from exc
        except (smtplib.SMTPException, OSError, socket.timeout) as exc:
            raise TransientDeliveryError(f"{type(exc).__name__}: {exc}") from exc


def _error(code: int, text: bytes | str) -> Exception:
    message = text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)
    message = f"{code} {' '.join(message.split())[:300]}"
    return PermanentDeliveryError(message) if 500 <= code < 600 else TransientDeliveryError(message)
