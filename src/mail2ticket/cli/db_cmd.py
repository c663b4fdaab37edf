"""`mail2ticket db upgrade|current`: apply and inspect schema migrations."""

from __future__ import annotations

import argparse

from mail2ticket.cli.common import load
from mail2ticket.db.engine import make_engine
from mail2ticket.db.schema import current_revision, head_revision, upgrade


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    db = sub.add_parser("db", help="database schema")
    dsub = db.add_subparsers(dest="db_cmd", required=True)
    up = dsub.add_parser("upgrade", help="apply all pending migrations (take a backup first)")
    up.set_defaults(func=cmd_upgrade)
    cur = dsub.add_parser("current", help="show the schema revision")
    cur.set_defaults(func=cmd_current)


def cmd_upgrade(args: argparse.Namespace) -> int:
    config = load(args)
    engine = make_engine(config.daemon.database_url)
    before = current_revision(engine)
    upgrade(engine)
    after = current_revision(engine)
    print(f"database schema: {before or 'empty'} -> {after}" if before != after else f"database schema is current ({after})")
    engine.dispose()
    return 0


def cmd_current(args: argparse.Namespace) -> int:
    config = load(args)
    engine = make_engine(config.daemon.database_url)
    print(f"current: {current_revision(engine) or 'empty'}  head: {head_revision(engine)}")
    engine.dispose()
    return 0
