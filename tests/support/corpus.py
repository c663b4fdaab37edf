"""Access to the shared real-world mail corpora for tests marked ``@pytest.mark.corpus``.

The corpora live beside the repository (``<repo>/../shared/corpora``, see its ``INDEX.md``) and are
never copied into it.  Locally a missing folder skips the test; in CI (``CI=true``) it fails the
test, so a CI run can never pass by silently skipping the corpus checks.
"""

from __future__ import annotations

import email
import email.policy
import os
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest

__all__ = ["CORPORA_ROOT", "all_corpus_mails", "corpus_dir", "iter_messages", "load_message"]

CORPORA_ROOT = Path(__file__).resolve().parents[2].parent / "shared" / "corpora"

# Files in the corpus folders that are not messages (licences, READMEs, oracle files).
_NOT_MESSAGES = {".json", ".md", ".xml", ".yml", ".yaml", ".py"}


def corpus_dir(*parts: str) -> Path:
    """Path to ``shared/corpora[/parts...]``; skip the test if missing locally, fail it in CI."""
    path = CORPORA_ROOT.joinpath(*parts)
    if path.exists():
        return path
    message = f"mail corpus not found: {path}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


def load_message(path: Path) -> EmailMessage:
    """Parse one corpus file the way the daemon does (``policy.default``)."""
    msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def iter_messages(folder: Path) -> Iterator[Path]:
    """Every message-like file below ``folder``, sorted (licences, READMEs and oracles left out)."""
    for path in sorted(folder.rglob("*")):
        if (
            path.is_file()
            and path.suffix.lower() not in _NOT_MESSAGES
            and "LICENSE" not in path.name
            and "expected" not in path.relative_to(folder).parts
        ):
            yield path


def all_corpus_mails() -> list[tuple[str, bytes]]:
    """Every corpus file as stored whole, plus each message of the mbox and maildir files on its own."""
    from mail2ticket.ingress.files import iter_path

    mails: list[tuple[str, bytes]] = []
    for path in iter_messages(corpus_dir()):
        data = path.read_bytes()
        mails.append((str(path), data))
        items = list(iter_path(path))
        if len(items) != 1 or bytes(items[0].data) != data:
            mails += [(item.origin, bytes(item.data)) for item in items]
    return mails
