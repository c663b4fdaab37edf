"""Prometheus metrics of one daemon process (operations edge, no pipeline stage).

`Metrics()` owns a private `CollectorRegistry`: nothing is registered globally at import, so tests and
CLI commands never share state. The daemon counts where things happen in this process (intake, the
processing and outbox step wrappers) and refreshes the gauges from the database (`Snapshot`), which is
the truth for backlogs shared by several instances.

Counters carry the labels an operator filters by: `mailbox` (the IMAP mailbox, or the ingress channel such
as "smtp" when the mail came from the relay), `queue` and `classification` (human, auto-reply, bounce, list).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.process_collector import ProcessCollector
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from mail2ticket.db.engine import read_only
from mail2ticket.db.models import (
    ActionState,
    ImapAction,
    InboundMessage,
    InboundState,
    OutboundMail,
    OutboundState,
    Ticket,
)
from mail2ticket.db.write_gate import LockUsage

CONTENT_TYPE = CONTENT_TYPE_LATEST

# Seconds; from "the relay is still connected" up to "processed the next day after an outage".
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 24 * 3600)


def channel(source: str | None, mailbox: str | None) -> str:
    """The `mailbox` label: the IMAP mailbox name, else the ingress channel (smtp, lmtp, cli)."""
    return mailbox or source or "unknown"


class Metrics:
    """All metric families of mail2ticket on one private registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        ProcessCollector(registry=r)  # yields nothing where /proc is hidden (ProcSubset=pid)
        self.received = Counter("mail2ticket_messages_received", "Messages committed by intake.",
                                ["mailbox", "duplicate"], registry=r)
        self.processed = Counter("mail2ticket_messages_processed", "Messages that became a ticket or an article.",
                                 ["mailbox", "queue", "classification"], registry=r)
        self.ignored = Counter("mail2ticket_messages_ignored", "Messages deliberately not turned into tickets.",
                               ["mailbox", "classification"], registry=r)
        self.quarantined = Counter("mail2ticket_messages_quarantined", "Messages parked for a human.",
                                   ["mailbox", "classification"], registry=r)
        self.deferred = Counter("mail2ticket_messages_deferred", "Processing attempts deferred by a transient error.",
                                ["mailbox"], registry=r)
        self.sent = Counter("mail2ticket_mails_sent", "Outbound mails accepted by the smarthost or folder.",
                            ["queue", "template"], registry=r)
        self.failed = Counter("mail2ticket_mails_failed", "Outbound mails given up on (permanent error or too old).",
                              ["queue", "template"], registry=r)
        self.send_retries = Counter("mail2ticket_mails_deferred", "Outbound delivery attempts that will be retried.",
                                    ["queue", "template"], registry=r)
        self.receipt_to_ticket = Histogram("mail2ticket_receipt_to_ticket_seconds",
                                           "From intake commit to the ticket or article being committed.",
                                           ["queue"], buckets=LATENCY_BUCKETS, registry=r)
        self.ticket_to_ack = Histogram("mail2ticket_ticket_to_ack_seconds",
                                       "From ticket creation to its acknowledgement being accepted for delivery.",
                                       ["queue"], buckets=LATENCY_BUCKETS, registry=r)
        self.backlog = Gauge("mail2ticket_backlog", "Work waiting per stage (from the database).", ["stage"],
                             registry=r)
        self.quarantine_size = Gauge("mail2ticket_quarantined_messages", "Messages currently in quarantine.",
                                     registry=r)
        self.outbox_failed = Gauge("mail2ticket_outbox_failed_mails", "Outbound mails in state failed.", registry=r)
        self.tickets_today = Gauge("mail2ticket_tickets_created_today", "Tickets created since 00:00 UTC.",
                                   registry=r)
        self.mailbox_connected = Gauge("mail2ticket_mailbox_connected", "1 while the IMAP connection is up.",
                                       ["mailbox"], registry=r)
        self.stage_up = Gauge("mail2ticket_stage_up", "1 while the stage is alive (not stalled, not failing).",
                              ["stage"], registry=r)
        self.stage_failures = Counter("mail2ticket_stage_failures", "Crashes of a stage's step or task.",
                                      ["stage"], registry=r)
        self.database_up = Gauge("mail2ticket_database_up", "1 when the last status query succeeded.", registry=r)
        self.reloads = Counter("mail2ticket_reloads", "SIGHUP reloads by result.", ["result"], registry=r)

    def watch_write_lock(self, usage: Callable[[], Mapping[str, LockUsage]]) -> None:
        """Export SQLite write lock time per kind of thread, read from `usage` at every scrape."""
        self.registry.register(_WriteLockCollector(usage))

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def apply(self, snap: Snapshot) -> None:
        self.database_up.set(1 if snap.ok else 0)
        if not snap.ok:
            return
        self.backlog.labels("process").set(snap.inbound_backlog)
        self.backlog.labels("outbox").set(snap.outbound_backlog)
        self.backlog.labels("imap_actions").set(snap.imap_actions_pending)
        self.quarantine_size.set(snap.quarantined)
        self.outbox_failed.set(snap.outbound_failed)
        self.tickets_today.set(snap.tickets_today)


