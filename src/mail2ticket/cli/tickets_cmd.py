"""`mail2ticket tickets list|show|set-status|reply`: read and change tickets from the shell.

`set-status` is the same workflow as `#status` by mail (event, status mail to the participants);
`reply` sends staff text to the requester from the queue address, like a staff reply by mail.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
from collections.abc import Iterator
from typing import Any

from mail2ticket.cli.common import CliError, iso, load, open_services, print_json, print_table
from mail2ticket.config import Config
from mail2ticket.db import conversation_repo, repo
from mail2ticket.db.engine import unit_of_work
from mail2ticket.db.models import Article, Attachment, Event, OutboundMail, Ticket
from mail2ticket.runtime import Runtime, Services


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
    st.add_argument("--no-mail", action="store_true", help="change the status without a status mail")
    st.set_defaults(func=cmd_set_status)
    rp = tsub.add_parser("reply", help="send a reply to the requester (text from --text or stdin)")
    rp.add_argument("number")
    rp.add_argument("--text", help="the reply text; without it, read from stdin")
    rp.add_argument("--as", dest="actor", default="cli", help="who writes (recorded in the event)")
    rp.add_argument("--json", action="store_true")
    rp.set_defaults(func=cmd_reply)


@contextlib.contextmanager
def opened(config: Config) -> Iterator[tuple[Runtime, Services]]:
    """Runtime and services for one command; the engine is disposed afterwards (no connection left open)."""
    runtime, services = open_services(config)
    try:
        yield runtime, services
    finally:
        services.close()


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
        "language": ticket.language,
        "created_at": iso(ticket.created_at),
        "updated_at": iso(ticket.updated_at),
        "articles": article_count,
    }


def article_json(article: Article, attachments: list[Attachment] | None = None) -> dict[str, Any]:
    return {
        "direction": article.direction,
        "kind": article.kind,
        "internal": article.internal,
        "sender": article.sender,
        "message_id": article.message_id,
        "subject": article.subject,
        "text": article.text,
        "new_text": article.new_text,
        "html": article.html,
        "attachments": [{"filename": a.filename, "content_type": a.content_type, "size": a.size, "sha256": a.sha256}
                        for a in attachments or []],
        "created_at": iso(article.created_at),
    }


def outbound_json(row: OutboundMail) -> dict[str, Any]:
    return {"template": row.template, "recipient": row.recipient, "state": str(row.state),
            "message_id": row.message_id, "created_at": iso(row.created_at)}


def event_json(event: Event) -> dict[str, Any]:
    return {"type": event.type, "actor": event.actor, "detail": event.detail, "created_at": iso(event.created_at)}


def cmd_list(args: argparse.Namespace) -> int:
    config = load(args)
    since = dt.datetime.combine(args.since, dt.time(), dt.UTC) if args.since else None
    with opened(config) as (_, services), unit_of_work(services.factory) as session:
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
    with opened(config) as (_, services), unit_of_work(services.factory) as session:
        ticket = repo.ticket_by_number(session, args.number)
        if ticket is None:
            raise CliError(f"no ticket {args.number}", 1)
        arts = repo.articles(session, ticket.id)
        data = ticket_summary(ticket, len(arts))
        files = conversation_repo.attachments_by_article(session, [a.id for a in arts])
        data["articles"] = [article_json(a, files.get(a.id)) for a in arts]
        data["events"] = [event_json(e) for e in repo.events(session, ticket.id)]
        data["participants"] = [{"address": p.address, "role": p.role}
                                for p in repo.participants(session, ticket.id)]
        linked = repo.ticket_by_id(session, ticket.linked_ticket_id) if ticket.linked_ticket_id else None
        data["linked_ticket"] = linked.number if linked is not None else None
        data["outbound"] = [outbound_json(r) for r in conversation_repo.outbound_rows(session, ticket.id)]
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
    from mail2ticket.workflow import WorkflowError, change_status

    config = load(args)
    with opened(config) as (runtime, services), unit_of_work(services.factory) as session:
        ticket = repo.ticket_by_number(session, args.number)
        if ticket is None:
            raise CliError(f"no ticket {args.number}", 1)
        try:
            change_status(session, runtime, ticket, args.status, actor="cli", via="cli", now=services.clock(),
                          notify=not args.no_mail)
        except WorkflowError as exc:
            raise CliError(str(exc), 1) from None
        data = ticket_summary(ticket, len(repo.articles(session, ticket.id)))
    if args.json:
        print_json(data)
    else:
        print(f"{data['number']}: status is now {data['status']}")
    return 0


def cmd_reply(args: argparse.Namespace) -> int:
    import sys

    from mail2ticket.pipeline.staff import send_reply

    text = args.text if args.text is not None else sys.stdin.read()
    if not text.strip():
        raise CliError("the reply text is empty", 1)
    config = load(args)
    with opened(config) as (runtime, services), unit_of_work(services.factory) as session:
        now = services.clock()
        ticket = repo.ticket_by_number(session, args.number)
        if ticket is None:
            raise CliError(f"no ticket {args.number}", 1)
        article = send_reply(session, runtime, ticket, text.strip(), staff_address=args.actor, staff_name=None,
                             now=now, key=f"cli:{now.isoformat()}")
        if article is None:
            raise CliError(f"ticket {args.number} has no participant to reply to", 1)
        recipients = list(article.recipients)
        data = {"number": ticket.number, "message_id": article.message_id, "recipients": recipients}
    if args.json:
        print_json(data)
    else:
        print(f"{ticket.number}: reply queued for {', '.join(recipients)}")
    return 0
