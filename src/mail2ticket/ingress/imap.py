"""IMAP ingress in the daemon: one supervised worker per (mailbox, folder), each with its own connection.

Place in the pipeline: an ingress next to the SMTP listener. Every message goes through intake
(`intake.insert_or_existing`) and then the same processing as SMTP mail; this module only decides *when* to sync (see `imap_sync` for
*how*). A worker's life:

| state      | what it does                                                      | leaves when                        |
|------------|-------------------------------------------------------------------|------------------------------------|
| LEASE      | takes the lease `imap:<mailbox>:<folder>` (one poller per folder) | lease held (else waits and retries) |
| CONNECT    | connect, TLS, login (password or XOAUTH2 token), create targets   | logged in, or an error → BACKOFF   |
| SYNC       | `FolderSync.sync_pass` until a pass finds nothing new             | folder caught up                   |
| WAIT       | IDLE (re-issued every idle_refresh; NOOP after noop_interval of   | new mail, refresh, stop, or a dead |
|            | silence) or, without IDLE, sleep poll_interval then NOOP          | connection → BACKOFF               |
| BACKOFF    | exponential backoff with jitter (5 min cap, 15 min for login      | delay over → CONNECT               |
|            | failures); logged once per burst, `imap_recovered` when it ends   |                                    |

A failing box never touches the others: each worker has its own thread, connection, backoff and lease.
The heartbeat is beaten between every blocking step (all bounded by the socket timeout), so the daemon's
watchdog sees a stuck worker. Mailbox settings are read at start; SIGHUP does not restart the workers.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy.exc import SQLAlchemyError

from mail2ticket.config import Config
from mail2ticket.config.model import MailboxConfig
from mail2ticket.stages import Heartbeat
from mail2ticket.db import leases
from mail2ticket.db.engine import unit_of_work
from mail2ticket.ingress.imap_conn import (
    COMMAND_ERRORS,
    CONNECTION_ERRORS,
    AuthFailed,
    ImapClient,
    close_quietly,
    connect,
    describe,
    error_text,
    take_exists_note,
)
from mail2ticket.ingress.imap_sync import FolderSync
from mail2ticket.runtime import Services

log = structlog.get_logger("mail2ticket.imap")

LEASE_TTL = dt.timedelta(seconds=60)
LEASE_RENEW_EVERY = 15.0
BACKOFF_INITIAL, BACKOFF_MAX, BACKOFF_MAX_AUTH = 1.0, 300.0, 900.0
IDLE_CHECK_SLICE = 0.5
MAX_PASSES_PER_WAKE = 1000
RETRYABLE: tuple[type[BaseException], ...] = (AuthFailed, *CONNECTION_ERRORS, *COMMAND_ERRORS, SQLAlchemyError)

Connector = Callable[[MailboxConfig, Path], ImapClient]


class Stopped(Exception):
    """The daemon is stopping: leave the current step at once."""


class LeaseLost(Exception):
    """Another instance took over this folder (our lease expired): stop touching it."""


class ConnectionDead(ConnectionError):
    """The server closed the connection or stopped answering."""


def backoff_delay(failures: int, maximum: float, rng: random.Random) -> float:
    """Exponential backoff with jitter (50-100 % of the step), so failing boxes do not retry in lockstep."""
    step = min(maximum, BACKOFF_INITIAL * 2.0 ** max(0, failures - 1))
    return float(step * rng.uniform(0.5, 1.0))


class FolderWorker:
    """The blocking loop for one (mailbox, folder); `run` returns only when `stop` is set."""

    def __init__(self, box: MailboxConfig, folder: str, services: Services, config_file: Path, max_size: int,
                 on_stored: Callable[[], None], connector: Connector = connect) -> None:
        self.box = box
        self.folder = folder
        self.name = f"imap:{box.name}:{folder}"
        self.services = services
        self.config_file = config_file
        self.connector = connector
        self.heartbeat = Heartbeat(stall_after=max(300.0, 4 * box.timeout))
        self.health = "starting"
        self.connected = False
        self.last_error: str | None = None
        self.log = log.bind(mailbox=box.name, folder=folder)
        self._stop = threading.Event()
        self._rng = random.Random()
        self._lease_held = False
        self._lease_renewed = 0.0
        self._failures = 0
        self._burst_started = 0.0
        self.sync = FolderSync(box, folder, services.factory, services.clock, max_size, on_stored=on_stored,
                               tick=self.tick, log=self.log)

    # --- supervision -------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        self._stop = stop
        while not stop.is_set():
            client: ImapClient | None = None
            try:
                self._take_lease()
                client = self.connector(self.box, self.config_file)
                self.connected = True
                self._ensure_folders(client)
                self._serve(client)
            except Stopped:
                break
            except LeaseLost:
                self._lease_held = False
                self.health = "standby"
                self.log.warning("imap_lease_lost")
            except RETRYABLE as exc:
                self._failed(exc)
                maximum = BACKOFF_MAX_AUTH if isinstance(exc, AuthFailed) else BACKOFF_MAX
                self._pause(backoff_delay(self._failures, maximum, self._rng))
            except Exception:  # a bug must not kill the worker: log, back off, retry
                self._failures += 1
                self.health = "failing: internal error"
                self.log.exception("imap_worker_error", failures=self._failures)
                self._pause(backoff_delay(self._failures, BACKOFF_MAX, self._rng))
            finally:
                self.connected = False
                close_quietly(client)
        self._release_lease()
        self.log.info("imap_worker_stopped")

    def tick(self) -> None:
        """Called between blocking steps: heartbeat, lease renewal, stop check."""
        self.heartbeat.beat()
        if self._stop.is_set():
            raise Stopped
        if self._lease_held and time.monotonic() - self._lease_renewed >= LEASE_RENEW_EVERY:
            with unit_of_work(self.services.factory) as session:
                ok = leases.renew(session, self.name, self.services.instance_id, LEASE_TTL, self.services.clock())
            if not ok:
                raise LeaseLost
            self._lease_renewed = time.monotonic()

    def _pause(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self._stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._stop.wait(min(remaining, IDLE_CHECK_SLICE))
            try:
                self.tick()
            except (Stopped, LeaseLost):
                return
            except SQLAlchemyError:
                continue

    def _failed(self, exc: BaseException) -> None:
        """Count the failure; log the first of a burst (and any change of error), not every retry."""
        self._failures += 1
        if self._failures == 1:
            self._burst_started = time.monotonic()
        text = error_text(exc)
        self.health = f"failing: {text}"
        if self._failures == 1 or text != self.last_error:
            event = "imap_login_failed" if isinstance(exc, AuthFailed) else "imap_connection_failed"
            (self.log.error if isinstance(exc, AuthFailed) else self.log.warning)(
                event, server=describe(self.box), error=text, failures=self._failures)
        else:
            self.log.debug("imap_retry", error=text, failures=self._failures)
        self.last_error = text

    def _caught_up(self) -> None:
        if self._failures:
            self.log.info("imap_recovered", failures=self._failures,
                          down_seconds=round(time.monotonic() - self._burst_started, 1))
        elif self.health != "ok":
            self.log.info("imap_connected", server=describe(self.box))
        self._failures = 0
        self.health = "ok"
        self.last_error = None

    # --- lease ---------------------------------------------------------------------------------------

    def _take_lease(self) -> None:
        announced = False
        while not self._lease_held:
            with unit_of_work(self.services.factory) as session:
                got = leases.acquire(session, self.name, self.services.instance_id, LEASE_TTL,
                                     self.services.clock())
            if got:
                self._lease_held = True
                self._lease_renewed = time.monotonic()
                return
            if not announced:
                self.health = "standby"
                self.log.info("imap_lease_held_elsewhere")
                announced = True
            self._pause(LEASE_RENEW_EVERY)
            if self._stop.is_set():
                raise Stopped

    def _release_lease(self) -> None:
        if not self._lease_held:
            return
        try:
            with unit_of_work(self.services.factory) as session:
                leases.release(session, self.name, self.services.instance_id)
        except SQLAlchemyError:
            pass  # it expires on its own
        self._lease_held = False

    # --- connected -----------------------------------------------------------------------------------

    def _ensure_folders(self, client: ImapClient) -> None:
        for target in (self.box.move_target, self.box.quarantine_folder):
            if target and not client.folder_exists(target):
                client.create_folder(target)
                self.log.info("imap_folder_created", created=target)

    def _serve(self, client: ImapClient) -> None:
        """Catch up, then wait for mail and sync again, until stopped or the connection dies."""
        while True:
            self._catch_up(client)
            self._caught_up()
            self._wait_for_mail(client)

    def _catch_up(self, client: ImapClient) -> None:
        for _ in range(MAX_PASSES_PER_WAKE):
            self.tick()
            report = self.sync.sync_pass(client)
            if report.found or report.uidvalidity_changed:
                self.log.info("imap_pass", stored=report.stored, duplicates=report.duplicates,
                              quarantined=report.quarantined, gone=report.gone, actions_done=report.actions_done)
            if not report.found and not take_exists_note(client):
                return

    def _wait_for_mail(self, client: ImapClient) -> None:
        if self.box.idle and client.has_capability("IDLE"):
            self._idle(client)
        else:
            self._pause(self.box.poll_interval)
            self.tick()
            client.noop()

    def _idle(self, client: ImapClient) -> None:
        """IDLE is a hint, not proof of life (RELIABILITY P6): refresh it, and probe a silent server."""
        client.idle()
        started = heard = time.monotonic()
        quick_empty = 0
        probe = False
        while True:
            before = time.monotonic()
            responses = client.idle_check(timeout=IDLE_CHECK_SLICE)
            now = time.monotonic()
            try:
                self.tick()
            except Stopped:
                client.idle_done()
                raise
            if responses:
                heard, quick_empty = now, 0
                if any(_is_bye(r) for r in responses):
                    raise ConnectionDead("the server said BYE")
                if any(_is_new_mail(r) for r in responses):
                    break
            elif now - before < IDLE_CHECK_SLICE / 2:
                quick_empty += 1  # readable but nothing parsed twice in a row: the socket hit EOF
                if quick_empty >= 2:
                    raise ConnectionDead("the server closed the connection during IDLE")
            if now - started >= self.box.idle_refresh:
                break
            if now - heard >= self.box.noop_interval:
                probe = True
                break
        client.idle_done()  # bounded by the socket timeout: a blackholed connection raises here
        if probe:
            client.noop()


def _is_bye(response: Any) -> bool:
    return isinstance(response, tuple) and len(response) >= 1 and response[0] == b"BYE"


def _is_new_mail(response: Any) -> bool:
    return isinstance(response, tuple) and len(response) >= 2 and response[1] in (b"EXISTS", b"RECENT")


class ImapFolderStage:
    """The daemon `Stage` around a `FolderWorker`: its blocking loop runs in a thread of its own."""

    def __init__(self, worker: FolderWorker) -> None:
        self.name = worker.name
        self.worker = worker

    def alive(self, now: float) -> bool:
        return self.worker.heartbeat.alive(now)

    def connections(self) -> dict[str, bool]:
        """For the daemon's status line, /healthz and the mailbox_connected gauge."""
        return {f"{self.worker.box.name}:{self.worker.folder}": self.worker.connected}

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        flag = threading.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="imap")
        future: asyncio.Future[Any] = loop.run_in_executor(self._executor, self.worker.run, flag)
        stopper: asyncio.Future[Any] = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait([future, stopper], return_when=asyncio.FIRST_COMPLETED)
        finally:
            flag.set()
            stopper.cancel()
            try:
                await future
            except Exception:  # the worker catches everything; this is the last line
                log.exception("imap_stage_crashed", stage=self.name)
            self._executor.shutdown(wait=True)


def build_stages(config: Config, services: Services, config_file: Path,
                 on_stored: Callable[[], None]) -> list[ImapFolderStage]:
    """One stage per configured (mailbox, folder)."""
    stages = []
    for box in config.mailbox:
        max_size = box.max_message_size or config.smtp_in.max_message_size
        for folder in box.folders:
            stages.append(ImapFolderStage(FolderWorker(box, folder, services, config_file, max_size, on_stored)))
    return stages


def check_mailboxes(config: Config, connector: Connector = connect) -> list[tuple[str, str | None]]:
    """For `check-config --connect`: log in to every mailbox and examine its folders; one line per mailbox."""
    results: list[tuple[str, str | None]] = []
    for box in config.mailbox:
        name = f"mailbox {box.name} ({describe(box)})"
        client: ImapClient | None = None
        try:
            client = connector(box, config.source_path)
            missing = [f for f in box.folders if not client.folder_exists(f)]
            if missing:
                results.append((name, f"folder(s) not found: {', '.join(missing)}"))
                continue
            for folder in box.folders:
                client.select_folder(folder, readonly=True)
            results.append((name, None))
        except RETRYABLE as exc:
            results.append((name, error_text(exc)))
        finally:
            close_quietly(client)
    return results
