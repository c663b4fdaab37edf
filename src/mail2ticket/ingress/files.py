"""CLI ingress: raw messages from .eml files, mbox files, Maildir folders or standard input.

Yields exact bytes (mbox "From " lines removed, ">From " unescaped the way Python's mailbox module does),
never parses. The caller stores each one through intake.
"""

from __future__ import annotations

import mailbox
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


class InputError(Exception):
    """The input cannot be read as mail at all (sysexits EX_DATAERR / EX_NOINPUT)."""


@dataclass(frozen=True, slots=True)
class RawInput:
    origin: str
    data: bytes


def _is_maildir(path: Path) -> bool:
    return path.is_dir() and (path / "cur").is_dir() and (path / "new").is_dir()


def _is_mbox(path: Path) -> bool:
    """An mbox starts with a "From " line ended by LF; a bare-CR file (classic Mac) is one message."""
    with path.open("rb") as fh:
        head = fh.read(64 * 1024)
    return head.startswith(b"From ") and b"\n" in head


def _single(path: Path) -> bytes:
    """One message file; a leading mbox-style "From " envelope line (bare CR ended) is dropped."""
    data = path.read_bytes()
    if data.startswith(b"From ") and b"\n" not in data[:64 * 1024] and b"\r" in data:
        data = data.split(b"\r", 1)[1]
    return data


def iter_path(path: Path) -> Iterator[RawInput]:
    if _is_maildir(path):
        box = mailbox.Maildir(path, factory=None, create=False)
        for key in sorted(box.iterkeys()):
            yield RawInput(f"{path}:{key}", box.get_bytes(key))
        return
    if path.is_dir():
        for child in sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")):
            yield from iter_path(child)
        return
    if not path.exists():
        raise InputError(f"{path}: no such file or directory")
    if _is_mbox(path):
        mbox = mailbox.mbox(path, factory=None, create=False)
        try:
            for index, key in enumerate(mbox.iterkeys()):
                yield RawInput(f"{path}#{index + 1}", mbox.get_bytes(key))
        finally:
            mbox.close()
        return
    yield RawInput(str(path), _single(path))


def iter_inputs(paths: list[str]) -> Iterator[RawInput]:
    if not paths:
        yield RawInput("<stdin>", sys.stdin.buffer.read())
        return
    for name in paths:
        yield from iter_path(Path(name))


def count_inputs(paths: list[str]) -> int | None:
    """How many messages the paths hold (for progress bars); None when unknown (stdin)."""
    if not paths:
        return None
    total = 0
    for name in paths:
        path = Path(name)
        if _is_maildir(path):
            total += len(mailbox.Maildir(path, factory=None, create=False))
        elif path.is_file() and _is_mbox(path):
            box = mailbox.mbox(path, factory=None, create=False)
            total += len(box)
            box.close()
        elif path.is_dir():
            total += sum(1 for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        else:
            total += 1
    return total
