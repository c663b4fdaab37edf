"""`mail2ticket check-config [--connect]`: validate everything a deploy needs, before it is needed.

Without --connect nothing leaves the machine: the file, the rules and every template (rendered once with
sample data) are checked. With --connect it also logs in to the smarthost and to every mailbox and
reports each one OK or what failed; the exit code is non-zero if anything failed.
"""

from __future__ import annotations

import argparse
import smtplib
import ssl
from collections.abc import Callable

from mail2ticket.cli.common import load
from mail2ticket.config import Config
from mail2ticket.config.load import read_secret
from mail2ticket.ingress.imap import check_mailboxes
from mail2ticket.runtime import Runtime

SAMPLE = {
    "tag": "[Ticket#2026-000123]",
    "number": "2026-000123",
    "subject": "Beispiel: Anfrage zur Sperrmüllabholung",
    "queue_name": "Bürgerbüro",
    "queue_address": "buergerbuero@stadt.example",
    "requester_name": "Erika Mustermann",
    "status": "open",
    "priority": "normal",
}

Connector = Callable[[Config], list[tuple[str, str | None]]]
CONNECTORS: list[Connector] = [check_mailboxes]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    check = sub.add_parser("check-config", help="validate the config, rules and templates")
    check.add_argument("--connect", action="store_true", help="also log in to the smarthost and the mailboxes")
    check.set_defaults(func=cmd_check)


def check_templates(runtime: Runtime) -> list[str]:
    problems: list[str] = []
    for language, name in runtime.renderer.template_names():
        try:
            runtime.renderer.render(name, language, dict(SAMPLE))
        except Exception as exc:  # noqa: BLE001 - report every broken template, not just the first
            problems.append(f"template {language}/{name}: {type(exc).__name__}: {exc}")
    for queue in runtime.config.queue:
        if queue.acknowledge and not runtime.renderer.exists(queue.ack_template, "de", queue.name):
            problems.append(f"queue {queue.name!r}: ack_template {queue.ack_template!r} not found")
    for rule in runtime.config.rule:
        if isinstance(rule.reply, str) and not runtime.renderer.exists(rule.reply, "de"):
            problems.append(f"rule {rule.name!r}: reply template {rule.reply!r} not found")
    return problems


def check_smarthost(config: Config) -> list[tuple[str, str | None]]:
    out = config.smtp_out
    if out.delivery != "smtp":
        return []
    name = f"smarthost {out.host}:{out.port}"
    try:
        password = read_secret(out.password_file, out.password_env, "smtp_out.password_file", config.source_path)
        client: smtplib.SMTP
        if out.security == "tls":
            client = smtplib.SMTP_SSL(out.host, out.port, timeout=out.timeout, context=ssl.create_default_context())
        else:
            client = smtplib.SMTP(out.host, out.port, timeout=out.timeout)
        with client:
            client.ehlo()
            if out.security == "starttls":
                client.starttls(context=ssl.create_default_context())
                client.ehlo()
            if out.username:
                client.login(out.username, password or "")
            client.noop()
    except Exception as exc:  # noqa: BLE001 - any failure is reported, with its type
        return [(name, f"{type(exc).__name__}: {exc}")]
    return [(name, None)]


def cmd_check(args: argparse.Namespace) -> int:
    config = load(args)
    runtime = Runtime.build(config)
    problems = check_templates(runtime)
    for problem in problems:
        print(f"FAIL  {problem}")
    failed = bool(problems)
    print(f"OK    {config.source_path}: {len(config.queue)} queues, {len(config.rule)} rules, "
          f"{len(config.mailbox)} mailboxes, {len(runtime.renderer.template_names())} templates")
    if args.connect:
        for connector in [check_smarthost, *CONNECTORS]:
            for name, error in connector(config):
                print(f"FAIL  {name}: {error}" if error else f"OK    {name}")
                failed = failed or error is not None
    return 1 if failed else 0
