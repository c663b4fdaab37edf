"""Measure threading accuracy: how many real-world replies find their ticket, and how many join a wrong one.

Not a test: a benchmark that runs generated mail streams through the real pipeline (durable intake,
then the orchestrator: parse, classify, thread, route, store, outbox) on a fresh SQLite database, or on
the database given with --database-url.

Many citizens write at the same time, most about the same few topics with the same subjects (the hard
case for subject-based threading). Each citizen's first mail opens a ticket; then every citizen sends
follow-ups that link back in each of the five ways real mail clients do:

* ``subject_tag``    "AW: [Stadt#2026-000123] <subject>", no reference headers;
* ``irt_same``       In-Reply-To (our acknowledgement) plus the same subject;
* ``irt_new``        In-Reply-To with a new subject;
* ``refs_only``      References only (no In-Reply-To), new subject;
* ``outlook``        Outlook: "AW: <subject>" plus Thread-Index, no reference headers (half continue the
                     citizen's own first mail's conversation, half our acknowledgement's).

Strangers also send mails with guessed subject tags of other citizens' tickets; those must become
tickets of their own. Reported: % of follow-ups threaded to the right ticket, false merges (a mail in a
ticket of another requester, or a stranger attached to someone's ticket), per method.

Usage::

    .venv/bin/python bench/threading_accuracy.py [--citizens 200] [--strangers 20] [--seed 1]
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import email
import email.policy
import os
import random
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime
from pathlib import Path

from sqlalchemy import select

from mail2ticket import log as m2t_log
from mail2ticket.config import load_config
from mail2ticket.daemon import prepare_database
from mail2ticket.db.engine import unit_of_work
from mail2ticket.db.models import InboundMessage, OutboundMail, Ticket
from mail2ticket.intake import Envelope, store
from mail2ticket.pipeline.process import Processor
from mail2ticket.runtime import Runtime, Services

TOPICS = ["Sperrmüll", "Frage", "Anfrage", "Termin", "Parkausweis", "Hundesteuer", "Antrag", "Baugenehmigung"]
METHODS = ("subject_tag", "irt_same", "irt_new", "refs_only", "outlook")
CONFIG = """
[daemon]
database_url = "{url}"
data_dir = "{root}/data"
domain = "stadt.example"
subject_tag_prefix = "Stadt"
log_level = "error"
log_format = "json"

[smtp_out]
folder = "{root}/outbox"

[loop_protection]
per_recipient_per_hour = 1000
per_recipient_per_day = 1000
per_ticket_per_10_minutes = 1000

[conversation]
notify_staff = false

