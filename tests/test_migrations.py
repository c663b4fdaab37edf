"""Alembic migrations on every backend: upgrade, downgrade, upgrade again, and no drift from the models."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect

from mail2ticket.db.engine import make_engine
from mail2ticket.db.models import Base
from mail2ticket.db.schema import alembic_config, current_revision, downgrade, head_revision, upgrade


def _tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_migrations_upgrade_downgrade_and_upgrade_again(empty_database_url: str) -> None:
    """The schema goes up to head, all the way down to nothing, and up again on each backend."""
    engine = make_engine(empty_database_url)
    try:
        head = head_revision(engine)
        upgrade(engine)
        assert current_revision(engine) == head
        assert set(Base.metadata.tables) <= _tables(empty_database_url)
        downgrade(engine, "base")
        assert current_revision(engine) is None
        assert _tables(empty_database_url) <= {"alembic_version"}
        upgrade(engine)
        assert current_revision(engine) == head
        assert set(Base.metadata.tables) <= _tables(empty_database_url)
    finally:
        engine.dispose()


def test_every_revision_steps_down_and_up_one_at_a_time(empty_database_url: str) -> None:
    """Each migration's downgrade undoes exactly its upgrade, so any single step can be rolled back."""
    engine = make_engine(empty_database_url)
    try:
        script = ScriptDirectory.from_config(alembic_config(engine))
        upgrade(engine)
        for revision in script.walk_revisions():  # head first
            assert current_revision(engine) == revision.revision
            downgrade(engine, "-1")
            assert current_revision(engine) == revision.down_revision
            upgrade(engine, "+1")
            assert current_revision(engine) == revision.revision
            downgrade(engine, "-1")
        assert current_revision(engine) is None
    finally:
        engine.dispose()


def test_autogenerate_finds_no_difference_between_models_and_migrations(empty_database_url: str) -> None:
    """After `upgrade head` the database matches the models exactly: no forgotten migration."""
    engine = make_engine(empty_database_url)
    try:
        upgrade(engine)
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True, "compare_server_default": True})
            diff = compare_metadata(context, Base.metadata)
            conn.rollback()
        assert diff == []
    finally:
        engine.dispose()
