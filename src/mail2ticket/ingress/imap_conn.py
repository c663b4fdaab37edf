"""IMAP connection and login: TLS policy, socket timeout, TCP keepalive, LOGIN or XOAUTH2, error sorting.

Place in the pipeline: the I/O edge of IMAP ingress. `connect()` returns a logged-in client that satisfies
the `ImapClient` Protocol (the seam where unit tests plug in an in-memory fake); everything above it
(`imap_sync`, `imap_actions`, `imap`) only sees that Protocol. Errors are sorted here into the three kinds
the worker reacts to differently:

| kind             | examples                                              | worker reaction                         |
|------------------|-------------------------------------------------------|-----------------------------------------|
| `AuthFailed`     | wrong password, revoked token, token command failing  | backoff up to 15 min, box marked failing |
| connection lost  | refused, reset, timeout, TLS error, `* BYE`, abort    | reconnect with backoff up to 5 min      |
| server said NO   | unknown folder, MOVE refused                          | backoff as a connection error           |
"""

from __future__ import annotations

import contextlib
import imaplib
import shlex
import socket
import ssl
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientError, LoginError

from mail2ticket.config import ConfigError
from mail2ticket.config.load import read_secret
from mail2ticket.config.model import MailboxConfig

TOKEN_COMMAND_TIMEOUT = 30.0
KEEPALIVE_IDLE, KEEPALIVE_INTERVAL, KEEPALIVE_COUNT = 60, 15, 4

# Errors that mean "this connection is gone or unusable": reconnect.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (OSError, imaplib.IMAP4.abort, EOFError)
# Errors that mean "the server refused a command": the connection may still be fine.
COMMAND_ERRORS: tuple[type[BaseException], ...] = (IMAPClientError,)


class AuthFailed(Exception):
    """The credentials were refused or could not be obtained; retrying soon will not help."""


class ImapClient(Protocol):
    """The subset of `imapclient.IMAPClient` that IMAP ingress uses (UID mode throughout)."""

    def capabilities(self) -> tuple[bytes, ...]: ...

    def has_capability(self, capability: str) -> bool: ...

    def select_folder(self, folder: str, readonly: bool = False) -> dict[bytes, Any]: ...

    def folder_exists(self, folder: str) -> bool: ...

    def create_folder(self, folder: str) -> Any: ...

    def search(self, criteria: Any = "ALL", charset: str | None = None) -> list[int]: ...

    def fetch(self, messages: Sequence[int], data: Sequence[str], modifiers: Any = None) -> dict[int, dict[bytes, Any]]: ...

    def add_flags(self, messages: Sequence[int], flags: Sequence[bytes], silent: bool = False) -> Any: ...

    def copy(self, messages: Sequence[int], folder: str) -> Any: ...

    def move(self, messages: Sequence[int], folder: str) -> Any: ...

    def uid_expunge(self, messages: Sequence[int]) -> Any: ...

    def idle(self) -> Any: ...

    def idle_check(self, timeout: float | None = None) -> list[Any]: ...

    def idle_done(self) -> Any: ...

    def noop(self) -> Any: ...

    def logout(self) -> Any: ...

    def shutdown(self) -> None: ...


def describe(box: MailboxConfig) -> str:
    return f"{box.username}@{box.host}:{box.effective_port}"


def obtain_secret(box: MailboxConfig, config_file: Path) -> str:
    """The password (auth=login) or the OAuth2 access token (auth=xoauth2), read fresh for every login."""
    where = f"mailbox[{box.name}]"
    try:
        if box.auth == "login":
            value = read_secret(box.password_file, box.password_env, f"{where}.password_file", config_file)
            if not value:
                raise AuthFailed("the password is empty")
            return value
        if box.token_file is not None:
            value = read_secret(box.token_file, None, f"{where}.token_file", config_file)
            if not value:
                raise AuthFailed(f"token file {box.token_file} is empty")
            return value
    except ConfigError as exc:
        raise AuthFailed(str(exc)) from None
    assert box.token_command is not None
    return run_token_command(box.token_command)


