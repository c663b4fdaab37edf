"""Smoke test of the benchmark suite: `python -m bench --quick` runs and writes its JSON (no timing asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_bench(out: Path, *args: str) -> dict[str, object]:
    proc = subprocess.run([sys.executable, "-m", "bench", "--quick", "--out", str(out), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    latest = json.loads((out / "latest.json").read_text(encoding="utf-8"))
    stamped = [p for p in out.glob("*.json") if p.name != "latest.json"]
    assert len(stamped) == 1
    assert json.loads(stamped[0].read_text(encoding="utf-8")) == latest
    return dict(latest)


def test_rules_benchmark_runs_and_writes_json(tmp_path: Path) -> None:
    """`python -m bench --quick --only rules` exits 0 and records per-rule-count costs and the 1,000-rule check."""
    report = run_bench(tmp_path, "--only", "rules", "--size", "rules_mails=20")
    rules = report["results"]["sqlite"]["rules"]  # type: ignore[index]
    assert set(rules["figures"]["us_per_msg"]) == {"0", "10", "100", "1000"}
    assert rules["checks"][0]["target"].startswith("1,000 rules")
    assert report["failures"] == []


@pytest.mark.slow
def test_processing_benchmark_runs_and_writes_json(tmp_path: Path) -> None:
    """The processing benchmark stores mail with the real CLI, drains it and reports rate and floor in the JSON."""
    report = run_bench(tmp_path, "--only", "processing", "--size", "processing=20")
    processing = report["results"]["sqlite"]["processing"]  # type: ignore[index]
    assert processing["rounds"][0]["processed"] == 20
    assert processing["figures"]["floor_msg_per_s"] > 0
    assert report["failures"] == []


@pytest.mark.slow
def test_smtp_benchmark_reports_who_holds_the_write_lock(tmp_path: Path) -> None:
    """The SMTP benchmark records, from the daemon's /metrics, how much of a round each kind of thread held
    SQLite's one write lock, and how long the daemon waited for a CPU: the figures that show whether the lock or
    the CPU limits the rate."""
    report = run_bench(tmp_path, "--only", "smtp", "--size", "smtp=30", "--size", "smtp_paced=20",
                       "--size", "smtp_clients=2", "--rounds", "1")
    smtp = report["results"]["sqlite"]["smtp"]  # type: ignore[index]
    lock = smtp["rounds"][0]["daemon"]["write_lock"]
    assert {"process", "intake-commit"} <= set(lock) and lock["busy"] > 0
    assert smtp["figures"]["write_lock_busy"] == lock["busy"]
    waited = smtp["rounds"][0]["daemon"]["cpu_wait"]  # how long the daemon was ready to run without a CPU
    assert set(waited) == {"daemon_ms", "parse_workers_ms", "machine_pressure"}
    assert all(value is None or value >= 0 for value in waited.values())
    assert smtp["figures"]["daemon_cpu_wait_ms_per_msg"] == waited["daemon_ms"]
    assert report["failures"] == []


@pytest.mark.slow
def test_smtp_benchmark_paces_a_fresh_daemon_in_every_round(tmp_path: Path) -> None:
    """The latency targets are judged on the median of several paced rounds, like every other figure: one round's
    p99 is decided by its slowest 1 % of mails and spread by tens of milliseconds from run to run."""
    report = run_bench(tmp_path, "--only", "smtp", "--size", "smtp=10", "--size", "smtp_paced=10",
                       "--size", "smtp_clients=2", "--rounds", "2")
    smtp = report["results"]["sqlite"]["smtp"]  # type: ignore[index]
    paced = [r["paced"] for r in smtp["rounds"]]
    assert len(paced) == 2 and all(p["acks"] > 0 for p in paced)
    p99s = sorted(p["p99_ms"] for p in paced)
    assert p99s[0] <= smtp["figures"]["paced"]["p99_ms"] <= p99s[1]
    checked = next(c for c in smtp["checks"] if c["target"].startswith("p99 DATA→250"))
    assert checked["measured"] == f"{smtp['figures']['paced']['p99_ms']} ms"
