"""The parse worker process: reads jobs on stdin, answers on stdout (the child side of `parse_guard`).

Each job is a pickled `ParseJob` and then the raw bytes as a frame of their own; each answer is a pickle and then
its out-of-band buffers (attachments of 64 KB and more). Before each job the worker sets its soft RLIMIT_CPU to
the CPU time used so far plus the job's budget, so a parse that runs away is ended by SIGXCPU; its address space
is capped for its whole life. A job that fails in any way is answered as a quarantine; only a dead worker is no
answer. Run as ``python -m mail2ticket.parse_worker MEMORY_BYTES``.
"""

from __future__ import annotations

import dataclasses
import math
import pickle
import resource
import signal
import sys
from typing import IO

from mail2ticket.outcomes import Quarantine
from mail2ticket._parse_frames import HEADER, HELLO
from mail2ticket.parse_guard import Analysed, ParseJob, analyse


def _cpu_used() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _run_job(job: ParseJob, raw: bytes) -> tuple[str, object]:
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    soft = math.ceil(_cpu_used() + job.cpu_seconds)
    resource.setrlimit(resource.RLIMIT_CPU, (soft if hard == resource.RLIM_INFINITY else min(soft, hard), hard))
    try:
        return "ok", analyse(job, raw)
    except Quarantine as outcome:
        if "out of memory" in outcome.reason:
            return "recycle", "parse budget exceeded: out of memory"
        return "quarantine", outcome.reason
    except MemoryError:
        return "recycle", "parse budget exceeded: out of memory"
    except Exception as exc:  # noqa: BLE001 - classify/strip bugs must quarantine, never kill the worker
        return "quarantine", f"unparseable: {type(exc).__name__}"


OUT_OF_BAND_BYTES = 64 << 10  # attachments from this size travel as raw buffers, not inside the pickle


def _out_of_band(answer: tuple[str, object]) -> tuple[str, object]:
    kind, value = answer
    if not isinstance(value, Analysed) or not any(len(a.data) >= OUT_OF_BAND_BYTES for a in value.parsed.attachments):
        return answer
    attachments = tuple(
        dataclasses.replace(a, data=pickle.PickleBuffer(a.data)) if len(a.data) >= OUT_OF_BAND_BYTES else a  # type: ignore[arg-type]
        for a in value.parsed.attachments)
    return kind, Analysed(dataclasses.replace(value.parsed, attachments=attachments), value.classification)


def _answer(stdout: IO[bytes], answer: tuple[str, object]) -> None:
    buffers: list[pickle.PickleBuffer] = []
    try:
        data = pickle.dumps(_out_of_band(answer), protocol=5, buffer_callback=buffers.append)
    except Exception as exc:  # noqa: BLE001 - e.g. a pathological object graph that cannot be pickled
        buffers = []
        data = pickle.dumps(("quarantine", f"unparseable: result not transferable ({type(exc).__name__})"))
    stdout.write(HEADER.pack(len(data)) + data + HEADER.pack(len(buffers)))
    for buffer in buffers:
        with buffer.raw() as view:
            stdout.write(HEADER.pack(view.nbytes))
            stdout.write(view)
    stdout.flush()


def worker_main(memory_bytes: int) -> int:
    """Serve jobs from stdin until it closes; each answer is written before the next job is read."""
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # SIGXCPU would otherwise dump a core with mail in it
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C reaches the parent; it decides
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    stdout.write(HELLO)
    stdout.flush()
    while True:
        head = stdin.read(HEADER.size)
        if len(head) < HEADER.size:
            return 0
        job = pickle.loads(stdin.read(HEADER.unpack(head)[0]))
        raw = stdin.read(HEADER.unpack(stdin.read(HEADER.size))[0])
        answer = _run_job(job, raw)
        del raw  # before the answer is pickled: a 25 MB mail is not held twice
        kind = answer[0]
        _answer(stdout, answer)
        del answer
        if kind == "recycle":
            return 0


if __name__ == "__main__":
    sys.exit(worker_main(int(sys.argv[1])))
