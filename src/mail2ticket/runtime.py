"""Everything a running mail2ticket needs, built once from the config and passed down explicitly.

`Services` holds what lives for the whole process (engine, sessions, instance id, clock); `Runtime` holds
what SIGHUP may replace (config, compiled rules, templates). A reload builds a complete new `Runtime`
and swaps one reference, so a message is always processed with one consistent rule set.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import socket
import uuid
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from mail2ticket.config import Config, reply_secret
from mail2ticket.db.engine import make_engine, make_sessionmaker
from mail2ticket.db.wal_checkpoint import WalCheckpointer, has_wal_file
from mail2ticket.outbox.render import Renderer
from mail2ticket.parse import Limits
from mail2ticket.rules import Router
from mail2ticket.thread import subject_tag_pattern


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class Runtime:
    config: Config
    router: Router
    renderer: Renderer
    tag_pattern: re.Pattern[str]
    limits: Limits
    secret: bytes = field(repr=False)

    @classmethod
    def build(cls, config: Config) -> Runtime:
        lim = config.limits
        limits = Limits(
            max_message_size=config.smtp_in.max_message_size,
            max_parts=lim.max_parts,
            max_depth=lim.max_depth,
            max_header_bytes=lim.max_header_bytes,
            max_header_count=lim.max_header_count,
            max_line_length=lim.max_line_length,
            max_attachment_size=lim.max_attachment_size,
            max_attachments_total=lim.max_attachments_total,
            max_recipients=lim.max_recipients,
        )
        return cls(
            config=config,
            router=Router(config),
            renderer=Renderer(config.daemon.templates_dir, config.daemon.template_override_dir),
            tag_pattern=subject_tag_pattern(config.daemon.subject_tag_prefix),
            limits=limits,
            secret=reply_secret(config).get_secret_value().encode(),
        )


@dataclass
class Services:
    engine: Engine
    factory: sessionmaker[Session]
    instance_id: str
    clock: Callable[[], dt.datetime] = utc_now
    checkpointer: WalCheckpointer | None = None  # SQLite: WAL checkpoints off the commit path

    def __post_init__(self) -> None:
        # A caller that forgets close() must not leave pooled PostgreSQL sessions (and, for the daemon,
        # their row locks) to the garbage collector: dispose of the pool when this object goes away.
        self._dispose = weakref.finalize(self, _close, self.engine, self.checkpointer)

    @classmethod
    def build(cls, config: Config) -> Services:
        url = config.daemon.database_url
        sqlite_file = has_wal_file(url)
        engine = make_engine(url, pool_size=config.daemon.worker_threads + 2, background_checkpoints=sqlite_file)
        checkpointer = WalCheckpointer(engine) if sqlite_file else None
        if checkpointer is not None:
            checkpointer.start()
        return cls(engine=engine, factory=make_sessionmaker(engine), instance_id=instance_id(),
                   checkpointer=checkpointer)

    def close(self) -> None:
        self._dispose()


def _close(engine: Engine, checkpointer: WalCheckpointer | None) -> None:
    if checkpointer is not None:
        checkpointer.stop()
    engine.dispose()


def instance_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
