"""`python -m bench`: run the benchmark suite and write bench/results/<timestamp>.json and latest.json.

    python -m bench                         # everything on SQLite, full sizes
    python -m bench --quick                 # small N, short idle window (CI smoke run)
    python -m bench --only rules,processing # a subset (names: rules processing smtp memory import idle)
    python -m bench --postgres postgresql://postgres@127.0.0.1:5432/postgres   # also on PostgreSQL
    python -m bench --size smtp=2000 --rounds 1 --profile                       # custom sizes, profiles

Each benchmark prints its method, the per-round figures, the medians and the ratio to its floor; the
targets of issue 8 are checked on SQLite and summarised at the end (exit code 0 even when a target is
missed: the benchmark measures, it does not gate).
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from bench.corpus import DEFAULT_SEED
from bench.harness import Backend, Ctx, Outcome, dump_json, git_describe, say

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"

# name -> (module, runs once rather than per backend)
BENCHMARKS: dict[str, tuple[str, bool]] = {
    "rules": ("bench.routing", True),
    "processing": ("bench.processing", False),
    "smtp": ("bench.smtp_ingest", False),
    "memory": ("bench.memory", False),
    "import": ("bench.backlog", False),
    "idle": ("bench.idle", False),
    "multi": ("bench.multi_instance", False),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small N and short windows (smoke run)")
    parser.add_argument("--only", action="append", default=[], help="comma-separated benchmark names")
    parser.add_argument("--postgres", metavar="URL", help="also run on PostgreSQL (server URL; throw-away DBs)")
    parser.add_argument("--size", action="append", default=[], metavar="KEY=N",
                        help="override a size: smtp, smtp_paced, smtp_clients, processing, import, memory, "
                             "rules_mails, idle_seconds")
    parser.add_argument("--rounds", type=int, default=None, help="rounds per benchmark (default 3, quick 1)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--profile", action="store_true", help="write py-spy/pyinstrument profiles to the results dir")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results directory (default bench/results)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (databases, logs)")
    args = parser.parse_args(argv)
    names = [n.strip() for item in args.only for n in item.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    args.names = names or list(BENCHMARKS)
    try:
        args.sizes = {k: int(v) for k, v in (item.split("=", 1) for item in args.size)}
    except ValueError:
        parser.error("--size takes KEY=N, e.g. --size smtp=2000")
    return args


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
            "hostname": platform.node()}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = dt.datetime.now(dt.UTC)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    workdir = Path(tempfile.mkdtemp(prefix="m2t-bench-", dir="/tmp"))
    profile_dir = args.out / f"profiles-{stamp}" if args.profile else None
    if profile_dir:
        profile_dir.mkdir(parents=True, exist_ok=True)
    backends = [Backend("sqlite")] + ([Backend("postgresql", args.postgres)] if args.postgres else [])
    report: dict[str, Any] = {
        "started": started.isoformat(), "quick": args.quick, "argv": sys.argv[1:], "machine": machine(),
        "git": git_describe(REPO), "seed": args.seed, "results": {b.name: {} for b in backends}, "failures": [],
    }
    paths = [args.out / f"{stamp}.json", args.out / "latest.json"]
    say(f"mail2ticket benchmarks {'(quick) ' if args.quick else ''}— work dir {workdir}")
    failed = False
    try:
        for backend in backends:
            for name in args.names:
                module_name, once = BENCHMARKS[name]
                if once and backend is not backends[0]:
                    continue
                ctx = Ctx(backend=backend, quick=args.quick, workdir=workdir, seed=args.seed,
                          profile_dir=profile_dir, sizes=args.sizes, rounds_override=args.rounds)
                say(f"\n== {name} [{backend.name}] ==")
                t0, load0 = time.monotonic(), os.getloadavg()
                try:
                    outcome: Outcome = importlib.import_module(module_name).run(ctx)
                except Exception as exc:  # noqa: BLE001 - one broken benchmark must not lose the others' figures
                    failed = True
                    say(f"  FAILED: {type(exc).__name__}: {exc}")
                    report["failures"].append({"benchmark": name, "backend": backend.name,
                                               "error": f"{type(exc).__name__}: {exc}",
                                               "traceback": traceback.format_exc()})
                else:
                    say(f"  method: {outcome.method}")
                    for check in outcome.checks:
                        verdict = {True: "PASS", False: "FAIL", None: "n/a"}[check.passed]
                        say(f"  [{verdict}] {check.target}: {check.measured}")
                    for note in outcome.notes:
                        say(f"  note: {note}")
                    entry = outcome.as_dict()
                    entry["wall_seconds"] = round(time.monotonic() - t0, 1)
                    # Other work on the machine inflates wall-clock figures; the load average shows it.
                    entry["loadavg_before_after"] = [round(load0[0], 2), round(os.getloadavg()[0], 2)]
                    report["results"][backend.name][name] = entry
                for path in paths:
                    dump_json(path, report)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    report["finished"] = dt.datetime.now(dt.UTC).isoformat()
    for path in paths:
        dump_json(path, report)
    say(f"\nresults: {paths[0]}")
    _summary(report)
    return 1 if failed else 0


def _summary(report: dict[str, Any]) -> None:
    say("\n== summary ==")
    for backend, results in report["results"].items():
        for name, entry in results.items():
            for check in entry["checks"]:
                verdict = {True: "PASS", False: "FAIL", None: "n/a "}[check["passed"]]
                say(f"  {verdict}  {backend:10s} {name:10s} {check['target']}: {check['measured']}")
    for failure in report["failures"]:
        say(f"  ERROR {failure['backend']:10s} {failure['benchmark']:10s} {failure['error']}")


if __name__ == "__main__":
    sys.exit(main())
