"""Processing answers some questions from memory instead of SQL; these pin that the answers stay the same.

Processing stores many messages in one transaction (a savepoint each). For a ticket created in the current
savepoint it knows its participants, mails and first article without asking the database, and it skips
autoflushes no query needs. What must not change: limits and threading still see every row written earlier in
the same transaction (by earlier messages of the batch), a participant is recorded once, and a message whose
savepoint is rolled back leaves nothing behind, not even in memory.

Each test stores a backlog with `ingest --queue-only` and processes it in this process as one batch in one
transaction (the run waits for every parse instead of committing early), which it checks by counting commits.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event, text

from mail2ticket.cli.common import open_services
from mail2ticket.config import load_config
from mail2ticket.db.engine import make_engine
from mail2ticket.pipeline import process, staff
from mail2ticket.pipeline.process import Processor, Result
from tests.support.app import App
from tests.support.mails import citizen_mail


@pytest.fixture
def db(app: App) -> Iterator[Engine]:
    engine = make_engine(app.database_url)
    yield engine
    engine.dispose()


def rows(engine: Engine, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        return [tuple(row) for row in conn.execute(text(sql), params)]


def process_as_one_batch(app: App, tmp_path: Path, mails: list[bytes], monkeypatch: pytest.MonkeyPatch) -> list[Result]:
    """Store `mails` as a backlog, then process all of them in one transaction; their results in order."""
    folder = tmp_path / "backlog"
    folder.mkdir()
    for index, raw in enumerate(mails):
        (folder / f"{index:03d}.eml").write_bytes(raw)
    app.cli("ingest", "--queue-only", *sorted(str(p) for p in folder.iterdir()))
    monkeypatch.setattr(process, "RUN_WAIT_SECONDS", 60.0)  # wait for each parse: no early commit
    runtime, services = open_services(load_config(app.write_config()))
    commits: list[int] = []
    event.listen(services.engine, "commit", lambda _conn: commits.append(1))
    processor = Processor(services, lambda: runtime)
    try:
        results = processor.process_batch()
    finally:
        processor.close()
        services.close()
    assert len(results) == len(mails)
    assert len(commits) == 1, "the backlog was not processed in one transaction"
    return sorted(results, key=lambda r: r.inbound_id)


def acks_to(engine: Engine, address: str) -> list[tuple[Any, ...]]:
    return rows(engine, "SELECT ticket_id, dedupe_key FROM outbound_mail WHERE recipient = :a AND template = 'ack'",
                a=address)


def events_of(engine: Engine, ticket_id: int, type_: str) -> list[str]:
    return [str(detail) for (detail,) in rows(
        engine, "SELECT detail FROM event WHERE ticket_id = :t AND type = :y ORDER BY id", t=ticket_id, y=type_)]


def ticket_ids(engine: Engine) -> list[int]:
    return [int(tid) for (tid,) in rows(engine, "SELECT id FROM ticket ORDER BY id")]


def test_a_second_ticket_from_the_same_sender_in_the_batch_is_not_acknowledged(
        app: App, tmp_path: Path, db: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    mails = [citizen_mail(subject=f"Anliegen {i}", message_id=f"<same{i}@example.org>") for i in range(3)]
    results = process_as_one_batch(app, tmp_path, mails, monkeypatch)

    assert [r.state for r in results] == ["done"] * 3
    tickets = ticket_ids(db)
    assert len(tickets) == 3
    # The guard counts see the first ticket and its acknowledgement, written by an earlier message of the batch.
    assert [tid for tid, _ in acks_to(db, "erika@example.org")] == [tickets[0]]
    for tid in tickets[1:]:
        suppressed = events_of(db, tid, "ack_suppressed")
        assert len(suppressed) == 1 and "sender_burst" in suppressed[0]


def test_the_hourly_limit_counts_acknowledgements_of_the_same_batch(
        app: App, tmp_path: Path, db: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    app.set("loop_protection", per_recipient_per_hour=1)
    mails = [citizen_mail(subject=f"Anliegen {i}", message_id=f"<hour{i}@example.org>") for i in range(2)]
    process_as_one_batch(app, tmp_path, mails, monkeypatch)

    first, second = ticket_ids(db)
    assert [tid for tid, _ in acks_to(db, "erika@example.org")] == [first]
    suppressed = events_of(db, second, "ack_suppressed")
    assert len(suppressed) == 1 and "sender_flood" in suppressed[0]


def test_a_reply_and_its_original_in_one_batch_thread_together(
        app: App, tmp_path: Path, db: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    original = citizen_mail(subject="Laterne defekt", message_id="<original@example.org>")
    reply = citizen_mail(subject="Re: Laterne defekt", body="Nachtrag: es ist die zweite Laterne.\n",
                         message_id="<reply@example.org>",
                         headers={"In-Reply-To": "<original@example.org>", "References": "<original@example.org>"})
    other = citizen_mail(subject="Anderes Thema", message_id="<other@example.org>",
                         sender="Anna Beispiel <anna@example.org>")
    results = process_as_one_batch(app, tmp_path, [original, reply, other], monkeypatch)

    assert [r.state for r in results] == ["done"] * 3
    assert results[0].ticket_number == results[1].ticket_number != results[2].ticket_number
    first = ticket_ids(db)[0]
    assert rows(db, "SELECT message_id FROM article WHERE ticket_id = :t ORDER BY id", t=first) == [
        ("<original@example.org>",), ("<reply@example.org>",)]
    assert len(acks_to(db, "erika@example.org")) == 1  # a follow-up gets no second acknowledgement
    assert len(acks_to(db, "anna@example.org")) == 1


def test_a_reply_to_our_acknowledgement_finds_the_ticket(
        app: App, tmp_path: Path, db: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """Threading by an outbound mail's Message-ID (In-Reply-To of the acknowledgement)."""
    first = citizen_mail(subject="Baustelle", message_id="<baustelle@example.org>")
    process_as_one_batch(app, tmp_path, [first], monkeypatch)
    ((ack_id,),) = rows(db, "SELECT message_id FROM outbound_mail")
    followup = citizen_mail(subject="Re: Baustelle", message_id="<baustelle2@example.org>",
                            headers={"In-Reply-To": ack_id, "References": ack_id})
    again = tmp_path / "again"
    again.mkdir()
    results = process_as_one_batch(app, again, [followup], monkeypatch)
    assert results[0].ticket_number is not None
    assert len(ticket_ids(db)) == 1


