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

The protocol is length-prefixed frames (`_parse_frames`) over the worker's stdin/stdout (its side:
`parse_worker`): a job is a pickled `ParseJob` and then the raw bytes as a frame of their own (streamed from
storage, never pickled); an answer is a pickle and then its out-of-band buffers (attachments of 64 KB and more,
read straight into the objects the parent keeps). The worker answers with the fields of the mail, never the
stdlib tree. Pickle is safe here: both ends are our own code, and the mail only ever appears as data inside
objects we built.

`analyse` is one round trip. `submit` and `collect` keep the worker busy from a stream of small mails: the next
job already waits in the worker's pipe (widened to 1 MiB) while it parses one, and it is sent only when it fits
there whole, so neither side ever blocks writing while the other blocks writing too. A breach replaces the
worker, and the job queued behind the culprit goes to the new one.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import pickle
import signal
import struct
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from mail2ticket import _parse_frames as frames
from mail2ticket.classify import Classification, classify
from mail2ticket.headers import strip_control_headers
from mail2ticket.outcomes import Quarantine
from mail2ticket.parse import Limits, ParsedMail, parse
from mail2ticket.text.body import with_body

log = structlog.get_logger("mail2ticket.parse_guard")

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
        self._greeted = False  # the worker's hello was read: it is ready for jobs
        self._pipe_bytes = 0  # what the pipe to the worker holds without a reader
        self._pending: collections.deque[_Pending] = collections.deque()  # submitted, not yet collected
        self.restarts = 0

    def analyse(self, raw: bytes | RawLoader, limits: Limits, *, envelope_from: str | None,
                envelope_to: Sequence[str] = (), noreply_patterns: Sequence[str] = ()) -> Analysed:
        """Parse and classify in the worker. Given a loader instead of bytes, the bytes are streamed to the worker
        piece by piece as they are read, so a 25 MB mail is never held whole in this process."""
        payload = self._payload(limits, envelope_from, envelope_to, noreply_patterns)
        with self._lock:
            if self._pending:
                raise RuntimeError("analyse() while submitted mails wait for collect()")
            proc = self._ensure_worker(limits)
            return _result(self._exchange(proc, payload, raw))

    def submit(self, raw: bytes, limits: Limits, *, envelope_from: str | None, envelope_to: Sequence[str] = (),
               noreply_patterns: Sequence[str] = ()) -> None:
        """Queue a mail for `collect`, which answers in the order of submission.

        While the worker parses one mail the next waits in its pipe (when it fits there whole), so the worker
        never idles while this process, whose threads share one interpreter lock, gets round to reading an answer
        and writing the next job. Errors show at `collect`.
        """
        payload = self._payload(limits, envelope_from, envelope_to, noreply_patterns)
        with self._lock:
            self._pending.append(_Pending(payload, raw, limits))
            self._send_ahead()

    def collect(self) -> Analysed:
        """The analysis of the oldest submitted mail (raises like `analyse`)."""
        with self._lock:
            head = self._pending[0]
            try:
                if head.sent:  # sent ahead to the worker that is up now (a new worker gets it again, see below)
                    assert self._proc is not None
                    answer = self._exchange(self._proc, None, b"")
                else:
                    answer = self._exchange(self._ensure_worker(head.limits), head.payload, head.raw)
            finally:
                self._pending.popleft()
            self._send_ahead()
        return _result(answer)

    def discard(self) -> None:
        """Forget the submitted mails (their answers are read and dropped, or the worker is replaced)."""
        with self._lock:
            try:
                while self._pending:
                    if self._pending[0].sent and self._proc is not None:
                        self._exchange(self._proc, None, b"")
                    self._pending.popleft()
            finally:
                self._pending.clear()

    def _payload(self, limits: Limits, envelope_from: str | None, envelope_to: Sequence[str],
                 noreply_patterns: Sequence[str]) -> bytes:
        job = ParseJob(limits, envelope_from, tuple(envelope_to), tuple(noreply_patterns), self.cpu_seconds)
        return pickle.dumps(job, protocol=pickle.HIGHEST_PROTOCOL)

    def _send_ahead(self) -> None:
        """Send the oldest submitted mail, and the one after it if it fits in the pipe whole: writing that never
        blocks, so this process is never stuck writing a job while the worker is stuck writing an answer."""
        for index, pending in enumerate(itertools.islice(self._pending, 2)):
            if pending.sent:
                continue
            try:
                if index == 0:
                    proc = self._ensure_worker(pending.limits)
                elif self._proc is None or _frame_size(pending) > self._pipe_bytes:
                    return  # sent when it is the oldest
                else:
                    proc = self._proc
                assert proc.stdin is not None
                frames.send_job(proc.stdin, pending.payload, len(pending.raw), (pending.raw,))
            except (OSError, ParseWorkerUnavailable):
                return  # `collect` tries again, and reports what stays wrong
            pending.sent = True

    def close(self) -> None:
        with self._lock:
            self._stop_worker()

    def start(self, limits: Limits, *, wait: bool = False) -> None:
        """Start the worker now (its imports take ~0.2-0.6 s), so the first mail does not wait for them; `wait`:
        until it is ready. A worker that fails to start is started again, or reported, when a mail needs it."""
        with self._lock, contextlib.suppress(ParseWorkerUnavailable):
            if self._proc is None:
                self._spawn(limits)
            if wait:
                self._ensure_worker(limits)

    # --- worker management --------------------------------------------------------------------------------

    def _ensure_worker(self, limits: Limits) -> subprocess.Popen[bytes]:
        if self._proc is not None and self._proc.poll() is None:
            if not self._greeted:
                self._await_hello(self._proc)
            return self._proc
        self._stop_worker()
        proc = self._spawn(limits)
        self._await_hello(proc)
        return proc

    def _spawn(self, limits: Limits) -> subprocess.Popen[bytes]:
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "mail2ticket.parse_worker", str(memory_budget(limits))],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, close_fds=True,
            )
        except OSError as exc:
            raise ParseWorkerUnavailable(f"cannot start the parse worker: {exc}") from exc
        self._proc = proc
        self._greeted = False
        self._finalizer = weakref.finalize(self, _kill, proc)
        assert proc.stdin is not None and proc.stdout is not None
        self._pipe_bytes = frames.widen_pipe(proc.stdin)
        frames.widen_pipe(proc.stdout)  # the worker writes an answer without waiting for this process to read it
        return proc

    def _await_hello(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        try:  # the worker says hello once its imports are done: a failure here is ours, not the mail's
            hello = frames.read_exact(proc.stdout, len(frames.HELLO), time.monotonic() + STARTUP_TIMEOUT)
        except (TimeoutError, EOFError, OSError) as exc:
            self._stop_worker()
            raise ParseWorkerUnavailable(f"the parse worker did not start ({type(exc).__name__})") from exc
        if hello != frames.HELLO:
            self._stop_worker()
            raise ParseWorkerUnavailable("the parse worker answered with garbage at startup")
        self._greeted = True

    def _stop_worker(self) -> None:
        if self._finalizer is not None:
            self._finalizer()
        self._proc = None
        self._finalizer = None
        for pending in self._pending:
            pending.sent = False  # lost with the worker (after a breach, the oldest is the culprit): sent again

    def _exchange(self, proc: subprocess.Popen[bytes], payload: bytes | None,
                  raw: bytes | RawLoader) -> tuple[str, object]:
        """Send a job (unless `payload` is None: it was sent ahead) and read its answer."""
        assert proc.stdin is not None and proc.stdout is not None
        deadline = time.monotonic() + 3 * self.cpu_seconds + 5
        size, pieces = (raw() if callable(raw) else (len(raw), (raw,))) if payload is not None else (0, ())
        try:
            if payload is not None:
                frames.send_job(proc.stdin, payload, size, pieces)
            answer = frames.receive_answer(proc.stdout, deadline)
        except TimeoutError:
            self._breach("wall_clock")
            return "quarantine", f"parse budget exceeded: no result within {3 * self.cpu_seconds + 5:.0f} s"
        except frames.ReadFailed as failed:
            # Storage failed while the mail streamed: the caller sees its error (tried again later), and the worker,
            # which waits for the rest of the mail, is replaced, so it cannot read the next job as that rest.
            self._breach("read_failed")
            cause = failed.__cause__
            assert cause is not None
            raise cause from None
        except (OSError, EOFError, struct.error, pickle.UnpicklingError) as exc:
            status = self._breach("worker_died")
            if status in (-signal.SIGXCPU, -signal.SIGKILL):
                return "quarantine", f"parse budget exceeded: more than {self.cpu_seconds:g} s of CPU time"
            return "quarantine", f"unparseable: the parse worker died ({type(exc).__name__}, exit status {status})"
        except BaseException:
            self._breach("interrupted")  # half a job or half an answer is in a pipe: no later mail may meet it
            raise
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


@dataclass(slots=True)
class _Pending:
    """A submitted mail: its job, its bytes (kept until its answer, to send them again to a new worker)."""

    payload: bytes
    raw: bytes
    limits: Limits
    sent: bool = False


def _frame_size(pending: _Pending) -> int:
    return 2 * frames.HEADER.size + len(pending.payload) + len(pending.raw)


def _result(answer: tuple[str, object]) -> Analysed:
    kind, value = answer
    if kind == "ok":
        assert isinstance(value, Analysed)
        return value
    raise Quarantine(str(value))


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


