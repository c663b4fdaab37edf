"""Named failpoints for crash tests (RELIABILITY.md harness): inert unless M2T_FAILPOINT names them.

`M2T_FAILPOINT=smtp.after_commit_before_reply:kill` makes the process SIGKILL itself at that point;
`...:raise` raises `FailpointError`; `...:sleep=SECONDS` stalls. Several are separated by commas.
"""

from __future__ import annotations

import os
import signal
import time


class FailpointError(RuntimeError):
    pass


def _active() -> dict[str, str]:
    spec = os.environ.get("M2T_FAILPOINT", "")
    out: dict[str, str] = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, _, action = item.partition(":")
        out[name] = action or "raise"
    return out


def failpoint(name: str) -> None:
    if "M2T_FAILPOINT" not in os.environ:
        return
    action = _active().get(name)
    if action is None:
        return
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action.startswith("sleep="):
        time.sleep(float(action.split("=", 1)[1]))
    else:
        raise FailpointError(f"failpoint {name}")
