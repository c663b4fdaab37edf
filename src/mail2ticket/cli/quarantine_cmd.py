"""`mail2ticket quarantine list|show|retry|release|export`: look after mail that could not be processed.

`retry` resets messages to `new` and processes them at once (after a rules fix or a raised limit; if the
daemon runs, it may pick them up first, which is just as good). `release --as-ticket` forces a ticket.
`export` writes the exact original bytes to stdout (`mail2ticket quarantine export 17 > 17.eml`).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from mail2ticket import quarantine
from mail2ticket.cli.common import EX_USAGE, CliError, iso, load, open_services, print_json, print_table
from mail2ticket.db.engine import unit_of_work
from mail2ticket.db.models import InboundMessage, InboundState
from mail2ticket.safe_text import clean_text
from mail2ticket.pipeline.process import Processor


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("quarantine", help="list, inspect, retry, release or export quarantined mail")
    qsub = parser.add_subparsers(dest="quarantine_cmd", required=True)
    lst = qsub.add_parser("list", help="list quarantined messages")
    lst.add_argument("--limit", type=int, default=None)
    lst.add_argument("--json", action="store_true")
    lst.set_defaults(func=cmd_list)
    show = qsub.add_parser("show", help="headers, reason and defects of one message")
    show.add_argument("id", type=int)
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=cmd_show)
    retry = qsub.add_parser("retry", help="process quarantined messages again")
    retry.add_argument("id", type=int, nargs="?")
    retry.add_argument("--all", action="store_true", help="every quarantined message")
    retry.add_argument("--json", action="store_true")
    retry.set_defaults(func=cmd_retry)
    release = qsub.add_parser("release", help="force a ticket for a quarantined message")
    release.add_argument("id", type=int)
    release.add_argument("--as-ticket", action="store_true", required=True,
                         help="create a ticket, bypassing rules and raised limits (no mail is sent)")
    release.add_argument("--queue", help="queue for the ticket (default: the queue it was addressed to)")
    release.add_argument("--json", action="store_true")
    release.set_defaults(func=cmd_release)
    export = qsub.add_parser("export", help="write the exact original bytes to stdout")
    export.add_argument("id", type=int)
    export.set_defaults(func=cmd_export)


def summary(row: InboundMessage) -> dict[str, Any]:
    return {
        "id": row.id,
        "received_at": iso(row.received_at),
        "source": row.source,
        "mailbox": row.mailbox,
        "envelope_from": row.envelope_from,
        "envelope_to": list(row.envelope_to or []),
        "message_id": row.message_id,
        "size": row.size,
        "sha256": row.sha256,
        "state": InboundState(row.state).value,
        "reason": row.reason,
        "classification": row.classification,
        "defects": list(row.defects or []),
        "attempts": row.attempts,
    }


def cmd_list(args: argparse.Namespace) -> int:
    _runtime, services = open_services(load(args))
    try:
        with unit_of_work(services.factory) as session:
            rows = [summary(r) for r in quarantine.quarantined(session, args.limit)]
    finally:
        services.close()
    if args.json:
        print_json(rows)
        return 0
    if not rows:
        print("no quarantined messages")
        return 0
    print_table([[str(r["id"]), (r["received_at"] or "")[:19], str(r["size"]),
                  clean_text(r["message_id"], max_len=40), clean_text(r["reason"], max_len=70)] for r in rows],
                ["ID", "RECEIVED", "SIZE", "MESSAGE-ID", "REASON"])
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    _runtime, services = open_services(load(args))
    try:
        with unit_of_work(services.factory) as session:
            row = _get(session, args.id)
            data = summary(row)
            data["headers"] = quarantine.header_block(quarantine.raw_bytes(session, args.id))
    finally:
        services.close()
    if args.json:
        print_json(data)
        return 0
    for key in ("id", "state", "reason", "classification", "received_at", "source", "mailbox", "envelope_from",
                "envelope_to", "message_id", "size", "sha256", "attempts"):
        print(f"{key + ':':16}{clean_text(str(data[key]), max_len=500)}")
    print(f"{'defects:':16}{', '.join(data['defects']) or '-'}")
    print("\n" + data["headers"])
    return 0


def cmd_retry(args: argparse.Namespace) -> int:
    if (args.id is None) == (not args.all):
        raise CliError("give a message ID or --all", EX_USAGE)
    runtime, services = open_services(load(args))
    processor = Processor(services, lambda: runtime)
    results: list[dict[str, Any]] = []
    try:
        with unit_of_work(services.factory) as session:
            ids = [r.id for r in quarantine.quarantined(session)] if args.all else [args.id]
            quarantine.reset_for_retry(session, ids) if args.all else _reset_one(session, args.id)
        for inbound_id in ids:
            result = processor.process_next(only=inbound_id)
            entry: dict[str, Any] = {"id": inbound_id}
            if result is not None:
                entry.update(state=result.state.value, ticket=result.ticket_number, reason=result.reason)
            else:
                entry.update(state="new", reason="picked up by the running daemon")
            results.append(entry)
    finally:
        processor.close()
        services.close()
    if args.json:
        print_json(results)
    else:
        for entry in results:
            detail = entry.get("ticket") or clean_text(entry.get("reason"), max_len=100)
            print(f"{entry['id']}: {entry['state']} {detail or ''}".rstrip())
    return 0


def cmd_release(args: argparse.Namespace) -> int:
    runtime, services = open_services(load(args))
    processor = Processor(services, lambda: runtime)
    try:
        with unit_of_work(services.factory) as session:
            _get(session, args.id)
            try:
                ticket = quarantine.release_as_ticket(session, runtime, processor.guard, args.id, queue=args.queue,
                                                      now=services.clock())
            except KeyError as exc:
                raise CliError(f"unknown queue {args.queue!r}", EX_USAGE) from exc
            except quarantine.QuarantineError as exc:
                raise CliError(str(exc), 1) from exc
            result = {"id": args.id, "ticket": ticket.number, "queue": ticket.queue}
    finally:
        processor.close()
        services.close()
    if args.json:
        print_json(result)
    else:
        print(f"{args.id}: released as ticket {result['ticket']} in queue {result['queue']}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    _runtime, services = open_services(load(args))
    try:
        with unit_of_work(services.factory) as session:
            _get(session, args.id)
            data = quarantine.raw_bytes(session, args.id)
    finally:
        services.close()
    sys.stdout.flush()
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()
    return 0


def _get(session: Any, inbound_id: int) -> InboundMessage:
    try:
        return quarantine.get(session, inbound_id)
    except quarantine.QuarantineError as exc:
        raise CliError(str(exc), 1) from exc


def _reset_one(session: Any, inbound_id: int) -> list[int]:
    try:
        return quarantine.reset_for_retry(session, [inbound_id])
    except quarantine.QuarantineError as exc:
        raise CliError(str(exc), 1) from exc
