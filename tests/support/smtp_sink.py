"""A real SMTP sink for tests: an aiosmtpd server on loopback that records every message it accepts."""

from __future__ import annotations

import email
import email.policy
import socket
import threading
import time
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller


@dataclass
class SinkMessage:
    mail_from: str
    rcpt_tos: list[str]
    raw: bytes

    @property
    def msg(self) -> EmailMessage:
        parsed = email.message_from_bytes(self.raw, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed


@dataclass
class _Handler:
    messages: list[SinkMessage] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    reply: str | None = None  # e.g. "451 4.3.0 try later" or "550 5.1.1 no such user" to inject failures

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.reply is not None:
            return self.reply
        with self.lock:
            self.messages.append(SinkMessage(envelope.mail_from, list(envelope.rcpt_tos),
                                             bytes(envelope.original_content)))
        return "250 2.0.0 OK"


class SmtpSink:
    def __init__(self, host: str = "127.0.0.1", port: int | None = None) -> None:
        if port is None:
            with socket.socket() as probe:
                probe.bind((host, 0))
                port = int(probe.getsockname()[1])
        self._handler = _Handler()
        self._controller = Controller(self._handler, hostname=host, port=port, ready_timeout=5,
                                      server_hostname="sink.localhost")

    def start(self) -> SmtpSink:
        self._controller.start()
        return self

    def stop(self) -> None:
        self._controller.stop()

    @property
    def host(self) -> str:
        return str(self._controller.hostname)

    @property
    def port(self) -> int:
        server = self._controller.server
        assert server is not None
        return int(server.sockets[0].getsockname()[1])

    def fail_with(self, reply: str | None) -> None:
        self._handler.reply = reply

    @property
    def messages(self) -> list[SinkMessage]:
        with self._handler.lock:
            return list(self._handler.messages)

    def to(self, address: str) -> list[SinkMessage]:
        return [m for m in self.messages if address.lower() in (r.lower() for r in m.rcpt_tos)]

    def wait_for(self, count: int, timeout: float = 15.0) -> list[SinkMessage]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.messages) >= count:
                return self.messages
            time.sleep(0.05)
        raise AssertionError(f"expected {count} messages in the sink, got {len(self.messages)}")
