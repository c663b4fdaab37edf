"""Corpus report: every message of the shared corpora through the real ingest, counted per outcome and defect.

Not part of the pipeline: a measuring aid for the hostile-input work (issue 5). It builds a throwaway
installation (SQLite on tmpfs when available, so fsync does not dominate), runs `mail2ticket ingest` once with
every corpus file, and prints

* outcomes: done / ignored / quarantined (plus duplicates and empty files that were never stored),
* the reasons of ignored and quarantined messages (grouped),
* defect types recorded by the parser (how many messages carry each),
* the parse guard's cost: in-process parse+classify vs. the same work through the parse worker.

Usage::

    .venv/bin/python bench/corpus_report.py [CORPORA_DIR] [--markdown]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import io
import json
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import select

from mail2ticket.cli.main import main as cli_main
from mail2ticket.db.engine import make_engine, make_sessionmaker, unit_of_work
from mail2ticket.db.models import InboundMessage
from mail2ticket.outcomes import Quarantine
from mail2ticket.parse import Limits
from mail2ticket.parse_guard import ParseGuard, ParseJob, analyse

_DEFAULT_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "corpora"
_SKIP_SUFFIXES = {".json", ".md", ".xml", ".yml", ".yaml", ".py"}
CONFIG = """\
[daemon]
database_url = "sqlite:///{root}/m2t.db"
data_dir = "{root}/data"
domain = "stadt.example"
log_level = "error"
[smtp_out]
delivery = "folder"
folder = "{root}/outbox"
[[queue]]
name = "buergerbuero"
address = "buergerbuero@stadt.example"
"""


def message_files(root: Path) -> list[Path]:
    return [p for p in sorted(root.rglob("*")) if p.is_file() and p.suffix.lower() not in _SKIP_SUFFIXES
            and "LICENSE" not in p.name and "expected" not in p.relative_to(root).parts]


def reason_group(reason: str | None) -> str:
    """Reasons without the variable parts (addresses, numbers), so they can be counted."""
    text = re.sub(r"\(.*\)", "(…)", reason or "")
    return re.sub(r"\d+", "N", text)[:90]


def run_ingest(files: list[Path], work: Path) -> tuple[list[dict[str, object]], float]:
    config = work / "m2t.toml"
    config.write_text(CONFIG.format(root=work), encoding="utf-8")
    out = io.StringIO()
    started = time.perf_counter()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        cli_main(["--config", str(config), "ingest", "--json", *map(str, files)])
    return json.loads(out.getvalue()), time.perf_counter() - started


def guard_overhead(files: list[Path]) -> tuple[float, float, int]:
    """Median milliseconds per message: in-process analyse vs. through the parse worker (same work, once each).

    Medians, interleaved per message, so other load on the machine shifts both sides alike.
    """
    raws = [p.read_bytes() for p in files]
    guard = ParseGuard(cpu_seconds=10)
    guard.analyse(b"Subject: warm-up\n\nx\n", Limits(), envelope_from=None)
    inproc: list[float] = []
    guarded: list[float] = []
    for raw in raws:
        runners: tuple[tuple[list[float], Callable[[bytes], object]], ...] = (
            (inproc, lambda r: analyse(ParseJob(Limits(), None, (), (), 10), r)),
            (guarded, lambda r: guard.analyse(r, Limits(), envelope_from=None)))
        for sink, run in runners:
            started = time.perf_counter()
            with contextlib.suppress(Quarantine):
                run(raw)
            sink.append((time.perf_counter() - started) * 1000)
    guard.close()
    return statistics.median(inproc), statistics.median(guarded), len(raws)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", type=Path, default=_DEFAULT_ROOT)
    args = parser.parse_args()
    files = message_files(args.root)
    shm = Path("/dev/shm")
    work = Path(tempfile.mkdtemp(prefix="m2t-corpus-", dir=shm if shm.is_dir() else None))
    try:
        entries, seconds = run_ingest(files, work)
        engine = make_engine(f"sqlite:///{work}/m2t.db")
        with unit_of_work(make_sessionmaker(engine)) as session:
            rows = list(session.scalars(select(InboundMessage)))
        engine.dispose()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    outcomes = collections.Counter(str(r.state) for r in rows)
    reasons = collections.Counter(f"{r.state}: {reason_group(r.reason)}" for r in rows if str(r.state) != "done")
    defects = collections.Counter(d.split(":")[0] for r in rows for d in dict.fromkeys(r.defects or []))
    kinds = collections.Counter(r.classification or "unclassified" for r in rows)
    duplicates = sum(1 for e in entries if e.get("duplicate"))
    print(f"files: {len(files)}, messages read: {len(entries) + 0}, stored rows: {len(rows)}, "
          f"duplicates of a stored row: {duplicates}, ingest wall time: {seconds:.1f} s "
          f"({seconds * 1000 / max(1, len(entries)):.1f} ms/message)")
    print("\n| outcome | messages |\n|---|---|")
    for name, count in outcomes.most_common():
        print(f"| {name} | {count} |")
    print("\n| classification | messages |\n|---|---|")
    for name, count in kinds.most_common():
        print(f"| {name} | {count} |")
    print("\n| reason (ignored / quarantined) | messages |\n|---|---|")
    for name, count in reasons.most_common(25):
        print(f"| {name} | {count} |")
    print("\n| parser defect | messages |\n|---|---|")
    for name, count in defects.most_common():
        print(f"| {name} | {count} |")
    inproc, guarded, count = guard_overhead(files)
    print(f"\nparse+classify over {count} files (median): in-process {inproc:.2f} ms/message, through the parse "
          f"worker {guarded:.2f} ms/message (overhead {guarded - inproc:+.2f} ms)")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
