"""`mail2ticket outbox list|retry`: see what the outbox holds and send failed mails again.

`retry` puts mails back into `queued` with an immediate next attempt and a fresh give-up horizon (the
worker gives up `give_up_after_hours` after `created_at`, so that is reset); the running daemon (or the
next start) sends them with their original bytes and Message-ID. Every retry is an event on the ticket.
"""

from __future__ import annotations

import argparse
from typing import Any

from sqlalchemy import func, select

from mail2ticket.cli.common import CliError, iso, load, open_services, print_json, print_table
from mail2ticket.db.engine import unit_of_work
from mail2ticket.db.models import Event, OutboundMail, OutboundState, Ticket
from mail2ticket.outbox.journal import journal_path, read_entries
from mail2ticket.outbox.worker import record_journaled

STATES = [s.value for s in OutboundState]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    outbox = sub.add_parser("outbox", help="list outbound mails, retry failed ones")
    osub = outbox.add_subparsers(dest="outbox_cmd", required=True)
    lst = osub.add_parser("list", help="list outbound mails (default: all not yet sent)")
    lst.add_argument("--state", choices=STATES, action="append",
                     help="only this state (repeatable; default: queued, sending, failed)")
    lst.add_argument("--all", action="store_true", help="every state, including sent")
    lst.add_argument("--limit", type=int, default=200, help="at most this many rows, newest first (default 200)")
    lst.add_argument("--json", action="store_true")
    lst.set_defaults(func=cmd_list)
    retry = osub.add_parser("retry", help="queue failed (or stuck) mails for an immediate new attempt")
    retry.add_argument("ids", nargs="*", type=int, help="outbound mail ids (see `outbox list`)")
    retry.add_argument("--all-failed", action="store_true", help="every mail in state failed")
    retry.add_argument("--json", action="store_true")
    retry.set_defaults(func=cmd_retry)


def row_json(row: OutboundMail, number: str | None) -> dict[str, Any]:
    return {
        "id": row.id,
        "ticket": number,
        "template": row.template,
        "recipient": row.recipient,
        "state": str(row.state),
        "attempts": row.attempts,
        "next_attempt_at": iso(row.next_attempt_at) if row.state == OutboundState.QUEUED else None,
        "last_error": row.last_error,
        "message_id": row.message_id,
        "created_at": iso(row.created_at),
        "sent_at": iso(row.sent_at),
    }


def cmd_list(args: argparse.Namespace) -> int:
    config = load(args)
    _, services = open_services(config)
    states = STATES if args.all else (args.state or ["queued", "sending", "failed"])
    try:
        with unit_of_work(services.factory) as session:
            stmt = (select(OutboundMail, Ticket.number).outerjoin(Ticket, Ticket.id == OutboundMail.ticket_id)
                    .where(OutboundMail.state.in_(states)).order_by(OutboundMail.id.desc()).limit(args.limit))
            rows = [row_json(r, n) for r, n in session.execute(stmt)]
            totals = dict(session.execute(select(OutboundMail.state, func.count()).group_by(OutboundMail.state))
                          .all())
    finally:
        services.close()
    if args.json:
        print_json(rows)
        return 0
    print_table([[str(r["id"]), r["state"], str(r["attempts"]), r["ticket"] or "-", r["template"], r["recipient"],
                  (r["last_error"] or "")[:50]] for r in rows],
                ["ID", "STATE", "TRIES", "TICKET", "TEMPLATE", "RECIPIENT", "LAST ERROR"])
    print("\n" + ", ".join(f"{state.value}: {totals.get(state, 0)}" for state in OutboundState))
    return 0


def cmd_retry(args: argparse.Namespace) -> int:
    if not args.ids and not args.all_failed:
        raise CliError("name outbound mail ids or use --all-failed", 64)
    config = load(args)
    _, services = open_services(config)
    now = services.clock()
    retried: list[dict[str, Any]] = []
    try:
        with unit_of_work(services.factory) as session:
            # A mail sent just before a crash may be recorded only in the delivery journal: it looks stuck.
            if (journal := journal_path(services.engine)) is not None:
                record_journaled(session, read_entries(journal))
            stmt = select(OutboundMail)
            stmt = stmt.where(OutboundMail.state == OutboundState.FAILED) if args.all_failed else \
                stmt.where(OutboundMail.id.in_(args.ids))
            rows = list(session.scalars(stmt.order_by(OutboundMail.id)))
            missing = set(args.ids) - {r.id for r in rows}
            if missing:
                raise CliError(f"no outbound mail with id {', '.join(map(str, sorted(missing)))}", 1)
            for row in rows:
                if row.state == OutboundState.SENT:
                    raise CliError(f"outbound mail {row.id} was already sent; not sending it twice", 1)
                if row.state == OutboundState.SENDING and row.claim_expires_at and row.claim_expires_at > now:
                    raise CliError(f"outbound mail {row.id} is being sent right now; try again later", 75)
                previous = str(row.state)
                row.state = OutboundState.QUEUED
                row.next_attempt_at = now
                row.created_at = now  # a fresh give-up horizon
                row.claimed_by = None
                row.claim_expires_at = None
                session.add(Event(ticket_id=row.ticket_id, type="mail_retried", actor="cli", created_at=now,
                                  detail={"outbound_id": row.id, "previous_state": previous,
                                          "template": row.template}))
                retried.append({"id": row.id, "previous_state": previous, "state": "queued"})
    finally:
        services.close()
    if args.json:
        print_json(retried)
    else:
        print(f"{len(retried)} mail(s) queued for a new attempt")
    return 0
