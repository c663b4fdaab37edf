"""The intake committer on a real database: batches, duplicates inside a batch, races and failures."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import DataError
from sqlalchemy.orm import Session, sessionmaker

from mail2ticket import intake
from mail2ticket.db.engine import unit_of_work
from mail2ticket.db.models import InboundMessage, RawMessage
from mail2ticket.failpoints import FailpointError
from mail2ticket.group_commit import GroupCommitter
from mail2ticket.intake import Envelope, Stored, prepare, store
from tests.support.mails import citizen_mail

SMTP = Envelope("smtp", mail_from="erika@example.org", rcpt_to=("buergerbuero@stadt.example",))


@pytest.fixture
def committer(factory: sessionmaker[Session]) -> Iterator[GroupCommitter]:
    pool = ThreadPoolExecutor(2)
    gc = GroupCommitter(factory, pool)
    yield gc
    gc.close(timeout=10)
    pool.shutdown()


def submit_as_one_batch(committer: GroupCommitter, raws: list[bytes]) -> list[Future[Stored]]:
    """Queue every message before the committer thread starts, so that its first batch holds them all."""
    futures = [committer.submit(prepare(raw, SMTP)) for raw in raws]
    committer.start()
    return futures


def count(factory: sessionmaker[Session], model: Any = InboundMessage) -> int:
    with unit_of_work(factory) as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def test_queued_messages_commit_together_and_each_gets_its_row(
        factory: sessionmaker[Session], committer: GroupCommitter) -> None:
    """Twenty messages queued at once are stored in one transaction, each with its own new row id."""
    raws = [citizen_mail(message_id=f"<batch-{i}@example.org>") for i in range(20)]
    results = [f.result(10) for f in submit_as_one_batch(committer, raws)]
    assert committer.batches == 1
    assert [r.duplicate for r in results] == [False] * 20
    assert len({r.inbound_id for r in results}) == 20
    assert count(factory) == 20 and count(factory, RawMessage) == 20


def test_duplicate_inside_one_batch_is_one_row(factory: sessionmaker[Session], committer: GroupCommitter) -> None:
    """The same message twice in one batch (once with a relay's Received line) makes one row; both get its id."""
    raw = citizen_mail(message_id="<twice-in-batch@example.org>")
    relayed = b"Received: from relay2.example by mx; Tue, 24 Nov 2026 10:00:00 +0100\r\n" + raw
    first, second, third = (f.result(10) for f in submit_as_one_batch(committer, [raw, relayed, raw]))
    assert committer.batches == 1
    assert not first.duplicate and second.duplicate and third.duplicate
    assert first.inbound_id == second.inbound_id == third.inbound_id
    assert count(factory) == 1


def test_failed_commit_fails_every_message_of_the_batch(
        factory: sessionmaker[Session], committer: GroupCommitter, monkeypatch: pytest.MonkeyPatch) -> None:
    """When the batch transaction fails, every message of it fails (SMTP 451) and none is stored."""
    monkeypatch.setenv("M2T_FAILPOINT", "intake.batch_before_commit:raise")
    raws = [citizen_mail(message_id=f"<doomed-{i}@example.org>") for i in range(5)]
    futures = submit_as_one_batch(committer, raws)
    for future in futures:
        with pytest.raises(FailpointError):
            future.result(10)
    assert count(factory) == 0
    monkeypatch.delenv("M2T_FAILPOINT")
    assert not committer.submit(prepare(raws[0], SMTP)).result(10).duplicate  # the committer goes on


def test_insert_race_with_another_instance_keeps_the_rest_of_the_batch(
        factory: sessionmaker[Session], committer: GroupCommitter, monkeypatch: pytest.MonkeyPatch) -> None:
    """A message another instance stored between our check and our insert resolves to that row; the batch commits."""
    raced = citizen_mail(message_id="<raced@example.org>")
    other = store(factory, raced, SMTP)  # "the other instance"
    real_find = intake.find_duplicate
    raced_hash = prepare(raced, SMTP).content_hash

    checked: list[str] = []

    def blind_to_the_race(session: Session, prepared: intake.Prepared) -> int | None:
        # Only the check before the insert misses the row; the lookup after the unique-key conflict finds it.
        if prepared.content_hash == raced_hash and raced_hash not in checked:
            checked.append(raced_hash)
            return None
        return real_find(session, prepared)

    monkeypatch.setattr(intake, "find_duplicate", blind_to_the_race)  # the check runs before the other commit
    fresh = citizen_mail(message_id="<fresh@example.org>")
    raced_result, fresh_result = (f.result(10) for f in submit_as_one_batch(committer, [raced, fresh]))
    assert raced_result == Stored(other.inbound_id, duplicate=True)
    assert not fresh_result.duplicate
    assert count(factory) == 2


def test_large_message_given_in_parts_is_stored_byte_exact(
        factory: sessionmaker[Session], committer: GroupCommitter) -> None:
    """A 3 MB message handed over in parts is stored as exactly the joined bytes (the streamed blob path)."""
    raw = citizen_mail(message_id="<big-parts@example.org>", body="Zeile mit Inhalt, Grüße\n" * 120_000)
    parts = [raw[i : i + 700_001] for i in range(0, len(raw), 700_001)]
    committer.start()
    stored = asyncio.run(committer.store(parts, SMTP))
    with unit_of_work(factory) as session:
        row = session.get(RawMessage, stored.inbound_id)
        assert row is not None and row.data == raw
        inbound = session.get(InboundMessage, stored.inbound_id)
        assert inbound is not None and inbound.size == len(raw) and inbound.message_id == "<big-parts@example.org>"
    assert store(factory, raw, SMTP) == Stored(stored.inbound_id, duplicate=True)  # same hash as the single path


def test_closed_committer_refuses_at_once(committer: GroupCommitter) -> None:
    """After close, a new message is refused immediately (the session answers 451) instead of waiting forever."""
    committer.start()
    committer.close(timeout=10)
    with pytest.raises(RuntimeError):
        committer.submit(prepare(citizen_mail(), SMTP))


def test_value_the_server_refuses_fails_only_that_message(
        backend: str, factory: sessionmaker[Session], committer: GroupCommitter) -> None:
    """A message whose envelope the server refuses (DataError) fails alone; the rest of its batch is stored."""
    if backend == "sqlite":
        pytest.skip("SQLite does not enforce column lengths, so it never raises DataError")
    bad = prepare(citizen_mail(message_id="<bad@example.org>"), Envelope("smtp", mail_from="x" * 500 + "@example.org"))
    good = prepare(citizen_mail(message_id="<good@example.org>"), SMTP)
    bad_future, good_future = committer.submit(bad), committer.submit(good)
    committer.start()
    assert not good_future.result(10).duplicate
    with pytest.raises(DataError):
        bad_future.result(10)
    assert committer.batches == 1 and count(factory) == 1
