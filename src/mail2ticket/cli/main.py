"""The `mail2ticket` command: parses arguments, configures logging, maps errors to exit codes.

No traceback reaches the user: configuration errors exit 2 with a message naming the file and key,
everything unexpected exits 70 with a one-line message (the traceback goes to the log with --debug).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import structlog

from mail2ticket import log as logsetup
from mail2ticket.cli import (
    check_cmd,
    db_cmd,
    import_cmd,
    ingest_cmd,
    outbox_cmd,
    person_cmd,
    purge_cmd,
    quarantine_cmd,
    rules_cmd,
    run_cmd,
    stats_cmd,
    tickets_cmd,
)
from mail2ticket.cli.common import EX_SOFTWARE, EX_TEMPFAIL, EXIT_CONFIG_ERROR, CliError
from mail2ticket.config import ConfigError
from mail2ticket.config.load import config_path, load_config
from mail2ticket.db.engine import DurabilityError
from mail2ticket.db.schema import SchemaOutdated
from mail2ticket.db.wal_checkpoint import WalNotTruncated

COMMAND_MODULES = [run_cmd, check_cmd, db_cmd, ingest_cmd, import_cmd, rules_cmd, tickets_cmd, quarantine_cmd,
                   outbox_cmd, stats_cmd, purge_cmd, person_cmd]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mail2ticket",
        description="Turns departmental mailboxes into tracked tickets.",
    )
    parser.add_argument("--config", "-c", help="config file (default: $MAIL2TICKET_CONFIG or ./mail2ticket.toml)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of unexpected errors")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def _configure_logging(args: argparse.Namespace) -> None:
    log_format, level = "auto", "info"
    try:
        daemon = load_config(config_path(args.config)).daemon
        log_format, level = daemon.log_format, daemon.log_level
    except Exception:  # noqa: BLE001 - the command itself reports config problems
        pass
    if args.command != "run" and level == "info":
        level = "warning"
    logsetup.configure(log_format, "debug" if args.debug else level)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"mail2ticket: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    except (SchemaOutdated, DurabilityError) as exc:
        print(f"mail2ticket: {exc}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    except CliError as exc:
        print(f"mail2ticket: {exc}", file=sys.stderr)
        return exc.code
    except WalNotTruncated as exc:  # the erase is committed; only the compaction has to be done again
        print(f"mail2ticket: {exc}", file=sys.stderr)
        return EX_TEMPFAIL
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - the last line of defence against tracebacks for users
        from sqlalchemy.exc import OperationalError

        if args.debug:
            structlog.get_logger("mail2ticket").exception("unexpected_error")
        if isinstance(exc, OperationalError):
            print(f"mail2ticket: database unavailable: {exc.orig!s:.200}", file=sys.stderr)
            return EX_TEMPFAIL
        print(f"mail2ticket: unexpected error: {type(exc).__name__}: {exc!s:.300} (run with --debug for details)",
              file=sys.stderr)
        return EX_SOFTWARE


if __name__ == "__main__":
    sys.exit(main())
