"""`mail2ticket run`: the daemon."""

from __future__ import annotations

import argparse

from mail2ticket import daemon
from mail2ticket.stages import Stage
from mail2ticket.cli.common import CliError, build_deliverer, load
from mail2ticket.config.load import config_path
from mail2ticket.ingress import imap
from mail2ticket.outbox.journal import JournalInUse
from mail2ticket.runtime import Runtime, Services


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    run = sub.add_parser("run", help="run the daemon (SMTP/LMTP listener, IMAP pollers, workers)")
    run.set_defaults(func=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    config = load(args)
    runtime = Runtime.build(config)
    services = Services.build(config)
    try:
        return daemon.run(config_path(args.config), runtime, services, build_deliverer(config),
                          extra_stages=_extra_stages)
    except JournalInUse as exc:
        raise CliError(str(exc)) from None
    finally:
        services.close()


def _extra_stages(d: daemon.Daemon) -> list[Stage]:
    """Stages beyond SMTP, processing and outbox: one IMAP worker per configured mailbox folder."""
    stages: list[Stage] = []
    stages.extend(imap.build_stages(d.runtime().config, d.services, d.config_path, d.wake_processing))
    return stages
