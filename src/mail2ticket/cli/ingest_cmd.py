"""`mail2ticket ingest [PATH ...]`: store mail from files or stdin durably, then process it.

Meant for a Postfix pipe transport as well as by hand, and safe while the daemon runs (the database
arbitrates). Exit codes follow sysexits(3): 0 stored (a quarantined mail is stored too), 75 on a
temporary failure (Postfix keeps the mail and retries), 65 when the input is empty.

Input that does not look like a mail is still stored (and quarantined by the parse stage with that reason),
so nothing handed to us is lost; an admin can look at it with `mail2ticket quarantine show`. Many paths in
one call share one process and one parse worker, which is much faster than one call per file.
"""

from __future__ import annotations

import argparse
import sys

import structlog
from sqlalchemy.exc import DBAPIError, OperationalError

from mail2ticket.cli.common import EX_DATAERR, EX_NOINPUT, EX_OK, EX_TEMPFAIL, load, open_services, print_json
from mail2ticket.ingress.files import InputError, iter_inputs
from mail2ticket.intake import Envelope, store
from mail2ticket.parse_precheck import looks_like_mail
from mail2ticket.pipeline.process import Processor

log = structlog.get_logger("mail2ticket.ingest")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ingest = sub.add_parser("ingest", help="store and process mail from .eml/mbox/Maildir paths or stdin")
    ingest.add_argument("paths", nargs="*", help="files or folders; none means read one message from stdin")
    ingest.add_argument("--sender", default=None, help="envelope sender (Postfix: ${sender}); '' is the null sender")
    ingest.add_argument("--recipient", action="append", default=[],
                        help="envelope recipient (Postfix: ${original_recipient}); repeatable")
    ingest.add_argument("--queue-only", action="store_true", help="only store; the running daemon processes")
    ingest.add_argument("--json", action="store_true", help="print one result object per message")
    ingest.set_defaults(func=cmd_ingest)


def cmd_ingest(args: argparse.Namespace) -> int:
    config = load(args)
    try:
        runtime, services = open_services(config)
    except (OperationalError, DBAPIError) as exc:
        print(f"mail2ticket ingest: database unavailable ({type(exc).__name__}); try again later", file=sys.stderr)
        return EX_TEMPFAIL
    processor = Processor(services, lambda: runtime)
    results: list[dict[str, object]] = []
    code = EX_OK
    try:
        for item in iter_inputs(args.paths):
            if not item.data.strip():
                print(f"mail2ticket ingest: {item.origin}: empty input, nothing stored", file=sys.stderr)
                code = max(code, EX_DATAERR)
                continue
            if not looks_like_mail(item.data):
                print(f"mail2ticket ingest: {item.origin}: not an email message; kept in quarantine",
                      file=sys.stderr)
            envelope = Envelope(source="cli", mail_from=args.sender, rcpt_to=tuple(args.recipient))
            try:
                stored = store(services.factory, item.data, envelope)
            except (OperationalError, DBAPIError) as exc:
                print(f"mail2ticket ingest: {item.origin}: cannot store ({type(exc).__name__}); try again later",
                      file=sys.stderr)
                return EX_TEMPFAIL
            entry: dict[str, object] = {"origin": item.origin, "inbound_id": stored.inbound_id,
                                        "duplicate": stored.duplicate}
            if not args.queue_only and not stored.duplicate:
                result = processor.process_next(only=stored.inbound_id)
                if result is not None:
                    entry.update(state=result.state.value, ticket=result.ticket_number, reason=result.reason)
            results.append(entry)
    except InputError as exc:
        print(f"mail2ticket ingest: {exc}", file=sys.stderr)
        return EX_NOINPUT
    finally:
        processor.close()
        services.close()
    if args.json:
        print_json(results)
    return code
