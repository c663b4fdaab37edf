"""The benchmarks' peak RSS of a command is that command's own, whatever the size of the benchmark process.

Linux keeps the peak RSS of the image a process replaced at exec (the forking parent's, under vfork the parent
itself) in the peak it reports. The import benchmark, started from a harness that had grown to ~670 MB in a full
run, reported that as the import's peak.
"""

from __future__ import annotations

import sys
from pathlib import Path

from bench.harness import run_child_rss


def test_a_childs_peak_rss_does_not_include_the_benchmark_process(tmp_path: Path) -> None:
    ballast = bytearray(400 << 20)
    ballast[::4096] = b"\x01" * len(range(0, len(ballast), 4096))  # resident, not just reserved
    run = run_child_rss([sys.executable, "-c", "pass"], stdout_path=tmp_path / "out")
    assert run.returncode == 0
    assert run.max_rss_mb < 100, f"a bare interpreter reported {run.max_rss_mb:.0f} MB"
    del ballast


def test_the_peak_covers_what_the_command_itself_allocates(tmp_path: Path) -> None:
    run = run_child_rss([sys.executable, "-c", "b = bytearray(200 << 20); b[::4096] = b'x' * len(b[::4096])"],
                        stdout_path=tmp_path / "out")
    assert run.returncode == 0
    assert 200 <= run.max_rss_mb < 400


def test_the_exit_status_and_output_of_the_command_are_kept(tmp_path: Path) -> None:
    run = run_child_rss([sys.executable, "-c", "import sys; print('hallo'); sys.exit(3)"],
                        stdout_path=tmp_path / "out")
    assert run.returncode == 3
    assert run.stdout.strip() == "hallo"
