"""Logging setup: structlog key-value events, JSON under systemd or when not on a TTY, colour on a TTY.

Events carry stable snake_case names and bound context (inbound_id, message_id, mailbox, ticket); bodies and
secrets are never logged.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import structlog

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def wants_json(log_format: str) -> bool:
    if log_format == "json":
        return True
    if log_format == "console":
        return False
    return bool(os.environ.get("JOURNAL_STREAM")) or not sys.stderr.isatty()


def configure(log_format: str = "auto", level: str = "info") -> None:
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if wants_json(log_format):
        processors += [structlog.processors.dict_tracebacks, structlog.processors.JSONRenderer()]
    else:
        processors += [structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    logging.basicConfig(level=max(LEVELS[level], logging.WARNING), stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    # aiosmtpd logs every connection at INFO through stdlib logging; our own events cover that.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
