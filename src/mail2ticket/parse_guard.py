"""Time- and memory-bounded parse: parse and classify run in a persistent worker process.

Place in the pipeline: the orchestrator calls `ParseGuard.analyse` instead of `parse` + `classify`. A hostile
message can make the stdlib parser run for minutes (quadratic header folding, gh-136063), recurse until the C
stack ends, or eat memory. None of that may stop the daemon, and a thread cannot be interrupted, so the work
runs in a child process that the parent can kill:

| in the worker                        | the parent sees               | result                               |
|--------------------------------------|-------------------------------|--------------------------------------|
| parse + classify succeed             | a pickled `Analysed`          | returned (the parse happens once)    |
| `Quarantine` or any exception        | ("quarantine", reason)        | `Quarantine(reason)`                 |
| CPU budget spent (RLIMIT_CPU soft)   | SIGXCPU kills the worker      | `Quarantine`; worker replaced        |
| memory budget spent (RLIMIT_AS)      | MemoryError or worker death   | `Quarantine`; worker replaced        |
| no answer within the wall-clock cap  | —                             | worker killed, `Quarantine`          |
| worker cannot be started at all      | —                             | `ParseWorkerUnavailable` (transient) |

The CPU limit is the real budget (deterministic, unaffected by machine load): before each job the worker sets
its soft RLIMIT_CPU to the CPU time used so far plus the budget. The wall-clock cap (3 × budget + 5 s) only
catches a worker that hangs without using CPU. The worker is started once and reused, so the common case
costs one pipe round trip and a pickle (about 0.3 ms per message; see bench/corpus_report.py).

The protocol is length-prefixed pickles over the worker's stdin/stdout. Pickle is safe here: both ends are
our own code, and the mail only ever appears as data inside objects we built.
"""

from __future__ import annotations

import math
import os
import pickle
import resource
import select
import signal
import struct
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO, Any

import structlog

from mail2ticket.classify import Classification, classify
from mail2ticket.headers import strip_control_headers
from mail2ticket.outcomes import Quarantine
from mail2ticket.parse import Limits, ParsedMail, parse

log = structlog.get_logger("mail2ticket.parse_guard")

_HEADER = struct.Struct("!Q")
_HELLO = b"m2t-parse-worker/1\n"
STARTUP_TIMEOUT = 60.0
MIN_MEMORY_BYTES = 1 << 30


class ParseWorkerUnavailable(Exception):
    """The parse worker process could not be started or talked to; retry the message later."""


@dataclass(frozen=True, slots=True)
class ParseJob:
    raw: bytes
    limits: Limits
    envelope_from: str | None
    envelope_to: tuple[str, ...]
    noreply_patterns: tuple[str, ...]
    cpu_seconds: float


@dataclass(frozen=True, slots=True)
class Analysed:
    """The parsed mail (control headers already stripped from `parsed.msg`) and its classification."""

    parsed: ParsedMail
    classification: Classification


def analyse(job: ParseJob) -> Analysed:
    """Parse, strip inbound control headers, classify: the pure part of processing (raises only Quarantine)."""
    parsed = parse(job.raw, job.limits)
    try:
        strip_control_headers(parsed.msg)
    except Exception as exc:
        raise Quarantine(f"unparseable: cannot strip control headers ({type(exc).__name__})") from exc
    classification = classify(parsed.msg, job.envelope_from, job.envelope_to, job.noreply_patterns)
    return Analysed(parsed, classification)


def memory_budget(limits: Limits) -> int:
    """Address-space cap for the worker: generous for a maximal legitimate mail, fatal for a decompression bomb."""
    return max(MIN_MEMORY_BYTES, 40 * limits.max_message_size)


