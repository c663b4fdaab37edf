"""Print how ``mail2ticket.classify`` sorts every message of the shared corpora (counts per kind).

Not part of the pipeline: a measuring aid for the classify stage.  Usage::

    .venv/bin/python bench/corpus_classify_report.py [CORPORA_DIR] [--list KIND FOLDER]

Messages that ``email.message_from_bytes(..., policy=default)`` itself cannot parse are counted
as ``parse_error`` (the daemon quarantines those before classify ever sees them).
"""

from __future__ import annotations

import argparse
import collections
import email
import email.policy
import logging
from pathlib import Path

from mail2ticket.classify import classify

_SKIP_SUFFIXES = {".json", ".md", ".xml", ".yml", ".py"}
_DEFAULT_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "corpora"


def folder_of(path: Path, root: Path) -> str:
    """Corpus folder name, one level deeper for sisimai (bsd, dos, mac, not, ...)."""
    rel = path.relative_to(root).parts
    return "/".join(rel[:3]) if rel[0] == "sisimai-set-of-emails" and len(rel) > 3 else rel[0]


def message_files(root: Path) -> list[Path]:
    """Every message-like file below ``root`` (licences, READMEs and oracle files excluded)."""
    return [
        path
        for path in sorted(root.rglob("*"))
        if path.is_file()
        and path.suffix.lower() not in _SKIP_SUFFIXES
        and "LICENSE" not in path.name
        and "expected" not in path.parts
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", type=Path, default=_DEFAULT_ROOT)
    parser.add_argument("--list", nargs=2, metavar=("KIND", "FOLDER"), help="print files of that kind")
    args = parser.parse_args()
    logging.disable(logging.CRITICAL)
    counts: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for path in message_files(args.root):
        folder = folder_of(path, args.root)
        try:
            msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        except Exception:  # noqa: BLE001 - the daemon quarantines these before classify
            counts[folder]["parse_error"] += 1
            continue
        result = classify(msg, envelope_from=None)
        counts[folder][result.kind] += 1
        if args.list and result.kind == args.list[0] and folder == args.list[1]:
            print(path.relative_to(args.root), result.reasons)
    kinds = ["human", "auto-reply", "bounce", "list", "parse_error"]
    print(f"{'folder':38}" + "".join(f"{k:>12}" for k in kinds))
    for folder in sorted(counts):
        print(f"{folder:38}" + "".join(f"{counts[folder][k]:>12}" for k in kinds))


if __name__ == "__main__":
    main()
