"""`mail2ticket purge [--dry-run]`: apply the retention rules (per queue and `[operations]`) now.

Meant for a daily timer. Each ticket is purged in its own short transaction with an event recording
what was removed, so an interrupted run is simply continued by the next one and the daemon is never
blocked for long. Afterwards the database file is compacted (SQLite VACUUM) so the deleted mail is
gone from disk, not just unlinked.
"""

from __future__ import annotations

import argparse
from typing import Any

from mail2ticket.cli.common import load, open_services, print_json
from mail2ticket.db.engine import unit_of_work
from mail2ticket.progress import Progress
from mail2ticket.retention import compact, plan_purge, purge_ticket, purge_unticketed, remove_outbox_files


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    purge = sub.add_parser("purge", help="apply retention: delete raw mail, anonymise old tickets")
    purge.add_argument("--dry-run", action="store_true", help="only show what would be purged")
    purge.add_argument("--no-compact", action="store_true",
                       help="skip VACUUM afterwards (deleted bytes stay in free pages until the next one)")
    purge.add_argument("--json", action="store_true")
    purge.set_defaults(func=cmd_purge)


def cmd_purge(args: argparse.Namespace) -> int:
    config = load(args)
    _, services = open_services(config)
    now = services.clock()
    results: list[dict[str, Any]] = []
    unticketed = 0
    files = 0
    try:
        with unit_of_work(services.factory) as session:
            plan = plan_purge(session, config, now)
        if not args.dry_run:
            with Progress(len(plan.tickets) + (1 if plan.unticketed else 0), "purging") as bar:
                for item in plan.tickets:
                    with unit_of_work(services.factory) as session:
                        counts, message_ids = purge_ticket(session, item, now)
                    if config.smtp_out.delivery == "folder":
                        files += remove_outbox_files(config.smtp_out.folder, message_ids)
                    results.append({**item.as_json(), "removed": counts})
                    bar.advance()
                if plan.unticketed:
                    with unit_of_work(services.factory) as session:
                        unticketed = purge_unticketed(session, plan.unticketed)
                    bar.advance()
            if (plan.tickets or plan.unticketed) and not args.no_compact:
                compact(services.engine)
        else:
            results = [item.as_json() for item in plan.tickets]
            unticketed = len(plan.unticketed)
    finally:
        services.close()
    summary = {"dry_run": args.dry_run, "tickets": results, "unticketed_messages_deleted": unticketed,
               "outbox_files_deleted": files}
    if args.json:
        print_json(summary)
        return 0
    verb = "would purge" if args.dry_run else "purged"
    for entry in results:
        print(f"{entry['ticket']}  [{entry['queue']}]  closed {entry['closed_at'][:10]}  {', '.join(entry['actions'])}")
    print(f"{verb} {len(results)} ticket(s); {unticketed} intake message(s) without a ticket "
          f"{'would be ' if args.dry_run else ''}deleted")
    return 0
