"""SMTP smuggling (P12, T29): no end-of-data trick splits a second message out of one DATA, over a raw socket."""

from __future__ import annotations

import socket

import aiosmtpd
import pytest
from sqlalchemy import select

from mail2ticket.db.engine import make_engine, make_sessionmaker, unit_of_work
from mail2ticket.db.models import InboundMessage
from mail2ticket.ingress.smtp import check_aiosmtpd_version
from tests.support.app import App, wait_until

# Fake end-of-data sequences from the SMTP smuggling research (SEC Consult, smtpsmug).
VECTORS = {
    "lf-dot-crlf": b"\n.\r\n",
    "cr-dot-cr": b"\r.\r",
    "lf-dot-lf": b"\n.\n",
    "crlf-dot-lf": b"\r\n.\n",
    "lf-dot-cr": b"\n.\r",
    "cr-dot-crlf": b"\r.\r\n",
    "crlf-dot-cr-crlf": b"\r\n.\r\r\n",
    "bare-cr-commands": b"\r\n.\rMAIL FROM:<x@y>\r",
    "bare-lf-commands": b"\n.\nRSET\n",
}


def session_bytes(name: str, sequence: bytes) -> bytes:
    """One pipelined SMTP session: a real mail, the fake terminator, then a smuggled mail and the real end."""
    first = (f"From: erika@example.org\r\nTo: buergerbuero@stadt.example\r\nSubject: Probe {name}\r\n"
             f"Message-ID: <probe-{name}@example.org>\r\n\r\nHallo\r\n").encode()
    smuggled = (b"MAIL FROM:<buergermeister@stadt.example>\r\nRCPT TO:<buergerbuero@stadt.example>\r\nDATA\r\n"
                b"From: buergermeister@stadt.example\r\nSubject: SMUGGLED " + name.encode() + b"\r\n\r\nevil\r\n")
    return (b"EHLO relay.example\r\nMAIL FROM:<erika@example.org>\r\nRCPT TO:<buergerbuero@stadt.example>\r\n"
            b"DATA\r\n" + first + sequence + smuggled + b"\r\n.\r\nQUIT\r\n")


def talk(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.recv(1024)  # greeting
        sock.sendall(payload)
        replies = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            replies += chunk
    return replies


def test_aiosmtpd_is_recent_enough() -> None:
    """The listener runs on aiosmtpd >= 1.4.6 and refuses to start on older ones (CVE-2024-27305, CVE-2024-34083)."""
    check_aiosmtpd_version()
    assert tuple(int(p) for p in aiosmtpd.__version__.split(".")[:3]) >= (1, 4, 6)
    with pytest.raises(RuntimeError, match="aiosmtpd >= 1.4.6"):
        check_aiosmtpd_version("1.4.4")


def test_smuggling_sequences_never_split_a_second_message(app: App) -> None:
    """Each session yields at most one stored message; the smuggled sender never appears anywhere (T29)."""
    daemon = app.start()
    try:
        queued = 0
        for name, sequence in VECTORS.items():
            replies = talk(app.smtp_port, session_bytes(name, sequence))
            assert replies.count(b"queued as") <= 1, (name, replies)
            queued += replies.count(b"queued as")
        assert queued >= 1
        engine = make_engine(app.database_url)
        factory = make_sessionmaker(engine)

        def rows() -> list[InboundMessage]:
            with unit_of_work(factory) as session:
                return list(session.scalars(select(InboundMessage).order_by(InboundMessage.id)))

        wait_until(lambda: len(rows()) == queued and all(r.state != "new" for r in rows()), timeout=60,
                   message="all sessions processed")
        stored = rows()
        engine.dispose()
        assert all(r.envelope_from == "erika@example.org" for r in stored)
        subjects = [t["subject"] for t in app.tickets()]
        assert not [s for s in subjects if s.startswith("SMUGGLED")]
        assert len(subjects) == queued
    finally:
        assert daemon.stop() == 0


@pytest.mark.parametrize("command", [b"MAIL FROM:<a@example.org>\rRCPT TO:<b@x>\r\n", b"NOOP\nMAIL FROM:<a@b>\r\n"])
def test_bare_cr_or_lf_in_commands_does_not_start_a_transaction(app: App, command: bytes) -> None:
    """A command line with a bare CR or LF inside is one (bad) command, never two."""
    daemon = app.start()
    try:
        replies = talk(app.smtp_port, b"EHLO relay.example\r\n" + command + b"QUIT\r\n")
        assert b"queued as" not in replies
        lines = [line for line in replies.split(b"\r\n") if line[:3].isdigit()]
        assert not any(line.startswith(b"250 2.1.5") for line in lines)  # no RCPT accepted
    finally:
        assert daemon.stop() == 0
