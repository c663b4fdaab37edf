"""The frames between `parse_guard` and its worker (`parse_worker`): one module, so both ends agree on them.

A job is a length-prefixed pickle (`ParseJob`) and then the raw bytes as a frame of their own, streamed; an answer
is a length-prefixed pickle, the number of out-of-band buffers, and each buffer length-prefixed (attachments,
read straight into the objects the parent keeps). Lengths are 8-byte unsigned big-endian integers.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pickle
import select
import struct
import time
from collections.abc import Iterable
from typing import IO, Any

HEADER = struct.Struct("!Q")
HELLO = b"m2t-parse-worker/1\n"  # the worker's first words, once its imports are done


PIPE_BYTES = 1 << 20  # Linux's default pipe-max-size: an unprivileged process may widen a pipe this far


def widen_pipe(stream: IO[bytes]) -> int:
    """Widen a pipe to PIPE_BYTES where the system allows it; how much it holds now."""
    with contextlib.suppress(OSError):
        fcntl.fcntl(stream.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)
    try:
        return int(fcntl.fcntl(stream.fileno(), fcntl.F_GETPIPE_SZ))
    except OSError:
        return 0  # unknown: nothing is sent ahead


class ReadFailed(Exception):
    """Reading a mail from storage failed while it was sent to the worker (the storage error is the cause)."""


def send_job(stream: IO[bytes], payload: bytes, size: int, pieces: Iterable[bytes]) -> None:
    """A job: its pickle, then `size` raw bytes from `pieces` (read lazily: a failing read raises ReadFailed)."""
    stream.write(HEADER.pack(len(payload)) + payload + HEADER.pack(size))
    sent = 0
    iterator = iter(pieces)
    while True:
        try:
            piece = next(iterator)
        except StopIteration:
            break
        except Exception as exc:
            raise ReadFailed from exc
        stream.write(piece)
        sent += len(piece)
    if sent != size:  # the worker would wait for the rest forever (or read our next job as mail)
        raise OSError(f"raw message changed while it was read: {sent} of {size} bytes")
    stream.flush()


def receive_answer(stream: IO[bytes], deadline: float) -> Any:
    """An answer: its pickle, then the out-of-band buffers (attachment bytes) it refers to."""
    size = HEADER.unpack(read_exact(stream, HEADER.size, deadline))[0]
    data = read_exact(stream, size, deadline)
    count = HEADER.unpack(read_exact(stream, HEADER.size, deadline))[0]
    buffers = [read_exact(stream, HEADER.unpack(read_exact(stream, HEADER.size, deadline))[0], deadline)
               for _ in range(count)]
    # The attachments become the very bytearrays just read: no second copy of a 25 MB file in this process.
    return pickle.loads(data, buffers=buffers)


def read_exact(stream: IO[bytes], size: int, deadline: float) -> bytearray:
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
