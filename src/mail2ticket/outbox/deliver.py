"""Outbox delivery: hand one pre-rendered mail to the smarthost or write it into a folder (dev mode).

Errors are sorted at this edge: `TransientDeliveryError` is retried with backoff, `PermanentDeliveryError`
fails the row at once. The envelope is validated before smtplib sees it.

`SmtpDeliverer` keeps its smarthost connection between mails, the way Postfix's SMTP client caches
connections: the worker's batch of claimed rows (and the next batch, if it comes soon) goes over one session,
one SMTP transaction (MAIL, RCPT, DATA) per row, so each row still gets its own result. Before a kept
connection is used again, it is checked without a round trip, the way urllib3 checks a pooled connection: a
socket that is readable between transactions holds the smarthost's close or an unasked reply (421), so it is
replaced. A NOOP would cost a round trip per mail for the same answer. Either way nothing of the mail is sent on
a connection known to be gone, and one that dies later fails before DATA's end at the latest: a reconnect or a
retry, never a duplicate. A kept connection is closed after `IDLE_CLOSE_SECONDS` without use (a background
thread says QUIT), and is replaced after `MAX_MAILS_PER_CONNECTION` mails or `MAX_CONNECTION_SECONDS`.
A refused recipient fails its row only; the session goes on with the next one.
"""

from __future__ import annotations

import os
import re
import select
import smtplib
import socket
import ssl
import threading
import time
from pathlib import Path
from typing import Protocol

from mail2ticket.config.model import SmtpOutConfig
from mail2ticket.addresses import envelope_address
from mail2ticket.safe_text import UnsafeValue


class TransientDeliveryError(Exception):
    """Worth retrying later: connection problems, 4xx replies, timeouts."""


class PermanentDeliveryError(Exception):
    """Retrying will not help: 5xx replies, invalid addresses."""


class Deliverer(Protocol):
    def deliver(self, envelope_from: str, recipient: str, raw: bytes, message_id: str) -> None: ...


class RecordingDeliverer:
    """Wraps the real deliverer so the outbox step learns which mails it just handled (for the metrics)."""

    def __init__(self, inner: Deliverer) -> None:
        self.inner = inner
        self.handled: list[str] = []

    def deliver(self, envelope_from: str, recipient: str, raw: bytes, message_id: str) -> None:
        self.handled.append(message_id)
        self.inner.deliver(envelope_from, recipient, raw, message_id)

    def close(self) -> None:
        """QUIT a kept smarthost connection (folder delivery has none)."""
        close = getattr(self.inner, "close", None)
        if callable(close):
            close()


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
    # Postfix's smtp_connection_cache_time_limit (2 s) and smtp_connection_reuse_time_limit (300 s).
    IDLE_CLOSE_SECONDS = 2.0
    MAX_CONNECTION_SECONDS = 300.0
    MAX_MAILS_PER_CONNECTION = 100

    def __init__(self, config: SmtpOutConfig, password: str | None, local_hostname: str = "localhost") -> None:
        self.config = config
        self.password = password
        self.local_hostname = local_hostname
        self._lock = threading.Lock()
        self._client: smtplib.SMTP | None = None
        self._opened_at = 0.0
        self._last_used = 0.0
        self._mails = 0
        self.connections_opened = 0  # for tests and metrics: how many sessions this deliverer started

    def deliver(self, envelope_from: str, recipient: str, raw: bytes, message_id: str) -> None:
        sender, rcpt = _checked_envelope(envelope_from, recipient)
        with self._lock:
            try:
                client = self._session()
                try:
                    refused = client.sendmail(sender, [rcpt], raw)
                finally:
                    self._last_used = time.monotonic()
                    self._mails += 1
                if refused:
                    code, text = next(iter(refused.values()))
                    raise _error(code, text)
            except smtplib.SMTPRecipientsRefused as exc:
                self._keep_if_open()
                code, text = next(iter(exc.recipients.values()))
                raise _error(code, text) from exc
            except smtplib.SMTPResponseException as exc:
                self._keep_if_open()
                raise _error(exc.smtp_code, exc.smtp_error) from exc
            except (smtplib.SMTPException, OSError, socket.timeout) as exc:
                self._drop()
                raise TransientDeliveryError(f"{type(exc).__name__}: {exc}") from exc
            except (TransientDeliveryError, PermanentDeliveryError):
                raise
            except BaseException:
                self._drop()
                raise

    def close(self) -> None:
        """QUIT the kept connection, if any (the next delivery opens a new one)."""
        with self._lock:
            self._drop()

    def _session(self) -> smtplib.SMTP:
        """The kept connection if it is young enough and still open, else a new one (lock held)."""
        client = self._client
        if client is not None:
            now = time.monotonic()
            if (self._mails < self.MAX_MAILS_PER_CONNECTION and now - self._opened_at < self.MAX_CONNECTION_SECONDS
                    and _still_open(client)):
                return client
            self._drop()
        client = self._connect()
        self._client = client
        self._opened_at = self._last_used = time.monotonic()
        self._mails = 0
        self.connections_opened += 1
        threading.Thread(target=self._close_when_idle, args=(client,), name="smtp-out-idle", daemon=True).start()
        return client

    def _connect(self) -> smtplib.SMTP:
        cfg = self.config
        client: smtplib.SMTP
        if cfg.security == "tls":
            client = smtplib.SMTP_SSL(cfg.host, cfg.port, timeout=cfg.timeout, local_hostname=self.local_hostname,
                                      context=ssl.create_default_context())
        else:
            client = smtplib.SMTP(cfg.host, cfg.port, timeout=cfg.timeout, local_hostname=self.local_hostname)
        try:
            client.ehlo()
            if cfg.security == "starttls":
                client.starttls(context=ssl.create_default_context())
                client.ehlo()
            if cfg.username:
                client.login(cfg.username, self.password or "")
        except BaseException:
            client.close()
            raise
        return client

    def _keep_if_open(self) -> None:
        """After a refused MAIL/RCPT/DATA smtplib has sent RSET (or closed the session on 421)."""
        if self._client is not None and self._client.sock is None:
            self._drop()

    def _drop(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        try:
            client.quit()
        except (smtplib.SMTPException, OSError):
            client.close()

    def _close_when_idle(self, client: smtplib.SMTP) -> None:
        """Background: QUIT `client` once it has been idle for IDLE_CLOSE_SECONDS; ends when it is gone."""
        while True:
            with self._lock:
                if self._client is not client:
                    return
                idle_left = self._last_used + self.IDLE_CLOSE_SECONDS - time.monotonic()
                if idle_left <= 0:
                    self._drop()
                    return
            time.sleep(idle_left)


def _still_open(client: smtplib.SMTP) -> bool:
    """Whether a kept session may carry the next mail: connected, and the smarthost has said nothing since."""
    sock = client.sock
    if sock is None or sock.fileno() < 0:
        return False
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return False
    return not readable


def _error(code: int, text: bytes | str) -> Exception:
    message = text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)
    message = f"{code} {' '.join(message.split())[:300]}"
    return PermanentDeliveryError(message) if 500 <= code < 600 else TransientDeliveryError(message)
