"""Loop and amplification protection (RELIABILITY.md P8; T23, T25, T26, T28): no mail loop, ever."""

from __future__ import annotations

import contextlib
import email
import email.policy
import mailbox
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from mail2ticket.config import load_config
from mail2ticket.db.engine import make_engine, make_sessionmaker, unit_of_work
from mail2ticket.db.models import Event, InboundMessage, OutboundMail
from mail2ticket.outbox.deliver import FolderDeliverer
from mail2ticket.outbox.worker import OutboxWorker
from tests.support.app import App
from tests.support.mails import citizen_mail

VICTIM = "victim@example.org"


class Installation:
    """Direct read access to an app's database, plus the real outbox worker writing into its folder."""

    def __init__(self, app: App) -> None:
        self.app = app
        app.write_config()
        self.engine = make_engine(app.database_url)
        self.factory = make_sessionmaker(self.engine)

    def ingest(self, *raws: bytes, sender: str | None = None, recipient: str | None = None) -> None:
        folder = self.app.root / "in"
        folder.mkdir(exist_ok=True)
        paths = []
        for raw in raws:
            path = folder / f"{len(list(folder.iterdir())):05d}.eml"
            path.write_bytes(raw)
            paths.append(str(path))
        args = ["ingest", *paths]
        if sender is not None:
            args += ["--sender", sender]
        if recipient is not None:
            args += ["--recipient", recipient]
        assert self.app.run_inprocess(*args) == 0

    def send_outbox(self) -> list[bytes]:
        """Deliver every due mail through the real worker into the folder; the new files' bytes."""
        before = set(self.app.outbox_files())
        config = load_config(self.app.config_path)
        worker = OutboxWorker(self.factory, FolderDeliverer(self.app.outbox), config.smtp_out, "test", _now)
        while worker.run_once(100):
            pass
        return [p.read_bytes() for p in self.app.outbox_files() if p not in before]

    def outbound(self) -> list[OutboundMail]:
        with unit_of_work(self.factory) as session:
            return list(session.scalars(select(OutboundMail).order_by(OutboundMail.id)))

    def inbound(self) -> list[InboundMessage]:
        with unit_of_work(self.factory) as session:
            return list(session.scalars(select(InboundMessage).order_by(InboundMessage.id)))

    def events(self, type_: str) -> list[Event]:
        with unit_of_work(self.factory) as session:
            return list(session.scalars(select(Event).where(Event.type == type_).order_by(Event.id)))

    def close(self) -> None:
        self.engine.dispose()


def _now():  # type: ignore[no-untyped-def]
    import datetime as dt

    return dt.datetime.now(dt.UTC)


@pytest.fixture
def inst(app: App) -> Iterator[Installation]:
    installation = Installation(app)
    yield installation
    installation.close()


