"""The piecewise content hash equals the whole-message definition, however the bytes are split."""

from __future__ import annotations

import hashlib
import random
import re

import pytest

from mail2ticket import intake
from mail2ticket.intake import Envelope, content_hash, header_message_id, prepare


def reference_hash(raw: bytes) -> str:
    """The definition, written the direct way (whole-message copies): what stored rows were hashed with."""
    head, body = intake.split_head(raw)
    kept: list[bytes] = []
    skipping = False
    for line in re.split(rb"\r?\n", head):
        if line[:1] in (b" ", b"\t"):
            if not skipping:
                kept.append(line)
            continue
        skipping = line.split(b":", 1)[0].strip().lower() in intake.TRACE_HEADERS
        if not skipping:
            kept.append(line)
    digest = hashlib.sha256()
    digest.update(b"\n".join(kept))
    digest.update(b"\n\n")
    digest.update(re.sub(rb"\r\n?", b"\n", body).rstrip(b"\n"))
    return digest.hexdigest()


def split_randomly(raw: bytes, rng: random.Random) -> list[bytes]:
    cuts = sorted(rng.sample(range(len(raw) + 1), k=min(len(raw) + 1, rng.randint(0, 8))))
    bounds = [0, *cuts, len(raw)]
    return [raw[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


SAMPLES = [
    b"",
    b"\r\n\r\n",
    b"Subject: no body",
    b"Received: from x\r\n\tby y\r\nSubject: a\r\n\r\nbody\r\n\r\n\r\n",
    b"Subject: a\n\nbare LF body\n",
    b"Subject: a\r\n\r\nlone\rCR and \r\r\n and trailing CR\r",
    b"Subject: a\r\n\r\n\r\n\r\n",
    b"Subject: a\r\n\n\r\nmixed separator\r\n",
]


@pytest.mark.parametrize("raw", SAMPLES)
def test_hash_of_parts_matches_the_definition(raw: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every split of a message into parts, with tiny hash pieces, gives the hash of the whole message."""
    monkeypatch.setattr(intake, "HASH_PIECE", 3)
    rng = random.Random(len(raw))
    expected = reference_hash(raw)
    assert content_hash(raw) == expected
    for _ in range(200):
        assert content_hash(split_randomly(raw, rng)) == expected


def test_random_messages_hash_like_the_definition(monkeypatch: pytest.MonkeyPatch) -> None:
    """Random CR/LF-heavy messages split at random places hash exactly like the whole-message definition."""
    monkeypatch.setattr(intake, "HASH_PIECE", 5)
    rng = random.Random(8)
    alphabet = [b"\r", b"\n", b"a", b":", b" ", b"\t", b"Received", b"X"]
    for _ in range(2000):
        raw = b"".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        assert content_hash(split_randomly(raw, rng)) == reference_hash(raw), raw


def test_prepare_of_parts_equals_prepare_of_the_whole() -> None:
    """A message given as parts gets the same size, sha256, content hash and Message-ID as the joined bytes."""
    raw = (b"Received: from relay\r\nMessage-ID: <p@example.org>\r\nSubject: x\r\n\r\n"
           + b"Zeile mit Inhalt\r\n" * 100_000)
    rng = random.Random(1)
    envelope = Envelope("smtp")
    whole = prepare(raw, envelope)
    parts = prepare(split_randomly(raw, rng), envelope)
    assert (parts.size, parts.sha256, parts.content_hash, parts.message_id) == \
           (whole.size, whole.sha256, whole.content_hash, whole.message_id)
    assert whole.sha256 == hashlib.sha256(raw).hexdigest()
    assert whole.content_hash == reference_hash(raw)
    assert whole.message_id == header_message_id(raw) == "<p@example.org>"