class _WriteLockCollector:
    """`rate(..._held_seconds_total[5m])` summed over holders near 1 means the write lock is what limits the
    daemon (SQLite only; PostgreSQL locks rows and these stay empty)."""

    def __init__(self, usage: Callable[[], Mapping[str, LockUsage]]) -> None:
        self._usage = usage

    def collect(self) -> Iterator[Metric]:
        held = CounterMetricFamily("mail2ticket_sqlite_write_lock_held_seconds",
                                   "Time this process's writers held SQLite's write lock (its in-process gate), "
                                   "by kind of thread.", labels=["holder"])
        waited = CounterMetricFamily("mail2ticket_sqlite_write_lock_wait_seconds",
                                     "Time this process's writers waited for the write lock, by kind of thread.",
                                     labels=["holder"])
        for holder, usage in sorted(self._usage().items()):
            held.add_metric([holder], usage.held)
            waited.add_metric([holder], usage.waited)
        yield held
        yield waited


@dataclass(frozen=True)
class Snapshot:
    """Counts from the database for STATUS= and the gauges; `ok` is False when the database did not answer."""

    ok: bool
    inbound_backlog: int = 0
    outbound_backlog: int = 0
    outbound_failed: int = 0
    imap_actions_pending: int = 0
    quarantined: int = 0
    tickets_today: int = 0
    connected: dict[str, bool] = field(default_factory=dict)

    def status_line(self, unhealthy: list[str]) -> str:
        if not self.ok:
            text = "database unreachable"
        else:
            text = (f"backlog {self.inbound_backlog}, outbox {self.outbound_backlog}, "
                    f"tickets today {self.tickets_today}, quarantined {self.quarantined}")
            if self.outbound_failed:
                text += f", failed mails {self.outbound_failed}"
        if self.connected:
            text += f", mailboxes connected {sum(self.connected.values())}/{len(self.connected)}"
        if unhealthy:
            text += f"; UNHEALTHY: {', '.join(unhealthy)}"
        return text


def read_snapshot(factory: sessionmaker[Session], now: dt.datetime) -> Snapshot:
    """The counts of one moment (`read_only`): no writer waits for them, nor they for a writer."""
    with read_only(factory) as session:
        return _snapshot(session, now)


