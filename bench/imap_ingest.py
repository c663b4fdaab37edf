"""Benchmark: IMAP ingest end to end: Dovecot → IMAP worker → intake → processing → ack in the outbox.

Method
- Mail: N realistic German municipal mails from `bench.corpus` (new requests, replies, auto-replies, HTML),
  every 20th one (5 %) with a 100 KB PDF attachment, APPENDed to a fresh account of a private Dovecot on
  loopback before the clock starts.
- Floor: plain imapclient on one connection does what the worker must do at minimum — SELECT, UID SEARCH,
  FETCH RFC822.SIZE, then BODY.PEEK[] in batches of 50 — with no processing at all (median of 3 runs).
- Throughput: `mail2ticket run` (subprocess, SQLite in WAL with synchronous=FULL, folder delivery) with one
  `[[mailbox]]`, after = "flag". Clock from daemon_ready until every inbound row is finished (done /
  ignored / quarantined), i.e. all tickets exist and their acknowledgements are queued in the outbox (same
  transaction). Peak RSS is the daemon's VmHWM at the end.
- Ingress only: the same folder synced in this process by `FolderSync.sync_pass` (fetch, intake commit,
  flag, bookkeeping) with no processing stage, to separate the IMAP side from the pipeline behind it.
- Latency: a fresh daemon IDLEs on an empty box; one mail at a time is APPENDed from another connection
  every 0.5 s; latency = processed_at of its inbound row minus the wall time just before APPEND.

Run: `.venv/bin/python -m bench.imap_ingest [-n 5000] [--latency-samples 30]`; writes
bench/results/imap_ingest.json and prints the method, medians and ratios.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from tests.support.app import App, Daemon, toml_value
from tests.support.dovecot import Dovecot, ImapUser

from bench.corpus import QUEUES_TOML, iter_corpus

RESULTS = Path(__file__).with_name("results") / "imap_ingest.json"
ATTACHMENT_EVERY = 20
ATTACHMENT_BYTES = 100 * 1024
APPEND_CHUNK = 100
FLOOR_BATCH = 50


def corpus(n: int) -> list[bytes]:
    mails = []
    for i, mail in enumerate(iter_corpus(n, attachments=False)):
        raw = mail.raw
        if i % ATTACHMENT_EVERY == ATTACHMENT_EVERY - 1:
            msg = message_from_bytes(raw, policy=policy.SMTP)
            assert isinstance(msg, EmailMessage)
            payload = b"%PDF-1.4\n" + bytes((i * 7 + k) % 251 for k in range(ATTACHMENT_BYTES - 9))
            msg.add_attachment(payload, maintype="application", subtype="pdf", filename="Lageplan_Flurstück.pdf")
            raw = msg.as_bytes(policy=policy.SMTP)
        mails.append(raw)
    return mails


def fill(server: Dovecot, user: ImapUser, mails: list[bytes]) -> None:
    for start in range(0, len(mails), APPEND_CHUNK):
        server.append_many(user, "INBOX", mails[start : start + APPEND_CHUNK])


def floor_run(server: Dovecot, user: ImapUser) -> tuple[float, int]:
    start = time.monotonic()
    with server.client(user, timeout=60) as client:
        client.select_folder("INBOX", readonly=True)
        uids = sorted(client.search(["UID", "1:*"]))
        sizes = client.fetch(uids, ["RFC822.SIZE"])
        total = 0
        for i in range(0, len(uids), FLOOR_BATCH):
            batch = [u for u in uids[i : i + FLOOR_BATCH] if u in sizes]
            for item in client.fetch(batch, ["BODY.PEEK[]"]).values():
                total += len(item[b"BODY[]"])
    return time.monotonic() - start, total


def make_app(root: Path, server: Dovecot, user: ImapUser, **settings: Any) -> App:
    root.mkdir(parents=True, exist_ok=True)
    app = App(root=root, database_url=f"sqlite:///{root / 'mail2ticket.db'}", queues_toml=QUEUES_TOML)
    secret = root / "imap.password"
    secret.write_text(user.password)
    values = {"name": "buergerbuero", "host": server.host, "port": server.port, "security": "none",
              "username": user.name, "password_file": str(secret), "after": "flag", "queue": "buergerbuero",
              **settings}
    app.extra_toml = "[[mailbox]]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in values.items())
    app.set("smtp_in", enabled=False)
    from mail2ticket.db.engine import make_engine
    from mail2ticket.db.schema import upgrade

    engine = make_engine(app.database_url)
    upgrade(engine)  # the schema is built before the clock starts
    engine.dispose()
    return app


def start_daemon(app: App) -> tuple[Daemon, float]:
    """Start the daemon; returns it and the monotonic time at which it logged daemon_ready."""
    daemon = app.start(wait=False)
    deadline = time.monotonic() + 60
    while "daemon_ready" not in daemon.log():
        if daemon.proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"daemon did not start:\n{daemon.log()}")
        time.sleep(0.01)
    return daemon, time.monotonic()


def finished(db: Path) -> int:
    with sqlite3.connect(db, timeout=30) as conn:
        row = conn.execute("SELECT count(*) FROM inbound_message WHERE state != 'new'").fetchone()
    return int(row[0])


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def throughput_run(root: Path, server: Dovecot, n: int, mails: list[bytes]) -> dict[str, Any]:
    user = server.user()
    fill(server, user, mails)
    floors = [floor_run(server, user)[0] for _ in range(3)]
    app = make_app(root, server, user)
    db = root / "mail2ticket.db"
    daemon, start = start_daemon(app)
    try:
        last_report = start
        while (done := finished(db)) < n:
            if daemon.proc.poll() is not None:
                raise RuntimeError(f"daemon exited:\n{daemon.log()[-3000:]}")
            if time.monotonic() - last_report > 10:
                print(f"  ... {done}/{n} after {time.monotonic() - start:.0f} s", flush=True)
                last_report = time.monotonic()
            time.sleep(0.05)
        seconds = time.monotonic() - start
        rss = peak_rss_mb(daemon.proc.pid)
    finally:
        daemon.stop(timeout=60)
    with sqlite3.connect(db) as conn:
        states = dict(conn.execute("SELECT state, count(*) FROM inbound_message GROUP BY state").fetchall())
        tickets = conn.execute("SELECT count(*) FROM ticket").fetchone()[0]
        acks = conn.execute("SELECT count(*) FROM outbound_mail").fetchone()[0]
        pending = conn.execute("SELECT count(*) FROM imap_action WHERE state != 'done'").fetchone()[0]
    floor = statistics.median(floors)
    return {"messages": n, "seconds": round(seconds, 2), "msg_per_s": round(n / seconds, 1),
            "peak_rss_mb": round(rss, 1), "floor_seconds": [round(f, 2) for f in floors],
            "floor_msg_per_s": round(n / floor, 1), "ratio_to_floor": round(floor / seconds, 3),
            "inbound_states": states, "tickets": tickets, "outbound_rows": acks, "actions_not_done": pending}


def ingress_only_run(root: Path, server: Dovecot, mails: list[bytes]) -> dict[str, Any]:
    from mail2ticket.config.model import MailboxConfig
    from mail2ticket.db.engine import make_engine, make_sessionmaker
    from mail2ticket.db.schema import upgrade
    from mail2ticket.ingress.imap_sync import FolderSync
    from mail2ticket.log import configure

    configure("json", "warning")
    user = server.user()
    fill(server, user, mails)
    root.mkdir(parents=True, exist_ok=True)
    engine = make_engine(f"sqlite:///{root / 'ingress.db'}")
    upgrade(engine)
    box = MailboxConfig(name="buergerbuero", host=server.host, security="none", username=user.name,
                        password_env="UNUSED")
    sync = FolderSync(box, "INBOX", make_sessionmaker(engine), lambda: dt.datetime.now(dt.UTC), 26_214_400)
    with server.client(user, timeout=60) as client:
        start = time.monotonic()
        report = sync.sync_pass(client)
        seconds = time.monotonic() - start
    engine.dispose()
    return {"messages": report.stored, "seconds": round(seconds, 2), "msg_per_s": round(len(mails) / seconds, 1)}


def latency_run(root: Path, server: Dovecot, samples: int, mails: list[bytes]) -> dict[str, Any]:
    user = server.user()
    app = make_app(root, server, user)
    db = root / "mail2ticket.db"
    daemon, _ = start_daemon(app)
    latencies: list[float] = []
    try:
        deadline = time.monotonic() + 30
        while '"imap_connected"' not in daemon.log():
            if time.monotonic() > deadline:
                raise RuntimeError(f"no IMAP connection:\n{daemon.log()}")
            time.sleep(0.05)
        with server.client(user) as appender:
            for i in range(samples):
                sent = dt.datetime.now(dt.UTC)
                appender.append("INBOX", mails[i % len(mails)])
                while finished(db) < i + 1:
                    time.sleep(0.01)
                with sqlite3.connect(db, timeout=30) as conn:
                    value = conn.execute("SELECT processed_at FROM inbound_message ORDER BY id DESC LIMIT 1").fetchone()[0]
                processed = dt.datetime.fromisoformat(value).replace(tzinfo=dt.UTC)
                latencies.append((processed - sent).total_seconds())
                time.sleep(0.5)
    finally:
        daemon.stop(timeout=60)
    ordered = sorted(latencies)
    return {"samples": samples, "median_s": round(statistics.median(ordered), 3),
            "p95_s": round(ordered[int(0.95 * (len(ordered) - 1))], 3), "max_s": round(ordered[-1], 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=5000, help="messages for the throughput run (default 5000)")
    parser.add_argument("--latency-samples", type=int, default=30)
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--keep", action="store_true", help="keep the work directory (daemon logs, databases)")
    args = parser.parse_args(argv)
    print(__doc__.split("Run:")[0].strip(), flush=True)
    mails = corpus(args.n)
    work = Path(tempfile.mkdtemp(prefix="m2t-imap-bench-"))
    try:
        with Dovecot(pool_size=6) as server:
            print(f"\nthroughput: {args.n} mails ({sum(map(len, mails)) / 1e6:.1f} MB) ...", flush=True)
            result: dict[str, Any] = {"throughput": throughput_run(work / "throughput", server, args.n, mails)}
            print("ingress only (no processing) ...", flush=True)
            result["ingress_only"] = ingress_only_run(work / "ingress", server, mails)
            print(f"latency: {args.latency_samples} single APPENDs under IDLE ...", flush=True)
            result["idle_latency"] = latency_run(work / "latency", server, args.latency_samples, mails)
    finally:
        if args.keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    t, lat = result["throughput"], result["idle_latency"]
    result["targets"] = {"msg_per_s>=200": t["msg_per_s"] >= 200, "peak_rss_mb<200": t["peak_rss_mb"] < 200,
                         "median_idle_latency_s<2": lat["median_s"] < 2}
    result["when"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    result["python"] = sys.version.split()[0]
    print(f"\nend to end : {t['msg_per_s']} msg/s ({t['messages']} in {t['seconds']} s), peak RSS {t['peak_rss_mb']} MB")
    print(f"floor      : {t['floor_msg_per_s']} msg/s (median of {len(t['floor_seconds'])}), "
          f"ratio end-to-end/floor {t['ratio_to_floor']}")
    print(f"IMAP side  : {result['ingress_only']['msg_per_s']} msg/s without processing (fetch, intake, flag)")
    print(f"IDLE       : APPEND→ticket median {lat['median_s']} s, p95 {lat['p95_s']} s, max {lat['max_s']} s")
    print(f"targets    : {result['targets']}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"written    : {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
