"""Shared CLI plumbing: config loading, database access, JSON output and sysexits codes."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from typing import Any

from mail2ticket.config import Config, load_config
from mail2ticket.config.load import config_path, read_secret
from mail2ticket.daemon import prepare_database
from mail2ticket.outbox.deliver import Deliverer, FolderDeliverer, SmtpDeliverer
from mail2ticket.runtime import Runtime, Services

EX_OK = 0
EX_USAGE = 64
EX_DATAERR = 65
EX_NOINPUT = 66
EX_SOFTWARE = 70
EX_TEMPFAIL = 75
EX_CONFIG = 78
EXIT_CONFIG_ERROR = 2


class CliError(Exception):
    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def load(args: argparse.Namespace) -> Config:
    return load_config(config_path(args.config))


def open_services(config: Config, *, upgrade_embedded: bool = True) -> tuple[Runtime, Services]:
    runtime = Runtime.build(config)
    services = Services.build(config)
    if upgrade_embedded:
        try:
            prepare_database(runtime, services)
        except BaseException:
            services.close()
            raise
    return runtime, services


def build_deliverer(config: Config) -> Deliverer:
    out = config.smtp_out
    if out.delivery == "folder":
        return FolderDeliverer(out.folder)
    password = read_secret(out.password_file, out.password_env, "smtp_out.password_file", config.source_path)
    return SmtpDeliverer(out, password, local_hostname=config.smtp_in.hostname)


def iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value else None


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, ensure_ascii=False, indent=2, default=str)
    sys.stdout.write("\n")


def print_table(rows: list[list[str]], headers: list[str]) -> None:
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    print(fmt.format(*headers))
    for row in rows:
        print(fmt.format(*row))