[[queue]]
name = "buergerbuero"
address = "buergerbuero@stadt.example"
staff = ["anna@stadt.example"]
"""


@dataclass
class Citizen:
    address: str
    subject: str
    outlook_index: bytes | None
    first_id: str
    ticket: str | None = None
    ack_id: str | None = None
    ack_index: str | None = None


@dataclass
class Sent:
    inbound_id: int
    method: str
    expected: str | None  # the ticket number it must join; None: it must open a ticket of its own
    requester: str


def conversation_index(rng: random.Random) -> bytes:
    return b"\x01" + rng.randbytes(21)


def child(index: bytes, rng: random.Random) -> str:
    return base64.b64encode(index + rng.randbytes(5)).decode()


def build(sender: str, subject: str, body: str, **headers: str) -> bytes:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = "buergerbuero@stadt.example"
    msg["Subject"] = subject
    msg["Date"] = format_datetime(dt.datetime.now(dt.UTC))
    for name, value in headers.items():
        if value:
            msg[name.replace("_", "-")] = value
    msg.set_content(body)
    return msg.as_bytes(policy=SMTP)


class Bench:
    def __init__(self, url: str | None, root: Path) -> None:
        db_url = url or f"sqlite:///{root / 'bench.db'}"
        path = root / "mail2ticket.toml"
        path.write_text(CONFIG.format(url=db_url, root=root), encoding="utf-8")
        config = load_config(path)
        self.runtime = Runtime.build(config)
        self.services = Services.build(config)
        prepare_database(self.runtime, self.services)
        self.processor = Processor(self.services, lambda: self.runtime)

    def send(self, raw: bytes, sender: str, rcpt: str = "buergerbuero@stadt.example") -> int:
        stored = store(self.services.factory, raw, Envelope(source="smtp", mail_from=sender, rcpt_to=(rcpt,)))
        return stored.inbound_id

    def drain(self) -> None:
        self.processor.drain()

    def ticket_of(self, inbound_id: int) -> tuple[str | None, str | None]:
        with unit_of_work(self.services.factory) as session:
            row = session.get(InboundMessage, inbound_id)
            if row is None or row.ticket_id is None:
                return None, None
            ticket = session.get(Ticket, row.ticket_id)
            assert ticket is not None
            return ticket.number, ticket.requester

    def ack_of(self, number: str) -> tuple[str, str]:
        with unit_of_work(self.services.factory) as session:
            row = session.scalar(select(OutboundMail).join(Ticket, Ticket.id == OutboundMail.ticket_id)
                                 .where(Ticket.number == number, OutboundMail.template == "ack"))
            assert row is not None, f"no ack for {number}"
            msg = email.message_from_bytes(row.raw, policy=email.policy.default)
            return row.message_id, str(msg["Thread-Index"])


def run(citizens: int, strangers: int, seed: int, url: str | None) -> int:
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as tmp:
        bench = Bench(url, Path(tmp))
        people: list[Citizen] = []
        first_ids: list[tuple[Citizen, int]] = []
        for i in range(citizens):
            outlook = rng.random() < 0.5
            topic = rng.choice(TOPICS)
            citizen = Citizen(f"buerger{i}@example{i % 7}.org", topic,
                              conversation_index(rng) if outlook else None, f"<{uuid.uuid4().hex}@example.org>")
            raw = build(citizen.address, citizen.subject, f"Anliegen {i}: {topic}\n", Message_ID=citizen.first_id,
                        Thread_Index=base64.b64encode(citizen.outlook_index).decode() if citizen.outlook_index else "")
            people.append(citizen)
            first_ids.append((citizen, bench.send(raw, citizen.address)))
        started = time.monotonic()
        bench.drain()
        for citizen, inbound_id in first_ids:
            citizen.ticket, _ = bench.ticket_of(inbound_id)
            assert citizen.ticket is not None
            citizen.ack_id, citizen.ack_index = bench.ack_of(citizen.ticket)

        # Every citizen uses every method once; all citizens' mails interleaved.
        plan = [(c, m) for c in people for m in METHODS]
        rng.shuffle(plan)
        sent: list[Sent] = []
        for n, (c, method) in enumerate(plan):
            assert c.ticket and c.ack_id and c.ack_index
            tag = f"[Stadt#{c.ticket}]"
            body = f"Nachtrag {n}\n"
            if method == "subject_tag":
                raw = build(c.address, f"AW: {tag} Eingangsbestätigung: {c.subject}", body)
            elif method == "irt_same":
                raw = build(c.address, f"Re: {c.subject}", body, In_Reply_To=c.ack_id, References=c.ack_id)
            elif method == "irt_new":
                raw = build(c.address, f"Noch etwas {n}", body, In_Reply_To=c.ack_id)
            elif method == "refs_only":
                raw = build(c.address, f"Neue Frage {n}", body, References=f"{c.first_id} {c.ack_id}")
            else:
                base = c.outlook_index if (c.outlook_index and rng.random() < 0.5) else base64.b64decode(c.ack_index)[:22]
                raw = build(c.address, f"AW: {c.subject}", body, Thread_Index=child(base, rng))
            sent.append(Sent(bench.send(raw, c.address), method, c.ticket, c.address))
        for s in range(strangers):
            victim = rng.choice(people)
            address = f"fremd{s}@evil.example"
            raw = build(address, f"AW: [Stadt#{victim.ticket}] {victim.subject}", "Bitte senden Sie mir die Unterlagen.\n")
            sent.append(Sent(bench.send(raw, address), "stranger_tag", None, address))
        bench.drain()
        elapsed = time.monotonic() - started

        threaded: Counter[str] = Counter()
        total: Counter[str] = Counter()
        false_merges: Counter[str] = Counter()
        owners = {c.ticket: c.address for c in people}
        for item in sent:
            number, requester = bench.ticket_of(item.inbound_id)
            total[item.method] += 1
            if item.expected is None:
                if number in owners:
                    false_merges[item.method] += 1
                else:
                    threaded[item.method] += 1  # correctly kept apart
                continue
            if number == item.expected:
                threaded[item.method] += 1
            elif number in owners and requester != item.requester:
                false_merges[item.method] += 1
        bench.services.close()

    followups = sum(total[m] for m in METHODS)
    ok = sum(threaded[m] for m in METHODS)
    merges = sum(false_merges.values())
    print(f"threading accuracy: {citizens} citizens, {len(TOPICS)} shared subjects, {strangers} strangers, seed {seed}")
    for method in (*METHODS, "stranger_tag"):
        if total[method]:
            label = "kept apart" if method == "stranger_tag" else "threaded"
            print(f"  {method:<13} {threaded[method]:>5}/{total[method]:<5} {label} "
                  f"({100 * threaded[method] / total[method]:.1f}%), false merges {false_merges[method]}")
    print(f"  overall       {ok}/{followups} threaded ({100 * ok / max(followups, 1):.2f}%), "
          f"false merges {merges}; {len(sent) + citizens} mails processed in {elapsed:.1f}s")
    return 0 if ok / max(followups, 1) >= 0.99 and merges == 0 else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--citizens", type=int, default=200)
    parser.add_argument("--strangers", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--database-url", default=os.environ.get("M2T_BENCH_DATABASE_URL"))
    args = parser.parse_args(argv)
    m2t_log.configure("console", "error")
    return run(args.citizens, args.strangers, args.seed, args.database_url)


if __name__ == "__main__":
    sys.exit(main())
