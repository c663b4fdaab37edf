"""`mail2ticket rules test FILE.eml`: a dry run of classification, threading and routing for one mail."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from mail2ticket.classify import classify
from mail2ticket.cli.common import EX_DATAERR, CliError, load, open_services, print_json
from mail2ticket.config import Config
from mail2ticket.db.engine import unit_of_work
from mail2ticket.outcomes import Quarantine
from mail2ticket.parse import parse
from mail2ticket.pipeline.conversation import addressed_queues
from mail2ticket.rules import MailFacts
from mail2ticket.runtime import Runtime, Services
from mail2ticket.thread import find_thread


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    rules = sub.add_parser("rules", help="test routing rules")
    rsub = rules.add_subparsers(dest="rules_cmd", required=True)
    test = rsub.add_parser("test", help="show what the rules would do with a mail, without changing anything")
    test.add_argument("file", type=Path)
    test.add_argument("--to", action="append", default=[], help="envelope recipient (default: To/Cc headers)")
    test.add_argument("--sender", default=None, help="envelope sender (MAIL FROM); '' for the null sender")
    test.add_argument("--json", action="store_true")
    test.set_defaults(func=cmd_test)


def cmd_test(args: argparse.Namespace) -> int:
    config = load(args)
    runtime, services = open_services(config)
    try:
        return _dry_run(args, config, runtime, services)
    finally:
        services.close()


def _dry_run(args: argparse.Namespace, config: Config, runtime: Runtime, services: Services) -> int:
    try:
        raw = args.file.read_bytes()
    except OSError as exc:
        raise CliError(f"{args.file}: {exc.strerror}", EX_DATAERR) from None
    try:
        parsed = parse(raw, runtime.limits)
    except Quarantine as exc:
        result: dict[str, Any] = {"rule": None, "action": "quarantine", "reason": exc.reason, "queue": None,
                                  "priority": None, "category": None, "tags": [], "reply": None,
                                  "followup_of": None, "classification": None}
        return _emit(args, result)
    assert parsed.msg is not None  # parsed here, in this process
    classification = classify(parsed.msg, args.sender, args.to, config.loop_protection.noreply_patterns)
    arrival = addressed_queues(config, args.to, None, parsed)
    decision = runtime.router.route(MailFacts(parsed, classification.kind, arrival))
    with unit_of_work(services.factory) as session:
        thread = find_thread(session, parsed, runtime.tag_pattern, config=config, secret=runtime.secret,
                             envelope_to=args.to)
        followup = thread.ticket.number if thread.ticket is not None else None
        session.rollback()
    result = {
        "rule": decision.rule,
        "matched_rules": list(decision.matched),
        "action": decision.action,
        "reason": decision.reason,
        "queue": decision.queue,
        "priority": decision.priority,
        "category": decision.category,
        "tags": list(decision.tags),
        "reply": decision.reply if classification.kind == "human" and not classification.suppress_autoreply else None,
        "followup_of": followup,
        "classification": classification.kind,
        "classification_reasons": list(classification.reasons),
        "requester": parsed.reply_to if decision.requester == "reply-to" and parsed.reply_to else parsed.from_addr,
    }
    return _emit(args, result)


def _emit(args: argparse.Namespace, result: dict[str, Any]) -> int:
    if args.json:
        print_json(result)
        return 0
    width = max(len(k) for k in result)
    for key, value in result.items():
        if isinstance(value, list):
            value = ", ".join(str(v) for v in value) or "-"
        print(f"{key:<{width}}  {value if value is not None else '-'}")
    return 0
