"""`python bench/peak_rss.py RESULT -- COMMAND...`: run COMMAND and write its peak RSS (KiB) to RESULT.

Linux counts the peak RSS of the image a process replaced at exec in the peak it reports: a command spawned
straight from the benchmark process reports at least that process's own peak (a full run's harness grows to
~670 MB). Spawned from this small interpreter instead, the command's peak (its waited-for children included)
starts at ~10 MB. Run by path, so nothing of the benchmark is imported here. COMMAND's exit status is passed on,
a signal as the same signal; SIGTERM and SIGINT are passed to COMMAND.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys


def main() -> None:
    result, separator, *argv = sys.argv[1:]
    assert separator == "--" and argv, __doc__
    proc = subprocess.Popen(argv)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda number, _frame: proc.send_signal(number))
    _, status, usage = os.wait4(proc.pid, 0)
    with open(result, "w", encoding="ascii") as out:
        out.write(str(usage.ru_maxrss))
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    sys.exit(code)


if __name__ == "__main__":
    main()
