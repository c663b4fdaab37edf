"""Benchmark 3, backlog import: an mbox of 50,000 corpus mails through the CLI, end to end.

Uses `mail2ticket import --archive MBOX` when that command exists (a backlog keeps its dates and sends no
acknowledgements). Until then it measures the equivalent two steps:
`mail2ticket ingest --queue-only MBOX` (durable intake of every message) and `python -m bench.drain`
(the real Processor until nothing is left), each as its own process; the total is their sum and the peak
RSS is the larger of the two (os.wait4 rusage of each child and its parse workers, taken in a small launcher,
`peak_rss.py`, so that the benchmark driver's own peak is not counted). Floor: reading
the same mbox with the `mailbox` module and parsing each message with `email` policy.default, in a child
process of its own. The mbox is generated once per (N, seed) and cached in /tmp.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bench.corpus import iter_corpus, write_mbox
from bench.harness import (
    Check,
    Ctx,
    Outcome,
    StateProbe,
    mail2ticket,
    make_app,
    rounded,
    run_child_rss,
    say,
    spy_argv,
)

NAME = "import"
CACHE = Path("/tmp/m2t-bench-cache")
CORPUS_VERSION = 1
FLOOR = ("import email, email.policy, mailbox, sys\n"
         "box = mailbox.mbox(sys.argv[1], factory=None, create=False)\n"
         "n = 0\n"
         "for key in box.iterkeys():\n"
         "    email.message_from_bytes(box.get_bytes(key), policy=email.policy.default); n += 1\n"
         "print(n)\n")


def corpus_mbox(n: int, seed: int) -> Path:
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"corpus-{n}-{seed}-v{CORPUS_VERSION}.mbox"
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        count, size = write_mbox(tmp, iter_corpus(n, seed))
        tmp.replace(path)
        say(f"  generated {path} ({count} messages, {size / 1e9:.2f} GB)")
    return path


def import_available(app_argv: list[str]) -> bool:
    proc = subprocess.run([*app_argv, "import", "--help"], capture_output=True, text=True, check=False)
    return proc.returncode == 0


def run(ctx: Ctx) -> Outcome:
    n = ctx.size("import", 50_000, 500)
    mbox = corpus_mbox(n, ctx.seed)
    work = ctx.dir("import")
    floor = run_child_rss([sys.executable, "-c", FLOOR, str(mbox)], stdout_path=work / "floor.out", timeout=7200)
    say(f"  floor (mailbox + email parse): {floor.seconds:.1f} s, {n / floor.seconds:.0f} msg/s")
    with ctx.backend.database(work) as url:
        app = make_app(work, url)
        base = mail2ticket(app)
        steps = []
        if import_available(base):
            via = "mail2ticket import --archive"
            profile = ctx.profile_dir / f"pyspy-import-{ctx.backend.name}.txt" if ctx.profile_dir else None
            steps.append(("import", run_child_rss(spy_argv([*base, "import", "--archive", str(mbox)], profile),
                                                  stdout_path=work / "import.out", timeout=7200)))
            say(f"  import: {steps[-1][1].seconds:.1f} s, peak RSS {steps[-1][1].max_rss_mb:.0f} MB")
        else:
            via = "mail2ticket ingest --queue-only + bench.drain (no `import` command yet)"
            steps.append(("ingest", run_child_rss([*base, "ingest", "--queue-only", str(mbox)],
                                                  stdout_path=work / "ingest.out", timeout=7200)))
            say(f"  ingest --queue-only: {steps[-1][1].seconds:.1f} s, peak RSS {steps[-1][1].max_rss_mb:.0f} MB")
            steps.append(("drain", run_child_rss([sys.executable, "-m", "bench.drain", "--config",
                                                  str(app.config_path)], stdout_path=work / "drain.out",
                                                 timeout=7200)))
            say(f"  drain: {steps[-1][1].seconds:.1f} s, peak RSS {steps[-1][1].max_rss_mb:.0f} MB "
                f"{steps[-1][1].stdout.strip()}")
        for name, step in steps:
            if step.returncode != 0:
                raise RuntimeError(f"{name} exited {step.returncode}: {step.stderr[-2000:]}")
        probe = StateProbe(url)
        states = probe.inbound()
        tickets = probe.scalar("SELECT count(*) FROM ticket")
        probe.close()
    total = sum(step.seconds for _, step in steps)
    peak = max(step.max_rss_mb for _, step in steps)
    out = Outcome(NAME, (
        f"mbox of N={n} corpus mails ({mbox.stat().st_size / 1e9:.2f} GB) via {via}; wall time of the child "
        f"processes, peak RSS from os.wait4 in a small launcher (the driver's peak excluded). Floor = mailbox iteration + email parse of the same mbox in a child. "
        f"1 round."))
    out.figures = {"n": n, "via": via, "seconds": rounded(total), "msg_per_s": rounded(n / total),
                   "peak_rss_mb": rounded(peak), "floor_seconds": rounded(floor.seconds),
                   "floor_msg_per_s": rounded(n / floor.seconds), "ratio_to_floor": rounded(floor.seconds / total),
                   "steps": {name: {"seconds": rounded(s.seconds), "peak_rss_mb": rounded(s.max_rss_mb)}
                             for name, s in steps},
                   "states": states, "tickets": tickets}
    if steps[-1][0] == "drain":
        try:
            out.figures["drain"] = json.loads(steps[-1][1].stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            pass
    out.rounds = [out.figures["steps"]]
    out.notes.append(f"measured via {via}")
    if ctx.profile_dir is not None and steps[0][0] == "import":
        out.notes.append("run under py-spy (--profile): the time is inflated and the peak RSS includes py-spy's")
    limit = 180 * n / 50_000
    out.checks = [Check(f"import of {n:,} messages < {limit:.0f} s" + (" (scaled from 50,000 in 3 min)" if n != 50_000 else ""),
                        f"{total:.0f} s ({n / total:.0f} msg/s, peak RSS {peak:.0f} MB)",
                        total < limit if ctx.backend.name == "sqlite" else None)]
    return out
