"""SMTP servers for the benchmarks, each run in its own process so the GIL of the bench driver cannot skew them.

`python -m bench.sink --mode MODE --record FILE` prints `PORT <n>` once listening and serves until SIGTERM.

| mode         | role                                                   | per message                                |
|--------------|--------------------------------------------------------|--------------------------------------------|
| capture      | the smarthost receiving the daemon's acknowledgements  | append arrival time + In-Reply-To to FILE  |
| floor-sqlite | the floor of SMTP ingest: store the bytes, nothing else| INSERT into SQLite (WAL, synchronous=FULL, |
|              |                                                        | one commit per message), then 250          |

The floor does the same durable work per message as mail2ticket's intake must do before its 250 (one
fsync'd commit of the raw bytes, off the event loop), and none of the rest.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from email.parser import BytesHeaderParser
from email.policy import compat32
from pathlib import Path
from typing import Any, TextIO

from aiosmtpd.smtp import SMTP


class CaptureHandler:
    def __init__(self, record: TextIO) -> None:
        self.record = record
        self.parser = BytesHeaderParser(policy=compat32)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        now = time.monotonic()
        raw = bytes(envelope.original_content)
        head = raw.split(b"\r\n\r\n", 1)[0]
        irt = str(self.parser.parsebytes(head + b"\r\n\r\n").get("In-Reply-To", "") or "").strip()
        self.record.write(f"{now:.6f}\t{irt}\t{','.join(envelope.rcpt_tos)}\n")
        self.record.flush()
        return "250 2.0.0 OK"


class FloorSqliteHandler:
    def __init__(self, db: Path, record: TextIO) -> None:
        self.record = record
        self.executor = ThreadPoolExecutor(max_workers=1)
        self.db = db
        self.conn: sqlite3.Connection | None = None

    def _insert(self, raw: bytes, mail_from: str, rcpt: str) -> None:
        if self.conn is None:
            self.conn = sqlite3.connect(self.db, isolation_level=None)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=FULL")
            self.conn.execute("CREATE TABLE IF NOT EXISTS msg (id INTEGER PRIMARY KEY, mail_from TEXT, "
                              "rcpt TEXT, raw BLOB)")
        self.conn.execute("BEGIN IMMEDIATE")
        self.conn.execute("INSERT INTO msg (mail_from, rcpt, raw) VALUES (?, ?, ?)", (mail_from, rcpt, raw))
        self.conn.execute("COMMIT")

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        raw = bytes(envelope.original_content)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self.executor, self._insert, raw, envelope.mail_from or "",
                                   ",".join(envelope.rcpt_tos))
        self.record.write(f"{time.monotonic():.6f}\t\t\n")
        self.record.flush()
        return "250 2.0.0 OK"


async def serve(mode: str, record_path: Path, db: Path | None) -> None:
    record = record_path.open("a", encoding="utf-8")
    handler: Any = CaptureHandler(record) if mode == "capture" else FloorSqliteHandler(db or record_path.with_suffix(".db"), record)
    loop = asyncio.get_running_loop()

    def factory() -> SMTP:
        return SMTP(handler, hostname="sink.localhost", decode_data=False, enable_SMTPUTF8=True,
                    data_size_limit=64 * 1024 * 1024)

    server = await loop.create_server(factory, host="127.0.0.1", port=0)
    print(f"PORT {server.sockets[0].getsockname()[1]}", flush=True)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await stop.wait()
    server.close()
    record.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("capture", "floor-sqlite"), required=True)
    parser.add_argument("--record", type=Path, required=True)
    parser.add_argument("--db", type=Path, default=None)
    args = parser.parse_args()
    asyncio.run(serve(args.mode, args.record, args.db))


if __name__ == "__main__":
    main()
