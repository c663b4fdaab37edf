"""`mail2ticket tickets list|show|set-status`: read and change tickets from the shell."""

from __future__ import annotations

import argparse
import datetime as dt
from typing import Any

from mail2ticket.cli.common import CliError, iso, load, open_services, print_json, print_table
from mail2ticket.db import repo
from mail2ticket.db.engine import unit_of_work
from mail2ticket.db.models import Article, Event, Ticket




def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    tickets = sub.add_parser("tickets", help="list, show and change tickets")
    tsub = tickets.add_subparsers(dest="tickets_cmd", required=True)
    lst = tsub.add_parser("list", help="list tickets")
    lst.add_argument("--status")
    lst.add_argument("--queue")
    lst.add_argument("--since", type=dt.date.fromisoformat, help="created on or after this date (YYYY-MM-DD)")
    lst.add_argument("--requester")
    lst.add_argument("--json", action="store_true")
    lst.set_defaults(func=cmd_list)
    show = tsub.add_parser("show", help="show one ticket with its articles and events")
    show.add_argument("number")
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=cmd_show)
    st = tsub.add_parser("set-status", help="change a ticket's status")
    st.add_argument("number")
    st.add_argument("status")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=cmd_set_status)


def ticket_summary(ticket: Ticket, article_count: int) -> dict[str, Any]:
    return {
        "number": ticket.number,
        "queue": ticket.queue,
        "status": ticket.status,
        "priority": ticket.priority,
        "category": ticket.category,
        "tags": list(ticket.tags),
        "subject": ticket.subject,
        "requester": ticket.requester,
        "assignee": ticket.assignee,
        "created_at": iso(ticket.created_at),
        "updated_at": iso(ticket.updated_at),
        "articles": article_count,
    }


def article_json(article: Article) -> dict[str, Any]:
    return {
        "direction": article.direction,
        "kind": article.kind,
        "internal": article.internal,
        "sender": article.sender,
        "message_id": article.message_id,
        "subject": article.subject,
        "text": article.text,
        "new_text": article.new_text,
        "created_at": iso(article.created_at),
    }


def event_json(event: Event) -> dict[str, Any]:
    return {"type": event.type, "actor": event.actor, "detail": event.detail, "created_at": iso(event.created_at)}


def cmd_list(args: argparse.Namespace) -> int:
    config = load(args)
    _, services = open_services(config)
    since = dt.datetime.combine(args.since, dt.time(), dt.UTC) if args.since else None
    with unit_of_work(services.factory) as session:
        rows = [ticket_summary(t, n) for t, n in repo.list_tickets(
            session, status=args.status, queue=args.queue, since=since, requester=args.requester)]
    if args.json:
        print_json(rows)
    else:
        print_table([[r["number"], r["queue"], r["status"], r["priority"], str(r["requester"] or ""),
                      r["subject"][:60]] for r in rows],
                    ["NUMBER", "QUEUE", "STATUS", "PRIORITY", "REQUESTER", "SUBJECT"])
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    config = load(args)
    _, services = open_services(config)
    with unit_of_work(services.factory) as session:
        ticket = repo.ticket_by_number(session, args.number)
        if ticket is None:
            raise CliError(f"no ticket {args.number}", 1)
        arts = repo.articles(session, ticket.id)
        data = ticket_summary(ticket, len(arts))
        data["articles"] = [article_json(a) for a in arts]
        data["events"] = [event_json(e) for e in repo.events(session, ticket.id)]
        data["participants"] = [{"address": p.address, "role": p.role}
                                for p in repo.participants(session, ticket.id)]
    if args.json:
        print_json(data)
        return 0
    print(f"Ticket {data['number']}  [{data['queue']}]  {data['status']}  priority {data['priority']}")
    print(f"Subject:   {data['subject']}")
    print(f"Requester: {data['requester']}")
    for art in data["articles"]:
        arrow = "<-" if art["direction"] == "in" else "->"
        print(f"\n{arrow} {art['created_at']}  {art['sender']}  ({art['kind']})\n{art['new_text'] or art['text']}")
    print("\nEvents:")
    for ev in data["events"]:
        print(f"  {ev['created_at']}  {ev['type']}  {ev['actor'] or ''}")
    return 0


def cmd_set_status(args: argparse.Namespace) -> int:
    from mail2ticket.workflow import change_status

    config = load(args)
    runtime, services = open_services(config)
    with unit_of_work(services.factory) as session:
        ticket = repo.ticket_by_number(session, args.number)
        if ticket is None:
            raise CliError(f"no ticket {args.number}", 1)
        change_status(session, runtime, ticket, args.status, actor="cli", via="cli", now=services.clock())
        data = ticket_summary(ticket, len(repo.articles(session, ticket.id)))
    if args.json:
        print_json(data)
    else:
        print(f"{data['number']}: status is now {data['status']}")
    return 0