def _snapshot(session: Session, now: dt.datetime) -> Snapshot:
    """The counts behind STATUS= and the backlog gauges (a handful of indexed COUNT queries)."""
    by_state = dict(session.execute(
        select(InboundMessage.state, func.count()).where(
            InboundMessage.state.in_((InboundState.NEW, InboundState.QUARANTINED))).group_by(InboundMessage.state)
    ).all())
    outbound = dict(session.execute(
        select(OutboundMail.state, func.count()).where(
            OutboundMail.state.in_((OutboundState.QUEUED, OutboundState.SENDING, OutboundState.FAILED))
        ).group_by(OutboundMail.state)
    ).all())
    midnight = now.astimezone(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return Snapshot(
        ok=True,
        inbound_backlog=int(by_state.get(InboundState.NEW, 0)),
        quarantined=int(by_state.get(InboundState.QUARANTINED, 0)),
        outbound_backlog=int(outbound.get(OutboundState.QUEUED, 0)) + int(outbound.get(OutboundState.SENDING, 0)),
        outbound_failed=int(outbound.get(OutboundState.FAILED, 0)),
        imap_actions_pending=int(session.scalar(
            select(func.count()).select_from(ImapAction).where(ImapAction.state == ActionState.PENDING)) or 0),
        tickets_today=int(session.scalar(
            select(func.count()).select_from(Ticket).where(Ticket.created_at >= midnight)) or 0),
    )


@dataclass(frozen=True)
class ProcessedInfo:
    mailbox: str
    classification: str
    queue: str | None
    latency: float | None


def processed_infos(session: Session, inbound_ids: list[int]) -> dict[int, ProcessedInfo]:
    """Labels and receipt->ticket latency of processed intake rows, by id (one query for a whole batch)."""
    out: dict[int, ProcessedInfo] = {}
    for start in range(0, len(inbound_ids), 500):
        rows = session.execute(
            select(InboundMessage.id, InboundMessage.source, InboundMessage.mailbox, InboundMessage.classification,
                   InboundMessage.received_at, InboundMessage.processed_at, Ticket.queue)
            .outerjoin(Ticket, Ticket.id == InboundMessage.ticket_id)
            .where(InboundMessage.id.in_(inbound_ids[start:start + 500]))
        ).all()
        for inbound_id, source, mailbox, classification, received_at, processed_at, queue in rows:
            latency = (processed_at - received_at).total_seconds() if processed_at and received_at else None
            out[inbound_id] = ProcessedInfo(channel(source, mailbox), classification or "unknown", queue, latency)
    return out


@dataclass(frozen=True)
class DeliveredInfo:
    message_id: str
    state: OutboundState
    template: str
    queue: str
    is_ack: bool
    ticket_to_send: float | None


def delivered_info(session: Session, message_ids: list[str]) -> list[DeliveredInfo]:
    """State and labels of outbound mails the outbox just handled."""
    if not message_ids:
        return []
    rows = session.execute(
        select(OutboundMail.message_id, OutboundMail.state, OutboundMail.template, OutboundMail.dedupe_key,
               OutboundMail.sent_at, Ticket.queue, Ticket.created_at)
        .outerjoin(Ticket, Ticket.id == OutboundMail.ticket_id)
        .where(OutboundMail.message_id.in_(message_ids))
    ).all()
    out = []
    for message_id, state, template, dedupe_key, sent_at, queue, created_at in rows:
        latency = (sent_at - created_at).total_seconds() if sent_at and created_at else None
        out.append(DeliveredInfo(message_id, state, template, queue or "none", dedupe_key.startswith("ack:"), latency))
    return out


def count_processed(metrics: Metrics, state: InboundState, info: ProcessedInfo) -> None:
    if state == InboundState.DONE:
        queue = info.queue or "none"
        metrics.processed.labels(info.mailbox, queue, info.classification).inc()
        if info.latency is not None:
            metrics.receipt_to_ticket.labels(queue).observe(max(0.0, info.latency))
    elif state == InboundState.IGNORED:
        metrics.ignored.labels(info.mailbox, info.classification).inc()
    elif state == InboundState.QUARANTINED:
        metrics.quarantined.labels(info.mailbox, info.classification).inc()
    else:
        metrics.deferred.labels(info.mailbox).inc()


def count_delivered(metrics: Metrics, infos: list[DeliveredInfo], *, journaled: bool = False) -> set[str]:
    """Count the mails the outbox handled. With lines in the delivery journal, a mail still `sending` was sent in a
    full batch whose lines the next claim folds: it is not counted, and its Message-ID is returned to count later."""
    later: set[str] = set()
    for info in infos:
        if journaled and info.state == OutboundState.SENDING:
            later.add(info.message_id)
        elif info.state == OutboundState.SENT:
            metrics.sent.labels(info.queue, info.template).inc()
            if info.is_ack and info.ticket_to_send is not None:
                metrics.ticket_to_ack.labels(info.queue).observe(max(0.0, info.ticket_to_send))
        elif info.state == OutboundState.FAILED:
            metrics.failed.labels(info.queue, info.template).inc()
        else:
            metrics.send_retries.labels(info.queue, info.template).inc()
    return later
