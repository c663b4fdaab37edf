"""The memory benchmark tells a replaced parse worker from the two the daemon starts with.

It counted every worker pid it saw beyond the first as a replacement, so each run since the daemon has had two
parse lanes noted "the parse worker was replaced 1 time(s)" when none was.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from bench.memory import ChildPeaks


def _stand_in() -> subprocess.Popen[bytes]:
    """A child whose command line names the parse worker, as ChildPeaks recognises one."""
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "mail2ticket.parse_worker"])


def _seen(peaks: ChildPeaks, pids: set[int]) -> None:
    deadline = time.monotonic() + 10
    while not pids <= set(peaks.workers()):  # a child shows its own command line only once it has exec'd
        assert time.monotonic() < deadline, "stand-in workers never appeared in /proc"
        time.sleep(0.02)


@pytest.fixture
def children() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        proc.kill()
        proc.wait()


def test_the_workers_running_at_the_start_are_not_replacements(children: list[subprocess.Popen[bytes]]) -> None:
    children.extend([_stand_in(), _stand_in()])
    _seen(ChildPeaks(os.getpid()), {proc.pid for proc in children})
    with ChildPeaks(os.getpid()) as peaks:
        peaks.sample()
        assert len(peaks.peak_kb) == 2
        assert peaks.replaced == 0

        children[0].kill()
        children[0].wait()
        children.append(_stand_in())
        _seen(peaks, {children[-1].pid})
        peaks.sample()
        assert peaks.replaced == 1
