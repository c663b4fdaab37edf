"""Group commit as the relay sees it: many sessions at once, failures of a batch, kill -9 after a commit.

Real daemon subprocess, real smtplib clients released together by a barrier, real database. The processing
stage is parked (failpoint `process.step:sleep`) where a test looks at the stored rows only.
"""

from __future__ import annotations

import base64
import hashlib
import random
import smtplib
import threading
from typing import Any

from sqlalchemy import func, select

from mail2ticket.db.engine import make_engine, make_sessionmaker, unit_of_work
from mail2ticket.db.models import InboundMessage, RawMessage
from mail2ticket.intake import Envelope, prepare
from tests.support.app import App, Daemon, wait_until
from tests.support.mails import citizen_mail

PARKED = "process.step:sleep=600"


def count(app: App, model: Any = InboundMessage) -> int:
    engine = make_engine(app.database_url)
    try:
        with unit_of_work(make_sessionmaker(engine)) as session:
            return int(session.scalar(select(func.count()).select_from(model)) or 0)
    finally:
        engine.dispose()


def send_together(daemon: Daemon, mails: list[bytes]) -> list[int | str]:
    """Send each mail in its own session, all DATA commands released at once; each session's reply code.

    A session whose connection dropped before a reply gives "disconnected".
    """
    barrier = threading.Barrier(len(mails))
    codes: list[int | str] = [0] * len(mails)

    def one(i: int) -> None:
        try:
            with daemon.smtp() as client:
                client.ehlo()
                assert client.mail("erika@example.org")[0] == 250
                assert client.rcpt("buergerbuero@stadt.example")[0] == 250
                barrier.wait(10)
                codes[i] = client.data(mails[i])[0]
        except (smtplib.SMTPServerDisconnected, ConnectionError):
            codes[i] = "disconnected"

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(mails))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return codes


def mails(n: int, tag: str) -> list[bytes]:
    return [citizen_mail(message_id=f"<{tag}-{i}@example.org>", sender=f"b{i}@example.org") for i in range(n)]


def test_concurrent_sessions_all_get_250_and_every_message_is_stored(app: App) -> None:
    """Thirty sessions sending at the same moment all get 250, and each message is one stored row."""
    daemon = app.start(env={"M2T_FAILPOINT": PARKED})
    try:
        codes = send_together(daemon, mails(30, "together"))
        assert codes == [250] * 30
        assert count(app) == 30 and count(app, RawMessage) == 30
    finally:
        daemon.kill()


def test_same_message_from_concurrent_sessions_is_stored_once(app: App) -> None:
    """A relay delivering one message in several sessions at once gets 250 everywhere and one row."""
    daemon = app.start(env={"M2T_FAILPOINT": PARKED})
    try:
        codes = send_together(daemon, [citizen_mail(message_id="<burst-dup@example.org>")] * 6)
        assert codes == [250] * 6
        assert count(app) == 1
    finally:
        daemon.kill()


def test_failed_batch_answers_451_to_every_session_and_never_250(app: App) -> None:
    """When the batch transaction fails, every session in it gets 451 (the relay retries) and nothing is stored."""
    daemon = app.start(env={"M2T_FAILPOINT": f"{PARKED},intake.batch_before_commit:raise"})
    try:
        codes = send_together(daemon, mails(12, "failing"))
        assert codes == [451] * 12
        assert count(app) == 0
        assert any(e.get("event") == "intake_batch_failed" for e in daemon.events())
    finally:
        daemon.kill()


def test_kill_after_commit_before_reply_loses_nothing(app: App) -> None:
    """kill -9 after a batch committed, before any 250: the committed messages survive, the relay's retry of
    all of them (it got no reply) is stored without duplicates, and each becomes exactly one ticket."""
    batch = mails(8, "killed")
    crashed = app.start(env={"M2T_FAILPOINT": "smtp.after_commit_before_reply:kill"})
    codes = send_together(crashed, batch)
    assert crashed.proc.wait(30) != 0
    assert 250 not in codes  # the daemon died before it could acknowledge anything
    survived = count(app)
    assert survived >= 1  # at least the first batch was committed before the kill
    again = app.start()
    try:
        assert send_together(again, batch) == [250] * 8  # the relay retries every unacknowledged message
        assert count(app) == 8
        wait_until(lambda: len(app.tickets()) == 8, timeout=30, message="one ticket per message")
    finally:
        assert again.stop() == 0
    assert len(app.tickets()) == 8


def test_large_message_with_dot_lines_is_stored_byte_exact(app: App) -> None:
    """A ~3 MB message (several 1 MiB DATA parts) with lines starting with dots is stored exactly as sent."""
    body = "".join(f".Zeile {i} beginnt mit einem Punkt\r\n..und diese mit zwei\r\nnormal {i}\r\n" for i in range(40_000))
    raw = citizen_mail(message_id="<dots@example.org>").split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n" + body.encode()
    daemon = app.start(env={"M2T_FAILPOINT": PARKED})
    try:
        daemon.send(raw)
        engine = make_engine(app.database_url)
        try:
            with unit_of_work(make_sessionmaker(engine)) as session:
                stored = session.scalars(select(RawMessage.data)).one()
        finally:
            engine.dispose()
    finally:
        daemon.kill()
    assert len(raw) > 2_500_000
    assert stored == raw


def test_large_message_redelivered_through_another_relay_is_one_row(app: App) -> None:
    """A ~3 MB message arrives in several 1 MiB DATA parts, hashed without joining them. Its hashes are those of the
    whole message, so the same mail delivered again through another relay (one more Received line) is one row."""
    attachment = base64.encodebytes(random.Random(3).randbytes(2_300_000)).replace(b"\n", b"\r\n")
    raw = citizen_mail(message_id="<plan@example.org>").split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n" + attachment
    daemon = app.start(env={"M2T_FAILPOINT": PARKED})
    try:
        daemon.send(raw)
        daemon.send(b"Received: from mx2.stadt.example by relay.stadt.example\r\n" + raw)
        engine = make_engine(app.database_url)
        try:
            with unit_of_work(make_sessionmaker(engine)) as session:
                rows = session.execute(select(InboundMessage.sha256, InboundMessage.content_hash)).all()
        finally:
            engine.dispose()
    finally:
        daemon.kill()
    assert len(raw) > 3_000_000
    assert [tuple(row) for row in rows] == [(hashlib.sha256(raw).hexdigest(), prepare(raw, Envelope("smtp")).content_hash)]
