"""`mail2ticket stats`: per-queue summary for the weekly look (open tickets, median age, tickets per day).

"Open" means not in `[conversation] closed_status`. Ages are measured from ticket creation (for archive
imports: the mail's own date). Runs only read queries, safe while the daemon runs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
from typing import Any

from sqlalchemy import func, select

from mail2ticket.cli.common import load, open_services, print_json, print_table
from mail2ticket.db.engine import unit_of_work
from mail2ticket.db.models import InboundMessage, InboundState, OutboundMail, OutboundState, Ticket


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    stats = sub.add_parser("stats", help="per-queue summary: open tickets, median age, tickets per day")
    stats.add_argument("--days", type=int, default=30, help="window for 'tickets per day' (default 30)")
    stats.add_argument("--json", action="store_true")
    stats.set_defaults(func=cmd_stats)


def _days(seconds: float) -> float:
    return round(seconds / 86400, 1)


def cmd_stats(args: argparse.Namespace) -> int:
    config = load(args)
    _, services = open_services(config)
    now = services.clock()
    window = max(1, args.days)
    since = now - dt.timedelta(days=window)
    closed = config.conversation.closed_status
    try:
        with unit_of_work(services.factory) as session:
            open_created: dict[str, list[dt.datetime]] = {}
            for queue, created in session.execute(
                    select(Ticket.queue, Ticket.created_at).where(Ticket.status != closed)):
                open_created.setdefault(queue, []).append(created)
            recent = dict(session.execute(select(Ticket.queue, func.count()).where(
                Ticket.created_at >= since).group_by(Ticket.queue)).all())
            total = dict(session.execute(select(Ticket.queue, func.count()).group_by(Ticket.queue)).all())
            backlog = session.scalar(select(func.count()).select_from(InboundMessage).where(
                InboundMessage.state == InboundState.NEW)) or 0
            quarantined = session.scalar(select(func.count()).select_from(InboundMessage).where(
                InboundMessage.state == InboundState.QUARANTINED)) or 0
            outbox = dict(session.execute(select(OutboundMail.state, func.count()).group_by(OutboundMail.state))
                          .all())
    finally:
        services.close()
    names = [q.name for q in config.queue]
    names += sorted(set(total) - set(names))  # tickets of a queue since removed from the config
    queues: list[dict[str, Any]] = []
    for name in names:
        ages = [(now - c).total_seconds() for c in open_created.get(name, [])]
        queues.append({
            "queue": name,
            "open": len(ages),
            "median_open_age_days": _days(statistics.median(ages)) if ages else None,
            "oldest_open_age_days": _days(max(ages)) if ages else None,
            "tickets_total": int(total.get(name, 0)),
            f"created_last_{window}_days": int(recent.get(name, 0)),
            "tickets_per_day": round(int(recent.get(name, 0)) / window, 2),
        })
    data = {"generated_at": now.isoformat(), "window_days": window, "queues": queues,
            "intake_backlog": int(backlog), "quarantined": int(quarantined),
            "outbox": {s.value: int(outbox.get(s, 0)) for s in OutboundState}}
    if args.json:
        print_json(data)
        return 0
    print_table([[q["queue"], str(q["open"]), _fmt(q["median_open_age_days"]), _fmt(q["oldest_open_age_days"]),
                  str(q["tickets_per_day"]), str(q["tickets_total"])] for q in queues],
                ["QUEUE", "OPEN", "MEDIAN AGE (d)", "OLDEST (d)", f"PER DAY ({window}d)", "TOTAL"])
    print(f"\nintake backlog {backlog}, quarantined {quarantined}, outbox "
          + ", ".join(f"{k} {v}" for k, v in data["outbox"].items()))
    return 0


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"
