"""glibc malloc settings for the daemon, applied once at start (`tune`): memory that a large mail used goes
back to the operating system instead of staying in the process for good.

- M_MMAP_THRESHOLD fixed at 1 MiB: every buffer of a megabyte or more (a message part, a decoded
  attachment, a joined body) is its own mmap and is unmapped when freed. glibc's default threshold starts at
  128 KiB but *grows* to the size of the largest mmapped block that was freed (up to 32 MiB), after which
  25-35 MB buffers come from the heap and their pages stay resident: the peak RSS climbed from mail to mail.
  Setting the threshold explicitly switches that dynamic growth off (mallopt(3)).
- M_ARENA_MAX 2: glibc creates up to 8 × cores arenas for threads (intake pool, processing, outbox, the
  committer); each keeps its own freed memory. Two arenas bound that, at no measurable lock contention for a
  daemon whose Python threads take turns on the GIL anyway. The systemd unit also sets MALLOC_ARENA_MAX=2,
  which takes effect before the interpreter allocates anything.

Off glibc (musl, macOS) `tune` does nothing and says so.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8

MMAP_THRESHOLD_BYTES = 1 << 20
ARENA_MAX = 2


def tune() -> dict[str, int]:
    """Apply the settings; returns those glibc accepted ({} when not on glibc or mallopt is unavailable)."""
    if platform.libc_ver()[0] != "glibc":
        return {}
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return {}
    # Child processes (the parse worker) are new interpreters: glibc reads the same settings from the environment.
    if "GLIBC_TUNABLES" not in os.environ:
        os.environ["GLIBC_TUNABLES"] = f"glibc.malloc.arena_max={ARENA_MAX}:glibc.malloc.mmap_threshold={MMAP_THRESHOLD_BYTES}"
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    wanted = {
        "M_ARENA_MAX": (M_ARENA_MAX, ARENA_MAX),
        "M_MMAP_THRESHOLD": (M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES),
    }
    return {name: value for name, (param, value) in wanted.items() if mallopt(param, value) == 1}
