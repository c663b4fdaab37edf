"""The fast mbox reader used by `import` splits every mbox exactly like Python's `mailbox.mbox`."""

from __future__ import annotations

import mailbox
import random
from pathlib import Path

import pytest

from mail2ticket.ingress.files import count_inputs, iter_inputs

EDGE_CASES = [
    b"From a\nH: v\n\nbody\n\nFrom b\nX: y\n\nz\n",
    b"From a\n\nFrom b\n",
    b"From a\nFrom b\n",
    b"From a\r\nH: 1\r\n\r\nFrom b\r\nH: 2\r\n",
    b"From a\nH: v\n\n\n\nFrom b\n\n\n",
    b"From a\nH: v\n\nno newline at the end",
    b"From a\nH: v\n\n>From escaped, stays escaped\n",
]


def stdlib_split(path: Path) -> list[bytes]:
    box = mailbox.mbox(path, factory=None, create=False)
    try:
        return [box.get_bytes(key) for key in box.iterkeys()]
    finally:
        box.close()


def random_mboxes(count: int) -> list[bytes]:
    rnd = random.Random(20261125)
    pieces = [b"From x\n", b"\n", b"Subject: hi\n", b"From ", b"\r\n", b"body", b">From y\n"]
    return [b"From s\n" + b"".join(rnd.choice(pieces) for _ in range(rnd.randint(0, 12))) for _ in range(count)]


@pytest.mark.parametrize("content", EDGE_CASES + random_mboxes(300))
def test_import_reads_the_same_messages_as_the_stdlib(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "box.mbox"
    path.write_bytes(content)
    expected = stdlib_split(path)
    assert [item.data for item in iter_inputs([str(path)])] == expected
    assert count_inputs([str(path)]) == len(expected)
