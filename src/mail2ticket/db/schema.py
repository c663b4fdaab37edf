"""Schema management: Alembic upgrades and the check that the database matches this version of the code.

Embedded SQLite is upgraded in place when it is opened; a shared PostgreSQL is only changed by an explicit
`mail2ticket db upgrade`, and every instance refuses to start on a schema that is not at head. Two upgrades
started at once (two operators, or two instances on SQLite) are serialised: PostgreSQL by a transaction-level
advisory lock, SQLite by its write lock (BEGIN IMMEDIATE), and the second one then finds nothing to do.
"""

from __future__ import annotations

from importlib.resources import files

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Connection, Engine, text

# An arbitrary constant naming "the mail2ticket schema" among PostgreSQL advisory locks.
_MIGRATION_LOCK_KEY = 0x6D327473


class SchemaOutdated(RuntimeError):
    """The database schema is older (or newer) than this version of mail2ticket expects."""


def alembic_config(engine: Engine) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(files("mail2ticket.migrations")))
    cfg.attributes["engine"] = engine
    return cfg


def head_revision(engine: Engine) -> str | None:
    return ScriptDirectory.from_config(alembic_config(engine)).get_current_head()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        rev = MigrationContext.configure(conn).get_current_revision()
        conn.rollback()
        return rev


def _lock(conn: Connection) -> None:
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY})


def _known(engine: Engine, revision: str) -> bool:
    try:
        return ScriptDirectory.from_config(alembic_config(engine)).get_revision(revision) is not None
    except CommandError:
        return False


def upgrade(engine: Engine, revision: str = "head") -> None:
    cfg = alembic_config(engine)
    with engine.begin() as conn:
        _lock(conn)
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def downgrade(engine: Engine, revision: str) -> None:
    cfg = alembic_config(engine)
    with engine.begin() as conn:
        _lock(conn)
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, revision)


def ensure_schema(engine: Engine, *, auto_upgrade: bool) -> None:
    """Upgrade an embedded database in place; refuse to run on a shared one that is not at head."""
    current, head = current_revision(engine), head_revision(engine)
    if current == head:
        return
    if current is not None and not _known(engine, current):
        raise SchemaOutdated(
            f"the database schema is at revision {current}, which this version of mail2ticket does not know "
            f"(its newest is {head}): the database was upgraded by a newer mail2ticket; run that version"
        )
    if auto_upgrade:
        upgrade(engine)
        return
    raise SchemaOutdated(
        f"the database schema is at revision {current or 'none'}, this version needs {head}; "
        "run `mail2ticket db upgrade` (after a backup), then start again"
    )
