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

The protocol is length-prefixed frames over the worker's stdin/stdout: a job is a pickled `ParseJob` and then
the raw bytes as a frame of their own (streamed from storage, never pickled); an answer is a pickle and then
its out-of-band buffers (attachments of 64 KB and more, read straight into the objects the parent keeps).
The worker answers with the fields of the mail, never the stdlib tree. Pickle is safe here: both ends are our
own code, and the mail only ever appears as data inside objects we built.
"""

from __future__ import annotations

import dataclasses
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
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import IO, Any

import structlog

from mail2ticket.classify import Classification, classify
from mail2ticket.headers import strip_control_headers
from mail2ticket.outcomes import Quarantine
from mail2ticket.parse import Limits, ParsedMail, parse
from mail2ticket.text.body import with_body

log = structlog.get_logger("mail2ticket.parse_guard")

_HEADER = struct.Struct("!Q")
_HELLO = b"m2t-parse-worker/1\n"
STARTUP_TIMEOUT = 60.0
MIN_MEMORY_BYTES = 1 << 30


# Returns the size of a stored message and its bytes as pieces, read lazily (see `analyse`).
RawLoader = Callable[[], tuple[int, Iterable[bytes]]]


class ParseWorkerUnavailable(Exception):
    """The parse worker process could not be started or talked to; retry the message later."""


@dataclass(frozen=True, slots=True)
class ParseJob:
    """What the worker needs besides the raw bytes (those travel as a frame of their own, not pickled)."""

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


def analyse(job: ParseJob, raw: bytes, parser: Callable[[bytes, Limits], ParsedMail] = parse) -> Analysed:
    """Parse, strip inbound control headers, classify, work out the body text: the pure part of processing
    (raises only Quarantine)."""
    parsed = parser(raw, job.limits)
    assert parsed.msg is not None
    try:
        strip_control_headers(parsed.msg)
    except Exception as exc:
        raise Quarantine(f"unparseable: cannot strip control headers ({type(exc).__name__})") from exc
    classification = classify(parsed.msg, job.envelope_from, job.envelope_to, job.noreply_patterns)
    return Analysed(with_body(parsed.without_tree()), classification)


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

    def analyse(self, raw: bytes | RawLoader, limits: Limits, *, envelope_from: str | None,
                envelope_to: Sequence[str] = (), noreply_patterns: Sequence[str] = ()) -> Analysed:
        """Parse and classify in the worker. Given a loader instead of bytes, the bytes are streamed to the worker
        piece by piece as they are read, so a 25 MB mail is never held whole in this process."""
        job = ParseJob(limits, envelope_from, tuple(envelope_to), tuple(noreply_patterns), self.cpu_seconds)
        payload = pickle.dumps(job, protocol=pickle.HIGHEST_PROTOCOL)
        with self._lock:
            proc = self._ensure_worker(limits)
            kind, value = self._exchange(proc, payload, raw)
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

    def _exchange(self, proc: subprocess.Popen[bytes], payload: bytes,
                  raw: bytes | RawLoader) -> tuple[str, object]:
        assert proc.stdin is not None and proc.stdout is not None
        deadline = time.monotonic() + 3 * self.cpu_seconds + 5
        try:
            size, pieces = raw() if callable(raw) else (len(raw), (raw,))
            _send(proc.stdin, payload, size, pieces)
            answer = _receive(proc.stdout, deadline)
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


def _send(stream: IO[bytes], payload: bytes, size: int, pieces: Iterable[bytes]) -> None:
    stream.write(_HEADER.pack(len(payload)) + payload + _HEADER.pack(size))
    sent = 0
    for piece in pieces:
        stream.write(piece)
        sent += len(piece)
    if sent != size:  # the worker would wait for the rest forever (or read our next job as mail)
        raise OSError(f"raw message changed while it was read: {sent} of {size} bytes")
    stream.flush()


def _receive(stream: IO[bytes], deadline: float) -> Any:
    """An answer: its pickle, then the out-of-band buffers (attachment bytes) it refers to."""
    size = _HEADER.unpack(_read_exact(stream, _HEADER.size, deadline))[0]
    data = _read_exact(stream, size, deadline)
    count = _HEADER.unpack(_read_exact(stream, _HEADER.size, deadline))[0]
    buffers = [_read_exact(stream, _HEADER.unpack(_read_exact(stream, _HEADER.size, deadline))[0], deadline)
               for _ in range(count)]
    # The attachments become the very bytearrays just read: no second copy of a 25 MB file in this process.
    return pickle.loads(data, buffers=buffers)


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


def _read_exact(stream: IO[bytes], size: int, deadline: float) -> bytearray:
    """Exactly `size` bytes, read straight into one buffer (no list of chunks joined into a second copy)."""
    fd = stream.fileno()
    buffer = bytearray(size)
    view = memoryview(buffer)
    done = 0
    while done < size:
        timeout = deadline - time.monotonic()
        if timeout <= 0:
            raise TimeoutError
        ready, _, _ = select.select([fd], [], [], timeout)
        if not ready:
            raise TimeoutError
        count = os.readv(fd, [view[done : done + (1 << 20)]])
        if not count:
            raise EOFError("parse worker closed its pipe")
        done += count
    view.release()
    return buffer


# --- the worker process ---------------------------------------------------------------------------------------


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
    stdout.write(_HEADER.pack(len(data)) + data + _HEADER.pack(len(buffers)))
    for buffer in buffers:
        with buffer.raw() as view:
            stdout.write(_HEADER.pack(view.nbytes))
            stdout.write(view)
    stdout.flush()


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
        job = pickle.loads(stdin.read(_HEADER.unpack(head)[0]))
        raw = stdin.read(_HEADER.unpack(stdin.read(_HEADER.size))[0])
        answer = _run_job(job, raw)
        del raw  # before the answer is pickled: a 25 MB mail is not held twice
        kind = answer[0]
        _answer(stdout, answer)
        del answer
        if kind == "recycle":
            return 0


if __name__ == "__main__":
    # Re-import under the real module name, so pickled classes are `mail2ticket.parse_guard.X`, not `__main__.X`.
    from mail2ticket import parse_guard as _module  # noqa: PLW0406 - on purpose, see above

    sys.exit(_module.worker_main(int(sys.argv[1])))