class ParseGuard:
    """Runs `analyse` in a reusable worker process under CPU, memory and wall-clock budgets (thread-safe)."""

    def __init__(self, cpu_seconds: float = 10.0) -> None:
        self.cpu_seconds = cpu_seconds
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None
        self.restarts = 0

    def analyse(self, raw: bytes, limits: Limits, *, envelope_from: str | None, envelope_to: Sequence[str] = (),
                noreply_patterns: Sequence[str] = ()) -> Analysed:
        job = ParseJob(raw, limits, envelope_from, tuple(envelope_to), tuple(noreply_patterns), self.cpu_seconds)
        payload = pickle.dumps(job, protocol=pickle.HIGHEST_PROTOCOL)
        with self._lock:
            proc = self._ensure_worker(limits)
            kind, value = self._exchange(proc, payload)
        if kind == "ok":
            assert isinstance(value, Analysed)
            return value
        raise Quarantine(str(value))

    def close(self) -> None:
        with self._lock:
            self._stop_worker()

    # --- worker management --------------------------------------------------------------------------------

    def _ensure_worker(self, limits: Limits) -> subprocess.Popen[bytes]:
        if self._proc is not None and self._proc.poll() is None:
            return self._proc
        self._stop_worker()
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "mail2ticket.parse_guard", str(memory_budget(limits))],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, close_fds=True,
            )
        except OSError as exc:
            raise ParseWorkerUnavailable(f"cannot start the parse worker: {exc}") from exc
        self._proc = proc
        self._finalizer = weakref.finalize(self, _kill, proc)
        assert proc.stdout is not None
        try:  # the worker says hello once its imports are done: a failure here is ours, not the mail's
            hello = _read_exact(proc.stdout, len(_HELLO), time.monotonic() + STARTUP_TIMEOUT)
        except (TimeoutError, EOFError, OSError) as exc:
            self._stop_worker()
            raise ParseWorkerUnavailable(f"the parse worker did not start ({type(exc).__name__})") from exc
        if hello != _HELLO:
            self._stop_worker()
            raise ParseWorkerUnavailable("the parse worker answered with garbage at startup")
        return proc

    def _stop_worker(self) -> None:
        if self._finalizer is not None:
            self._finalizer()
        self._proc = None
        self._finalizer = None

    def _exchange(self, proc: subprocess.Popen[bytes], payload: bytes) -> tuple[str, object]:
        assert proc.stdin is not None and proc.stdout is not None
        deadline = time.monotonic() + 3 * self.cpu_seconds + 5
        try:
            proc.stdin.write(_HEADER.pack(len(payload)) + payload)
            proc.stdin.flush()
            size = _HEADER.unpack(_read_exact(proc.stdout, _HEADER.size, deadline))[0]
            answer = pickle.loads(_read_exact(proc.stdout, size, deadline))
        except TimeoutError:
            self._breach("wall_clock")
            return "quarantine", f"parse budget exceeded: no result within {3 * self.cpu_seconds + 5:.0f} s"
        except (OSError, EOFError, struct.error, pickle.UnpicklingError) as exc:
            status = self._breach("worker_died")
            if status in (-signal.SIGXCPU, -signal.SIGKILL):
                return "quarantine", f"parse budget exceeded: more than {self.cpu_seconds:g} s of CPU time"
            return "quarantine", f"unparseable: the parse worker died ({type(exc).__name__}, exit status {status})"
        kind, value = answer
        if kind == "recycle":  # the worker hit its memory cap: its heap is suspect, start a fresh one
            self._breach("memory")
            kind = "quarantine"
        return str(kind), value

    def _breach(self, what: str) -> int | None:
        proc = self._proc
        status: int | None = None
        if proc is not None:
            status = proc.poll()
            if status is None:
                proc.kill()
                status = proc.wait()
        self._stop_worker()
        self.restarts += 1
        log.warning("parse_worker_replaced", cause=what, exit_status=status)
        return status


def _kill(proc: subprocess.Popen[bytes]) -> None:
    for stream in (proc.stdin, proc.stdout):
        try:
            if stream is not None:
                stream.close()
        except OSError:
            pass
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def _read_exact(stream: IO[bytes], size: int, deadline: float) -> bytes:
    fd = stream.fileno()
    chunks: list[bytes] = []
    remaining = size
    while remaining:
        timeout = deadline - time.monotonic()
        if timeout <= 0:
            raise TimeoutError
        ready, _, _ = select.select([fd], [], [], timeout)
        if not ready:
            raise TimeoutError
        chunk = os.read(fd, min(remaining, 1 << 20))
        if not chunk:
            raise EOFError("parse worker closed its pipe")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


# --- the worker process ---------------------------------------------------------------------------------------


def _cpu_used() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _run_job(job: ParseJob) -> tuple[str, object]:
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    soft = math.ceil(_cpu_used() + job.cpu_seconds)
    resource.setrlimit(resource.RLIMIT_CPU, (soft if hard == resource.RLIM_INFINITY else min(soft, hard), hard))
    try:
        return "ok", analyse(job)
    except Quarantine as outcome:
        if "out of memory" in outcome.reason:
            return "recycle", "parse budget exceeded: out of memory"
        return "quarantine", outcome.reason
    except MemoryError:
        return "recycle", "parse budget exceeded: out of memory"
    except Exception as exc:  # noqa: BLE001 - classify/strip bugs must quarantine, never kill the worker
        return "quarantine", f"unparseable: {type(exc).__name__}"


def worker_main(memory_bytes: int) -> int:
    """Serve jobs from stdin until it closes; each answer is written before the next job is read."""
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # SIGXCPU would otherwise dump a core with mail in it
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C reaches the parent; it decides
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    stdout.write(_HELLO)
    stdout.flush()
    while True:
        head = stdin.read(_HEADER.size)
        if len(head) < _HEADER.size:
            return 0
        body = stdin.read(_HEADER.unpack(head)[0])
        job = pickle.loads(body)
        answer = _run_job(job)
        try:
            data = pickle.dumps(answer, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:  # noqa: BLE001 - e.g. a pathological object graph that cannot be pickled
            data = pickle.dumps(("quarantine", f"unparseable: result not transferable ({type(exc).__name__})"))
        stdout.write(_HEADER.pack(len(data)) + data)
        stdout.flush()
        if answer[0] == "recycle":
            return 0


if __name__ == "__main__":
    # Re-import under the real module name, so pickled classes are `mail2ticket.parse_guard.X`, not `__main__.X`.
    from mail2ticket import parse_guard as _module  # noqa: PLW0406 - on purpose, see above

    sys.exit(_module.worker_main(int(sys.argv[1])))