def run_token_command(command: str, timeout: float = TOKEN_COMMAND_TIMEOUT) -> str:
    """Run the admin's token helper (no shell) and return the first line of its output."""
    try:
        proc = subprocess.run(shlex.split(command), capture_output=True, timeout=timeout, check=False,
                              stdin=subprocess.DEVNULL)
    except (OSError, ValueError) as exc:
        raise AuthFailed(f"token_command could not be started: {exc}") from None
    except subprocess.TimeoutExpired:
        raise AuthFailed(f"token_command did not finish within {timeout:.0f} s") from None
    if proc.returncode != 0:
        err = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        raise AuthFailed(f"token_command exited {proc.returncode}" + (f": {err[-1][:200]}" if err else ""))
    lines = proc.stdout.decode("utf-8", "replace").strip().splitlines()
    if not lines or not lines[0].strip():
        raise AuthFailed("token_command printed no token")
    return lines[0].strip()


def _keepalive(sock: socket.socket) -> None:
    """TCP keepalive makes the kernel notice a peer that vanished without a FIN or RST."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if hasattr(socket, "TCP_KEEPIDLE"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPALIVE_IDLE)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPALIVE_INTERVAL)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE_COUNT)
    except OSError:
        pass


def open_connection(box: MailboxConfig, ssl_context: ssl.SSLContext | None = None) -> IMAPClient:
    """A connected, not yet authenticated client with the box's transport security."""
    context = ssl_context or ssl.create_default_context()
    if box.security == "tls":
        client = IMAPClient(box.host, box.effective_port, ssl=True, ssl_context=context, timeout=box.timeout)
    else:
        client = IMAPClient(box.host, box.effective_port, ssl=False, timeout=box.timeout)
    try:
        _keepalive(client.socket())
        if box.security == "starttls":
            if not client.has_capability("STARTTLS"):
                raise AuthFailed("the server does not offer STARTTLS; refusing to log in without TLS")
            client.starttls(context)
    except BaseException:
        client.shutdown()
        raise
    return client


def login(client: IMAPClient, box: MailboxConfig, secret: str) -> None:
    try:
        if box.auth == "xoauth2":
            client.oauth2_login(box.username, secret)
        else:
            client.login(box.username, secret)
    except LoginError as exc:
        raise AuthFailed(f"login refused: {_server_text(exc)}") from None


def connect(box: MailboxConfig, config_file: Path, ssl_context: ssl.SSLContext | None = None) -> IMAPClient:
    """Connect and log in; raises AuthFailed or one of CONNECTION_ERRORS / COMMAND_ERRORS."""
    secret = obtain_secret(box, config_file)
    client = open_connection(box, ssl_context)
    try:
        login(client, box, secret)
    except BaseException:
        client.shutdown()
        raise
    return client


def close_quietly(client: ImapClient | None) -> None:
    """LOGOUT if the connection still answers, otherwise just drop the socket."""
    if client is None:
        return
    try:
        client.logout()
    except Exception:  # noqa: BLE001 - a dead connection cannot log out; shut it down instead
        with contextlib.suppress(Exception):
            client.shutdown()


def error_text(exc: BaseException) -> str:
    """A short, secret-free description of an IMAP/network error for logs and check-config."""
    if isinstance(exc, AuthFailed):
        return str(exc)
    if isinstance(exc, socket.timeout | TimeoutError):
        return "timed out"
    text = _server_text(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _server_text(exc: BaseException) -> str:
    text = " ".join(str(a.decode("utf-8", "replace") if isinstance(a, bytes) else a) for a in exc.args)
    return text.replace("\r", " ").replace("\n", " ")[:300]


def take_exists_note(client: ImapClient) -> bool:
    """True if the server announced EXISTS since the last call (and forget it); False for clients without one.

    imaplib files unsolicited responses away where imapclient never returns them. The sync clears the note
    right after SELECT (whose reply always has EXISTS), so a later one means mail arrived during the pass,
    and the worker syncs again instead of waiting for the next IDLE refresh.
    """
    untagged = getattr(getattr(client, "_imap", None), "untagged_responses", None)
    if not isinstance(untagged, dict):
        return False
    return untagged.pop("EXISTS", None) is not None
