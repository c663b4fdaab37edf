"""Batched processing: a backlog is processed in batches, and each message still gets exactly its own outcome.

A backlog (after an outage, or an import) is processed many messages per transaction. These tests check what
an operator sees: every message of a mixed backlog ends as ticket, ignored or quarantined as it would alone,
one acknowledgement per new ticket, and a crash in the middle of a batch neither loses nor doubles anything.
"""

from __future__ import annotations

import base64
import os
from collections import Counter
from pathlib import Path

from sqlalchemy import select

from mail2ticket.db.engine import make_engine
from mail2ticket.db.models import InboundMessage
from tests.support.app import App, wait_until
from tests.support.mails import citizen_mail


def inbound_states(app: App) -> list[tuple[str, str]]:
    """(Message-ID, state) of every stored message, in arrival order."""
    engine = make_engine(app.database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(InboundMessage.message_id, InboundMessage.state)).all()
    finally:
        engine.dispose()
    return [(str(mid), str(getattr(state, "value", state))) for mid, state in rows]


def states_of(app: App) -> Counter[str]:
    return Counter(state for _, state in inbound_states(app))


def queue_backlog(app: App, tmp_path: Path, mails: list[bytes]) -> None:
    folder = tmp_path / "backlog"
    folder.mkdir()
    for index, raw in enumerate(mails):
        (folder / f"{index:03d}.eml").write_bytes(raw)
    app.cli("ingest", "--queue-only", *sorted(str(p) for p in folder.iterdir()))


def structure_bomb(message_id: str) -> bytes:
    parts = "".join(f"--b\r\nContent-Type: text/plain\r\n\r\npart {i}\r\n" for i in range(1200))
    return (f"From: a@example.org\r\nTo: buergerbuero@stadt.example\r\nSubject: bomb\r\nMessage-ID: {message_id}\r\n"
            f"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n{parts}--b--\r\n").encode()


def test_a_mixed_backlog_gets_one_outcome_per_message(app: App, tmp_path: Path) -> None:
    normal = [citizen_mail(subject=f"Anliegen {i}", message_id=f"<normal{i}@example.org>",
                           sender=f"Bürger {i} <buerger{i}@example.org>") for i in range(8)]
    auto_reply = citizen_mail(subject="Abwesenheitsnotiz", message_id="<auto@example.org>",
                              sender="Abwesend <weg@example.org>", headers={"Auto-Submitted": "auto-replied"})
    same_id = citizen_mail(subject="Anliegen 3 (nochmal)", body="Anderer Text, gleiche Message-ID.\n",
                           message_id="<normal3@example.org>", sender="Bürger 3 <buerger3@example.org>")
    queue_backlog(app, tmp_path, [*normal[:4], structure_bomb("<bomb@example.org>"), auto_reply, same_id,
                                  *normal[4:]])

    daemon = app.start()
    try:
        wait_until(lambda: "new" not in states_of(app), timeout=60, message="backlog processed")
        wait_until(lambda: len(app.outbox_files()) >= 8, timeout=30, message="acknowledgements delivered")
    finally:
        daemon.stop()

    states = inbound_states(app)
    assert ("<bomb@example.org>", "quarantined") in states
    assert states_of(app) == {"done": 9, "ignored": 1, "quarantined": 1}
    assert [state for mid, state in states if mid == "<normal3@example.org>"] == ["done", "ignored"]
    tickets = app.tickets()
    assert len(tickets) == 9  # 8 citizens and the auto-reply that threads nowhere
    acks = [p.read_bytes() for p in app.outbox_files()]
    assert len(acks) == 8  # no acknowledgement to the auto-reply, none twice
    assert not any(b"weg@example.org" in ack.split(b"\r\n\r\n", 1)[0] for ack in acks)


def test_kill_in_the_middle_of_a_batch_loses_and_doubles_nothing(app: App, tmp_path: Path) -> None:
    mails = [citizen_mail(subject=f"Anliegen {i}", message_id=f"<m{i}@example.org>",
                          sender=f"buerger{i}@example.org") for i in range(20)]
    queue_backlog(app, tmp_path, mails)

    crashed = app.start(env={"M2T_FAILPOINT": "process.before_commit:kill"}, wait=False)
    assert crashed.proc.wait(timeout=60) != 0  # killed itself before the first commit of processing
    assert set(states_of(app)) == {"new"}

    daemon = app.start()
    try:
        wait_until(lambda: len(app.outbox_files()) >= 20, timeout=60, message="20 acknowledgements")
    finally:
        daemon.stop()
    assert states_of(app) == {"done": 20}
    assert len(app.tickets()) == 20
    assert len(app.outbox_files()) == 20


def with_attachment(raw: bytes, size: int) -> bytes:
    """`raw` (a one-part text mail) with a base64 attachment of `size` random bytes: slow to parse."""
    head, _, body = raw.partition(b"\r\n\r\n")
    head = b"\r\n".join(line for line in head.split(b"\r\n") if not line.lower().startswith(b"content-"))
    data = base64.encodebytes(os.urandom(size)).replace(b"\n", b"\r\n")
    return (head + b"\r\nContent-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\n"
            b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n" + body +
            b"\r\n--x\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename=plan.pdf\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\n" + data + b"--x--\r\n")


def test_a_backlog_is_stored_in_arrival_order_even_behind_a_slow_parse(app: App, tmp_path: Path) -> None:
    # Parsing runs in two workers; a large mail must not let the mails behind it overtake it: tickets are
    # numbered in arrival order and every reply finds the ticket of the mail it answers.
    first = [citizen_mail(subject=f"Anliegen {i}", message_id=f"<m{i}@example.org>",
                          sender=f"buerger{i}@example.org") for i in range(6)]
    first[1] = with_attachment(first[1], 3 << 20)
    replies = [citizen_mail(subject=f"Re: Anliegen {i}", message_id=f"<r{i}@example.org>",
                            sender=f"buerger{i}@example.org", headers={"In-Reply-To": f"<m{i}@example.org>"})
               for i in range(6)]
    backlog = [first[0], first[1], replies[1], first[2], replies[0], first[3], first[4], replies[4], first[5],
               replies[2], replies[3], replies[5]]
    queue_backlog(app, tmp_path, backlog)

    daemon = app.start()
    try:
        wait_until(lambda: "new" not in states_of(app), timeout=60, message="backlog processed")
    finally:
        daemon.stop()
    tickets = sorted(app.tickets(), key=lambda t: str(t["number"]))
    assert [t["subject"] for t in tickets] == [f"Anliegen {i}" for i in range(6)]
    assert [t["articles"] for t in tickets] == [2] * 6
