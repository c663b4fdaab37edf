"""Retention and data-subject requests: `purge`, `person export`, `person erase`, checked by scanning everything.

"No trace" is checked the hard way: every text/JSON/blob column of every table, the SQLite file and its
WAL as raw bytes (after the command's VACUUM), and the outbox folder on disk.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from sqlalchemy import MetaData, create_engine, select, update
from sqlalchemy.engine import Engine

from mail2ticket.db.models import Ticket
from tests.support.app import QUEUES, App, wait_until
from tests.support.mails import citizen_mail

ERIKA = "erika.probe@example.org"
ERIKA_NAME = "Erika Probefrau"
MAX = "max.probe@example.org"


def engine_of(app: App) -> Engine:
    return create_engine(app.database_url)


def db_hits(app: App, needle: str) -> list[str]:
    """table.column of every value in the database that contains `needle` (case-insensitive), plus file bytes."""
    low = needle.lower()
    hits: list[str] = []
    engine = engine_of(app)
    meta = MetaData()
    meta.reflect(engine)
    with engine.connect() as conn:
        for table in meta.sorted_tables:
            for row in conn.execute(select(table)):
                for column, value in row._mapping.items():
                    if value is None:
                        continue
                    blob = bytes(value) if isinstance(value, (bytes, memoryview)) else \
                        json.dumps(value, default=str, ensure_ascii=False).encode()
                    if low.encode() in blob.lower() or low in blob.decode("utf-8", "replace").lower():
                        hits.append(f"{table.name}.{column}")
    engine.dispose()
    if app.database_url.startswith("sqlite"):
        path = Path(app.database_url.split("///", 1)[1])
        for file in (path, Path(f"{path}-wal")):
            if file.exists() and low.encode() in file.read_bytes().lower():
                hits.append(f"file:{file.name}")
    return hits


def outbox_hits(app: App, needle: str) -> list[str]:
    return [p.name for p in app.outbox.glob("*") if needle.lower().encode() in p.read_bytes().lower()]


def deliver(app: App, *mails: bytes, acks: int) -> None:
    """Run the daemon long enough to turn `mails` into tickets and deliver `acks` acknowledgements."""
    daemon = app.start()
    try:
        for raw in mails:
            daemon.send(raw)
        wait_until(lambda: len(app.outbox_files()) >= acks, message="acks delivered")
    finally:
        assert daemon.stop() == 0


def mail_with_attachment(subject: str, sender: str, token: str, body: str = "Guten Tag.\n") -> bytes:
    raw = citizen_mail(subject=subject, sender=sender, body=body, headers={"X-Probe": token})
    from email import message_from_bytes, policy

    msg = message_from_bytes(raw, policy=policy.SMTP)
    msg.add_attachment(f"Anlage {token}\n".encode(), maintype="application", subtype="octet-stream",
                       filename="anlage.txt")
    return msg.as_bytes(policy=policy.SMTP)


def set_closed(app: App, subject: str, days_ago: int) -> None:
    engine = engine_of(app)
    closed = dt.datetime.now(dt.UTC) - dt.timedelta(days=days_ago)
    with engine.begin() as conn:
        conn.execute(update(Ticket).where(Ticket.subject == subject).values(status="closed", closed_at=closed))
    engine.dispose()


def test_purge_deletes_raw_mail_and_anonymises_per_queue_rules(app: App) -> None:
    """purge removes raw mail after delete_raw_after_days and every trace of the requester after anonymise_after_days."""
    app.queues_toml = QUEUES.replace('name = "buergerbuero"\n',
                                     'name = "buergerbuero"\ndelete_raw_after_days = 180\nanonymise_after_days = 730\n')
    deliver(app,
            mail_with_attachment("Alter Antrag", f"{ERIKA_NAME} <{ERIKA}>", "rawtoken-old"),
            mail_with_attachment("Halbalter Antrag", f"Max Probe <{MAX}>", "rawtoken-mid"),
            mail_with_attachment("Offener Antrag", "Otto <otto.probe@example.org>", "rawtoken-open"),
            acks=3)
    set_closed(app, "Alter Antrag", 800)
    set_closed(app, "Halbalter Antrag", 200)

    plan = app.json("purge", "--dry-run")
    assert sorted((t["ticket"] != "", tuple(t["actions"])) for t in plan["tickets"]) == [
        (True, ("delete_raw",)), (True, ("delete_raw", "anonymise"))]
    assert db_hits(app, "rawtoken-old"), "a dry run changes nothing"

    result = app.json("purge")
    assert len(result["tickets"]) == 2 and result["outbox_files_deleted"] == 2
    for needle in (ERIKA, ERIKA_NAME, "rawtoken-old", "rawtoken-mid"):
        assert db_hits(app, needle) == [], needle
        assert outbox_hits(app, needle) == [], needle
    assert MAX in "".join(json.dumps(t) for t in app.tickets())  # only raw data of Max's ticket went
    assert db_hits(app, "rawtoken-open"), "open tickets keep their raw mail (and the scan does find it)"
    old = next(t for t in app.tickets() if t["subject"] == "Alter Antrag")
    events = [e["type"] for e in app.ticket(old["number"])["events"]]
    assert "retention_anonymised" in events and "retention_raw_deleted" in events
    assert app.json("purge")["tickets"] == []  # nothing left to do: a second run is a no-op


def test_person_export_and_erase(app: App) -> None:
    """person export lists a person's data (Art. 15); person erase leaves no trace of it in the DB or on disk (Art. 17)."""
    deliver(app,
            mail_with_attachment("Eigener Antrag", f"{ERIKA_NAME} <{ERIKA}>", "rawtoken-own"),
            citizen_mail(subject="Nachbarschaft", sender=f"Max Probe <{MAX}>",
                         body=f"Bitte auch {ERIKA} informieren.\n", headers={"Cc": f"{ERIKA_NAME} <{ERIKA}>"}),
            acks=2)
    assert db_hits(app, ERIKA) and outbox_hits(app, ERIKA), "the scan finds the address before the erase"
    export = app.json("person", "export", ERIKA)
    roles = sorted(t["role"] for t in export["tickets"])
    assert roles == ["involved", "requester"]
    own = next(t for t in export["tickets"] if t["role"] == "requester")
    assert own["articles"][0]["attachments"][0]["filename"] == "anlage.txt"
    assert any(o["recipient"] == ERIKA for o in export["outbound_mails"])
    assert ERIKA_NAME in export["names"]

    result = app.json("person", "erase", ERIKA, "--yes")
    assert result["tickets_deleted"] == 1 and result["tickets_scrubbed"] == 1
    for needle in (ERIKA, ERIKA_NAME, "rawtoken-own"):
        assert db_hits(app, needle) == [], needle
        assert outbox_hits(app, needle) == [], needle
    remaining = app.tickets()
    assert [t["subject"] for t in remaining] == ["Nachbarschaft"]
    text_after = app.ticket(remaining[0]["number"])["articles"][0]["text"]
    assert "[anonymised]" in text_after and MAX in json.dumps(app.ticket(remaining[0]["number"]))
    assert app.json("person", "export", ERIKA)["tickets"] == []


def test_person_erase_refuses_without_confirmation(app: App) -> None:
    """Without --yes and without a terminal, erase does nothing and says how to confirm."""
    proc = app.cli("person", "erase", ERIKA, check=False)
    assert proc.returncode == 64 and "--yes" in proc.stderr
