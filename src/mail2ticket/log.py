"""Logging setup: structlog key-value events, JSON under systemd or when not on a TTY, readable on a TTY.

Events carry stable snake_case names and bound context (inbound_id, message_id, mailbox, ticket); one
`message_processed` line summarises each message. Bodies and secrets are never logged: callers do not
pass them, and `scrub` is the safety net that masks keys which could carry them.

Logs go to stderr, never stdout, because CLI commands print their results (`--json`) on stdout. Under
systemd both streams reach the journal; `$JOURNAL_STREAM` tells us we are there even when stderr is a
pipe. The format is JSON when the journal is detected or stderr is not a terminal (a pipe, a file).
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}

# Keys whose values may contain mail content or credentials; matched as whole words of the key.
SENSITIVE_KEY = re.compile(
    r"(^|_)(body|text|html|raw|data|content|password|passwd|secret|token|credential|authorization|cookie)s?$",
    re.IGNORECASE,
)
REDACTED = "[redacted]"
MAX_VALUE_CHARS = 2000


def wants_json(log_format: str, stream: TextIO | None = None) -> bool:
    if log_format == "json":
        return True
    if log_format == "console":
        return False
    target = stream or sys.stderr
    return bool(os.environ.get("JOURNAL_STREAM")) or not target.isatty()


def scrub(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Mask values under sensitive keys and cap long strings, so a careless call cannot leak a mail body."""
    for key, value in list(event_dict.items()):
        if key in ("event", "exception"):
            continue
        if SENSITIVE_KEY.search(key):
            event_dict[key] = REDACTED
        elif isinstance(value, str) and len(value) > MAX_VALUE_CHARS:
            event_dict[key] = value[:MAX_VALUE_CHARS] + "…"
        elif isinstance(value, bytes):
            event_dict[key] = f"<{len(value)} bytes>"
    return event_dict


def processors(json_output: bool, colors: bool = False) -> list[Any]:
    chain: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        scrub,
    ]
    if json_output:
        chain += [structlog.processors.dict_tracebacks, structlog.processors.JSONRenderer()]
    else:
        chain += [structlog.dev.ConsoleRenderer(colors=colors)]
    return chain


def configure(log_format: str = "auto", level: str = "info") -> None:
    json_output = wants_json(log_format)
    structlog.configure(
        processors=processors(json_output, colors=not json_output and sys.stderr.isatty()),
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        # sys.stderr as it is when a line is written, not when configured: a CLI command run in-process (tests)
        # must not leave the logger writing to a stream that was replaced and closed meanwhile.
        logger_factory=lambda *_args: structlog.PrintLogger(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    logging.basicConfig(level=max(LEVELS[level], logging.WARNING), stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    # aiosmtpd logs every connection at INFO through stdlib logging; our own events cover that.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
