"""`mail2ticket person export|erase ADDRESS`: data-subject requests (GDPR Art. 15 and Art. 17).

`export` always writes JSON (it is a machine-readable copy for the person; `--json` is accepted for
symmetry): every ticket the address is part of, with articles, attachment metadata, participants and
events, the mails sent to it and intake messages from it that never became a ticket.

`erase` deletes the tickets the person requested (with everything attached), what they wrote into other
tickets and what was sent to them, scrubs their address and names from what stays, removes matching
files from the outbox folder, and compacts the database so the bytes are gone from disk. It asks for
confirmation on a terminal; scripts pass `--yes`. Backups keep the data until they age out.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

from sqlalchemy import select

from mail2ticket.cli.common import CliError, iso, load, open_services, print_json
from mail2ticket.db.engine import unit_of_work
from mail2ticket.db.models import (
    Article,
    Attachment,
    Event,
    InboundMessage,
    OutboundMail,
    Participant,
    Ticket,
)
from mail2ticket.erasure import Footprint, erase_person, find_person
from mail2ticket.retention import compact, remove_outbox_files


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    person = sub.add_parser("person", help="GDPR requests: export (Art. 15) or erase (Art. 17) a person's data")
    psub = person.add_subparsers(dest="person_cmd", required=True)
    exp = psub.add_parser("export", help="everything stored about ADDRESS, as JSON")
    exp.add_argument("address")
    exp.add_argument("--output", "-o", help="write to this file (mode 0600) instead of stdout")
    exp.add_argument("--json", action="store_true", help="accepted for symmetry; the export is always JSON")
    exp.set_defaults(func=cmd_export)
    era = psub.add_parser("erase", help="delete and scrub everything about ADDRESS")
    era.add_argument("address")
    era.add_argument("--dry-run", action="store_true", help="only show what would be affected")
    era.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    era.add_argument("--json", action="store_true")
    era.set_defaults(func=cmd_erase)


def _address(value: str) -> str:
    address = value.strip().lower()
    if not re.fullmatch(r"[^@\s]+@[^@\s]+", address):
        raise CliError(f"{value!r} is not a mail address", 64)
    return address


def export_data(session: Any, fp: Footprint) -> dict[str, Any]:
    tickets = []
    for ticket in session.scalars(select(Ticket).where(Ticket.id.in_(fp.requested + fp.involved or [-1]))
                                  .order_by(Ticket.id)):
        articles = []
        for article in session.scalars(select(Article).where(Article.ticket_id == ticket.id).order_by(Article.id)):
            atts = session.scalars(select(Attachment).where(Attachment.article_id == article.id)).all()
            articles.append({
                "direction": article.direction, "sender": article.sender, "sender_name": article.sender_name,
                "recipients": list(article.recipients), "subject": article.subject, "text": article.text,
                "created_at": iso(article.created_at), "message_id": article.message_id,
                "attachments": [{"filename": a.filename, "content_type": a.content_type, "size": a.size,
                                 "sha256": a.sha256} for a in atts],
            })
        tickets.append({
            "number": ticket.number, "queue": ticket.queue, "status": ticket.status, "subject": ticket.subject,
            "role": "requester" if ticket.id in fp.requested else "involved",
            "requester": ticket.requester, "requester_name": ticket.requester_name,
            "created_at": iso(ticket.created_at), "closed_at": iso(ticket.closed_at),
            "participants": [{"address": p.address, "name": p.name, "role": p.role} for p in session.scalars(
                select(Participant).where(Participant.ticket_id == ticket.id))],
            "articles": articles,
            "events": [{"type": e.type, "actor": e.actor, "detail": e.detail, "created_at": iso(e.created_at)}
                       for e in session.scalars(select(Event).where(Event.ticket_id == ticket.id).order_by(Event.id))],
        })
    outbound = [{"ticket_id": o.ticket_id, "template": o.template, "recipient": o.recipient, "state": str(o.state),
                 "message_id": o.message_id, "created_at": iso(o.created_at), "sent_at": iso(o.sent_at)}
                for o in session.scalars(select(OutboundMail).where(OutboundMail.id.in_(fp.outbound or [-1])))]
    intake = [{"id": m.id, "received_at": iso(m.received_at), "state": str(m.state), "reason": m.reason,
               "envelope_from": m.envelope_from, "message_id": m.message_id, "size": m.size}
              for m in session.scalars(select(InboundMessage).where(
                  InboundMessage.id.in_(fp.inbound or [-1]), InboundMessage.ticket_id.is_(None)))]
    return {"address": fp.address, "names": fp.names, "tickets": tickets, "outbound_mails": outbound,
            "messages_without_ticket": intake}


def cmd_export(args: argparse.Namespace) -> int:
    address = _address(args.address)
    config = load(args)
    _, services = open_services(config)
    try:
        with unit_of_work(services.factory) as session:
            data = {"generated_at": services.clock().isoformat(), **export_data(session, find_person(session, address))}
    finally:
        services.close()
    if args.output:
        path = Path(args.output)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, ensure_ascii=False, indent=2, default=str)
        print(f"wrote {path} ({len(data['tickets'])} ticket(s))", file=sys.stderr)
    else:
        print_json(data)
    return 0


def _summary(fp: Footprint) -> dict[str, int]:
    return {"tickets_requested": len(fp.requested), "tickets_involved": len(fp.involved),
            "outbound_mails": len(fp.outbound), "intake_messages": len(fp.inbound),
            "attachments": len(fp.attachments)}


def cmd_erase(args: argparse.Namespace) -> int:
    address = _address(args.address)
    config = load(args)
    _, services = open_services(config)
    try:
        with unit_of_work(services.factory) as session:
            preview = _summary(find_person(session, address))
        if args.dry_run:
            print_json({"dry_run": True, "address": address, **preview}) if args.json else print(
                f"would erase {address}: " + ", ".join(f"{k} {v}" for k, v in preview.items()))
            return 0
        if not args.yes:
            if not sys.stdin.isatty():
                raise CliError("erasing cannot be undone; confirm with --yes", 64)
            answer = input(f"Erase all data of {address} ({preview['tickets_requested']} own tickets)? [y/N] ")
            if answer.strip().lower() not in ("y", "yes", "j", "ja"):
                print("nothing erased", file=sys.stderr)
                return 1
        with unit_of_work(services.factory) as session:
            result = erase_person(session, find_person(session, address), services.clock())
        files = remove_outbox_files(config.smtp_out.folder, result.outbound_message_ids, address) \
            if config.smtp_out.delivery == "folder" else 0
        compact(services.engine)
    finally:
        services.close()
    data = {"address": address, **result.as_json(), "outbox_files_deleted": files}
    if args.json:
        print_json(data)
    else:
        print(f"erased {address}: " + ", ".join(f"{k} {v}" for k, v in data.items() if k != "address"))
    return 0
