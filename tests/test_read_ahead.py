"""The parse-ahead reader's batch read (`repo_raw.read_ahead`): what processing gets for each stored message."""

from __future__ import annotations

from sqlalchemy import delete
from sqlalchemy.orm import Session, sessionmaker

from mail2ticket.db.models import RawMessage
from mail2ticket.db.repo_raw import read_ahead
from mail2ticket.intake import Envelope, store
from tests.support.mails import citizen_mail


def _stored(factory: sessionmaker[Session], count: int) -> list[tuple[int, bytes]]:
    mails = []
    for i in range(count):
        raw = citizen_mail(subject=f"Anfrage {i}", message_id=f"<ahead-{i}@example.org>", body="x" * (100 * i) + "\n")
        envelope = Envelope("smtp", mail_from=f"buerger{i}@example.org", rcpt_to=[f"amt{i}@stadt.example", "b@x.de"])
        mails.append((store(factory, raw, envelope).inbound_id, raw))
    return mails


def test_every_stored_message_comes_back_with_its_envelope_size_and_bytes(factory: sessionmaker[Session]) -> None:
    mails = _stored(factory, 19)  # more than one query's worth, and not a multiple of it
    ids = [inbound_id for inbound_id, _ in mails]
    with factory() as session:
        found = read_ahead(session, ids, below=1 << 20)
    assert sorted(found) == sorted(ids)
    for i, (inbound_id, raw) in enumerate(mails):
        assert found[inbound_id] == ((f"buerger{i}@example.org", [f"amt{i}@stadt.example", "b@x.de"]), len(raw), raw)


def test_large_missing_and_unknown_messages_are_told_apart(factory: sessionmaker[Session]) -> None:
    (small, small_raw), (large, large_raw), (gone, _) = _stored(factory, 3)
    with factory.begin() as session:
        session.execute(delete(RawMessage).where(RawMessage.inbound_id == gone))
    with factory() as session:
        found = read_ahead(session, [small, large, gone, 999_999], below=len(large_raw))
    assert found[small][1:] == (len(small_raw), small_raw)
    assert found[large][1:] == (len(large_raw), None)  # read piece by piece when it is sent to the worker
    assert found[gone][1:] == (None, None)  # the intake row without its raw bytes
    assert 999_999 not in found
