"""`mail2ticket import PATH...`: move a backlog (mbox files, Maildir folders, .eml files) into tickets.

Every message goes through the same intake as live mail, so intake's dedupe makes a re-import (or an
import of mail that already arrived over SMTP/IMAP) harmless: known messages are counted as duplicates
and not processed again. Messages stored by an interrupted run are processed by the next one.

`--archive` is for moving a department's old mailbox: tickets keep the mails' own dates and no
acknowledgement or status mail goes out. Without it, imported mail is treated like mail arriving now.
`--queue NAME` files mail under that queue's address, for mailboxes whose To: headers name people.
Mail that was already waiting for processing is processed along with the import; the summary counts only the
messages the import read.
"""

from __future__ import annotations

import argparse
import collections
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from mail2ticket.cli.common import (
    EX_DATAERR,
    EX_NOINPUT,
    EX_OK,
    EX_TEMPFAIL,
    CliError,
    load,
    open_services,
    print_json,
)
from mail2ticket.db.models import InboundState
from mail2ticket.handoff import produced_ahead
from mail2ticket.ingress.files import InputError, RawInput, count_inputs, iter_inputs
from mail2ticket.intake import Envelope, Prepared, prepare, store_many
from mail2ticket.parse_precheck import looks_like_mail
from mail2ticket.pipeline.process import Processor, Result
from mail2ticket.progress import Progress


# Messages read and stored ahead, then processed as one batch; bounded in bytes as well (memory).
CHUNK_MESSAGES = 256
CHUNK_BYTES = 32 << 20
# Messages per intake transaction: short, so processing, which runs at the same time, seldom waits for the lock.
STORE_MESSAGES = 64


@dataclass
class _Reading:
    """What the reading side counts (the processing side counts its results itself)."""

    messages: int = 0
    not_mail: int = 0
    stored: int = 0
    duplicates: int = 0


def _stored_chunks(factory: sessionmaker[Session], paths: list[str], envelope: Envelope, bar: Progress,
                   reading: _Reading) -> Iterator[list[int]]:
    """Read, prepare and store the inputs chunk by chunk; the intake ids of each chunk (duplicates included)."""
    for chunk in _chunks(iter_inputs(paths)):
        prepared: list[Prepared] = []
        for item in chunk:
            bar.advance()
            reading.messages += 1
            if not looks_like_mail(item.data):
                print(f"\nmail2ticket import: {item.origin}: not an email message, skipped", file=sys.stderr)
                reading.not_mail += 1
                continue
            prepared.append(prepare(item.data, envelope))
        del chunk
        stored = [result for start in range(0, len(prepared), STORE_MESSAGES)
                  for result in store_many(factory, prepared[start:start + STORE_MESSAGES])]
        del prepared
        reading.duplicates += sum(s.duplicate for s in stored)
        reading.stored += sum(not s.duplicate for s in stored)
        if stored:
            yield [s.inbound_id for s in stored]


def _chunks(items: Iterable[RawInput]) -> Iterator[list[RawInput]]:
    chunk: list[RawInput] = []
    size = 0
    for item in items:
        chunk.append(item)
        size += len(item.data)
        if len(chunk) >= CHUNK_MESSAGES or size >= CHUNK_BYTES:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