@contextlib.contextmanager
def on_tmpfs(app: App) -> Iterator[App]:
    """`app`, but an SQLite database lives on tmpfs when there is one: thousands of fsyncs, none of them tested here."""
    shm = Path("/dev/shm")
    if not app.database_url.startswith("sqlite") or not shm.is_dir():
        yield app
        return
    root = Path(tempfile.mkdtemp(prefix="m2t-bulk-", dir=shm))
    try:
        yield App(root=root, database_url=f"sqlite:///{root / 'mail2ticket.db'}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def bulk_app(app: App) -> Iterator[App]:
    with on_tmpfs(app) as bulk:
        yield bulk


def answer(raw: bytes, *, rfc3834: bool, fresh: bool) -> bytes:
    """What a naive auto-responder writes back to `raw`: always, with or without RFC 3834 marks."""
    original = email.message_from_bytes(raw, policy=email.policy.default)
    headers = {"Auto-Submitted": "auto-replied"} if rfc3834 else {}
    if not fresh:
        headers["In-Reply-To"] = str(original["Message-ID"])
    subject = "Auto: " + str(original["Subject"]) if not fresh else "Ich bin gerade nicht da"
    return citizen_mail(subject=subject, sender=f"Responder <{VICTIM}>", to=str(original["From"]),
                        body="Danke für Ihre Nachricht. Ich antworte auf jede Mail.\n", headers=headers)


@pytest.mark.parametrize(("rfc3834", "fresh"), [(True, False), (False, False), (False, True), (True, True)],
                         ids=["rfc3834-reply", "plain-reply", "plain-new-mail", "rfc3834-new-mail"])
def test_ping_pong_with_naive_auto_responder_stops(inst: Installation, rfc3834: bool, fresh: bool) -> None:
    """A responder that answers every mail we send gets one acknowledgement; the exchange then stops (T25)."""
    inst.ingest(citizen_mail(sender=f"Responder <{VICTIM}>"))
    sent_total = 0
    for _round in range(12):
        sent = inst.send_outbox()
        if not sent:
            break
        sent_total += len(sent)
        inst.ingest(*(answer(raw, rfc3834=rfc3834, fresh=fresh) for raw in sent))
    else:
        pytest.fail("the exchange did not stop")
    assert sent_total == 1
    assert sent_total <= 5  # far inside the hourly per-recipient limit
    assert all(row.state in ("done", "ignored") for row in inst.inbound())


def test_own_status_mail_fed_back_is_ignored_with_a_log_line(inst: Installation) -> None:
    """Our own acknowledgement arriving at a queue address (forwarding rule) is ignored, no ticket (T26)."""
    inst.ingest(citizen_mail())
    (ack,) = inst.send_outbox()
    inst.ingest(ack, recipient="buergerbuero@stadt.example")
    forwarded = ack.replace(b"X-Mail2Ticket-Loop", b"X-Original-Loop")  # a forwarder that renames our header
    inst.ingest(forwarded)
    rows = inst.inbound()
    assert [r.state for r in rows] == ["done", "ignored", "ignored"]
    assert rows[1].reason is not None and "own mail came back" in rows[1].reason
    assert rows[2].reason is not None and "own mail came back" in rows[2].reason
    assert len(inst.app.tickets()) == 1
    assert len(inst.events("message_ignored")) == 2
    assert inst.send_outbox() == []


@pytest.mark.slow
def test_flood_from_one_forged_sender_gets_one_ack_and_is_fully_ingested(bulk_app: App, tmp_path: Path) -> None:
    """1,000 mails "from" one victim become 1,000 tickets, but the victim gets at most one acknowledgement (T28)."""
    inst = Installation(bulk_app)
    box = mailbox.mbox(tmp_path / "flood.mbox")
    for i in range(1000):
        box.add(citizen_mail(subject=f"Gewinnspiel {i}", sender=f"Opfer <{VICTIM}>"))
    box.flush()
    box.close()
    assert inst.app.run_inprocess("ingest", str(tmp_path / "flood.mbox")) == 0
    rows = inst.inbound()
    assert len(rows) == 1000
    assert {r.state for r in rows} == {"done"}
    to_victim = [o for o in inst.outbound() if o.recipient == VICTIM]
    assert len(to_victim) <= 1
    reasons = {e.detail.get("reason") for e in inst.events("ack_suppressed")}
    assert reasons <= {"sender_burst", "sender_flood", "rate_limit_recipient_hour"}
    assert "sender_flood" in reasons
    inst.close()


def test_list_bulk_and_suppress_signals_never_get_an_ack(inst: Installation) -> None:
    """List and bulk mail without a rule is ignored; auto-submitted, suppress-requesting and no-reply mail get no ack (T23, T27)."""
    inst.ingest(
        citizen_mail(headers={"List-Id": "<news.example.org>"}),
        citizen_mail(headers={"Precedence": "bulk"}),
        citizen_mail(headers={"Auto-Submitted": "auto-generated"}),
        citizen_mail(headers={"X-Auto-Response-Suppress": "All"}),
        citizen_mail(headers={"X-Auto-Response-Suppress": "OOF"}),
        citizen_mail(sender="Newsletter <noreply@shop.example>"),
        citizen_mail(subject="Abwesenheitsnotiz: Erika Mustermann"),
        citizen_mail(subject="Automatische Antwort: Ihre Anfrage"),
    )
    rows = inst.inbound()
    for row in rows[:2]:
        assert row.state == "ignored" and row.reason is not None and "list or bulk" in row.reason
    assert [r.classification for r in rows[2:]] == ["auto-reply", "human", "human", "human", "auto-reply",
                                                    "auto-reply"]
    assert inst.outbound() == []
    assert len(inst.app.tickets()) == 6


def test_null_sender_mail_is_never_answered(inst: Installation) -> None:
    """A mail with the null envelope sender <> counts as a bounce (issue 5): kept as ignored with a reason, never answered."""
    inst.ingest(citizen_mail(), sender="")
    (row,) = inst.inbound()
    assert row.classification == "bounce" and row.state == "ignored" and row.reason
    assert inst.app.tickets() == []
    assert inst.outbound() == []


def test_auto_reply_to_our_ack_is_a_note_and_sends_nothing(inst: Installation) -> None:
    """An out-of-office answer to our ack lands on the ticket as an internal note; no status change, no mail (T23)."""
    inst.ingest(citizen_mail())
    (ack,) = inst.send_outbox()
    (number,) = [t["number"] for t in inst.app.tickets()]
    inst.app.cli("tickets", "set-status", number, "closed", "--no-mail")
    oof = answer(ack, rfc3834=True, fresh=False).replace(VICTIM.encode(), b"erika@example.org")
    inst.ingest(oof, sender="")
    ticket = inst.app.ticket(number)
    assert ticket["status"] == "closed"
    articles = ticket["articles"]
    assert len(articles) == 2
    assert articles[1]["kind"] == "auto-reply" and articles[1]["internal"] is True
    assert inst.send_outbox() == []