def test_a_participant_is_recorded_once(
        app: App, tmp_path: Path, db: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    mail = citizen_mail(subject="Mit Kopie", message_id="<cc@example.org>",
                        headers={"Cc": "erika@example.org, Anna <anna@example.org>, anna@example.org"})
    second = citizen_mail(subject="Zweites Anliegen", message_id="<cc2@example.org>",
                          sender="Anna Beispiel <anna@example.org>", headers={"Cc": "Erika <erika@example.org>"})
    process_as_one_batch(app, tmp_path, [mail, second], monkeypatch)

    first, other = ticket_ids(db)
    assert rows(db, "SELECT address, role FROM participant WHERE ticket_id = :t ORDER BY id", t=first) == [
        ("erika@example.org", "requester"), ("anna@example.org", "cc")]
    assert rows(db, "SELECT address, role FROM participant WHERE ticket_id = :t ORDER BY id", t=other) == [
        ("anna@example.org", "requester"), ("erika@example.org", "cc")]


def test_a_rolled_back_message_leaves_nothing_for_the_next_one(
        app: App, tmp_path: Path, db: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """The savepoint of the first message is rolled back after its ticket, participant and acknowledgement were
    written; SQLite then gives the next ticket the same id, which must not inherit anything remembered."""
    original = staff.notify_new_ticket

    def failing(session: Any, runtime: Any, ticket: Any, *args: Any, **kwargs: Any) -> int:
        if ticket.subject == "kaputt":
            raise RuntimeError("boom after the acknowledgement")
        return original(session, runtime, ticket, *args, **kwargs)

    monkeypatch.setattr(staff, "notify_new_ticket", failing)
    mails = [citizen_mail(subject="kaputt", message_id="<broken@example.org>"),
             citizen_mail(subject="heil", message_id="<whole@example.org>")]
    results = process_as_one_batch(app, tmp_path, mails, monkeypatch)

    assert [r.state for r in results] == ["quarantined", "done"]
    assert results[0].reason is not None and "RuntimeError" in results[0].reason
    (tid,) = ticket_ids(db)
    assert rows(db, "SELECT address, role FROM participant WHERE ticket_id = :t", t=tid) == [
        ("erika@example.org", "requester")]
    assert [key for _, key in acks_to(db, "erika@example.org")] == [f"ack:{tid}"]
    (raw,) = rows(db, "SELECT raw FROM outbound_mail WHERE ticket_id = :t", t=tid)
    assert re.search(rb"In-Reply-To: <whole@example.org>", bytes(raw[0]))
    ((outbound_id, envelope),) = rows(db, "SELECT id, envelope_from FROM outbound_mail")
    assert re.fullmatch(rf"bounces\+{outbound_id}-[a-z0-9]{{10}}@stadt\.example", str(envelope))