def _process_all(processor: Processor, chunks: Iterable[list[int]]) -> Iterator[Result]:
    """Process the messages of every chunk as it is stored; the outcome of each of them, once.

    Processing takes whatever waits, in arrival order, so its parse-ahead stream runs on from one chunk into the
    next, which is stored meanwhile (optimisation 33). Results of messages that no chunk has named yet wait in
    `early` (a later chunk's, or not this import's: those are dropped once a chunk with higher ids has come); a
    deferred message's result is given only at the end, unless it is processed again meanwhile.
    """
    early: dict[int, Result] = {}
    deferred: dict[int, Result] = {}

    def outcome(result: Result) -> Iterator[Result]:
        if result.state == InboundState.NEW:
            deferred[result.inbound_id] = result
        else:
            deferred.pop(result.inbound_id, None)
            yield result

    for ids in chunks:
        pending = set(ids)
        for inbound_id in ids:
            if (result := early.pop(inbound_id, None)) is not None:
                pending.discard(inbound_id)
                yield from outcome(result)
        while pending and (batch := processor.process_batch()):
            for result in batch:
                if result.inbound_id in pending or result.inbound_id in deferred:
                    pending.discard(result.inbound_id)
                    yield from outcome(result)
                else:
                    early[result.inbound_id] = result
        newest = max(ids)
        early = {inbound_id: result for inbound_id, result in early.items() if inbound_id > newest}
    yield from deferred.values()


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    imp = sub.add_parser("import", help="import an mbox/Maildir/.eml backlog into tickets (re-import is harmless)")
    imp.add_argument("paths", nargs="+", help="mbox files, Maildir folders, .eml files or folders of them")
    imp.add_argument("--archive", action="store_true",
                     help="old mail: keep the mails' dates, send no acknowledgements or status mails")
    imp.add_argument("--queue", help="file every message under this queue (as if sent to its address)")
    imp.add_argument("--queue-only", action="store_true", help="only store; the running daemon processes")
    imp.add_argument("--json", action="store_true", help="print a summary object instead of text")
    imp.set_defaults(func=cmd_import)


def cmd_import(args: argparse.Namespace) -> int:
    config = load(args)
    rcpt: tuple[str, ...] = ()
    if args.queue:
        try:
            rcpt = (config.queue_by_name(args.queue).address,)
        except KeyError:
            raise CliError(f"no queue {args.queue!r}; known: {', '.join(q.name for q in config.queue)}", 64) from None
    try:
        total = count_inputs(args.paths)
    except (OSError, InputError) as exc:
        print(f"mail2ticket import: {exc}", file=sys.stderr)
        return EX_NOINPUT
    runtime, services = open_services(config)
    processor = Processor(services, lambda: runtime)
    processor.start_workers()  # their start-up overlaps the reading and storing of the first chunk
    envelope = Envelope(source="cli", rcpt_to=rcpt, archive=args.archive)
    reading = _Reading()
    counts: Counter[str] = Counter()
    tickets: set[str] = set()
    try:
        with Progress(total, "importing") as bar:
            chunks = _stored_chunks(services.factory, args.paths, envelope, bar, reading)
            if args.queue_only:  # stored only: the running daemon processes them
                collections.deque(chunks, maxlen=0)
            else:
                # Duplicates may still be waiting (an interrupted earlier run): they are processed with the rest.
                for result in _process_all(processor, produced_ahead(chunks, name="import-read")):
                    counts[result.state.value] += 1
                    if result.ticket_number:
                        tickets.add(result.ticket_number)
    except InputError as exc:
        print(f"mail2ticket import: {exc}", file=sys.stderr)
        return EX_NOINPUT
    except (OperationalError, DBAPIError) as exc:
        print(f"mail2ticket import: database unavailable ({type(exc).__name__}); run the same import again "
              "later, it continues where it stopped", file=sys.stderr)
        return EX_TEMPFAIL
    finally:
        processor.close()
        services.close()
    summary: dict[str, Any] = {
        "messages": reading.messages, "stored": reading.stored, "duplicates": reading.duplicates,
        "processed": counts["done"], "ignored": counts["ignored"], "quarantined": counts["quarantined"],
        "deferred": counts["new"], "not_mail": reading.not_mail, "tickets_touched": len(tickets),
        "archive": args.archive,
    }
    if args.json:
        print_json(summary)
    else:
        print(f"{summary['messages']} message(s): {summary['stored']} new, {summary['duplicates']} already known; "
              f"{summary['processed']} into tickets ({summary['tickets_touched']} tickets), "
              f"{summary['ignored']} ignored, {summary['quarantined']} quarantined")
    return EX_DATAERR if reading.not_mail else EX_OK
