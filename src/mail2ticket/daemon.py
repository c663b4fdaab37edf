"""The daemon: one asyncio loop runs the SMTP listener and the HTTP endpoint, and supervises the stages.

Blocking work never runs on the loop: intake commits use a bounded thread pool, processing and the outbox
each have one thread of their own, and the status counts come from a separate one-thread pool. Stages are
woken by events (a stored message wakes processing, a processed one wakes the outbox) and also poll slowly,
so nothing waits on a lost wake-up.

Supervision and health:

| situation                                   | effect                                                          |
|---------------------------------------------|-----------------------------------------------------------------|
| a step raises                               | logged, retried after backoff (0.5 s doubling, capped)          |
| `stage_max_failures` failures in a row      | stage unhealthy: WATCHDOG pings stop, /healthz 503 (keeps retrying) |
| a step runs longer than its stall limit     | stage unhealthy (stuck I/O, lock, endless loop)                 |
| a stage task dies (extra stages, e.g. IMAP) | restarted with the same backoff; counts as a failure             |
| every stage alive                           | WATCHDOG=1 every WatchdogSec/2, /healthz 200                    |

Lifecycle: READY=1 is sent once the schema is current and the listeners are bound. SIGTERM sends
STOPPING=1, stops accepting (new SMTP sessions get 421, the listening socket closes), lets in-flight DATA
finish, lets each stage finish its current item, then exits 0. SIGHUP rebuilds the runtime (rules,
templates, queues) from the config file in a worker thread and swaps it atomically; an invalid file is
refused with a logged error and the old runtime stays live.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import structlog

from mail2ticket.config import ConfigError, load_config
from mail2ticket.config.operations import OperationsConfig
from mail2ticket.db.engine import check_durability, read_only, write_lock_usage
from mail2ticket.db.schema import ensure_schema
from mail2ticket.group_commit import GroupCommitter
from mail2ticket.http import Response, start_http
from mail2ticket.ingress.smtp import IntakeHandler, start_server
from mail2ticket.intake import Envelope, Stored
from mail2ticket.malloc_tuning import tune as tune_malloc
from mail2ticket.metrics import (
    CONTENT_TYPE,
    Metrics,
    Snapshot,
    channel,
    count_delivered,
    count_processed,
    delivered_info,
    processed_infos,
    read_snapshot,
)
from mail2ticket.outbox.deliver import Deliverer, RecordingDeliverer
from mail2ticket.outbox.journal import DeliveryJournal
from mail2ticket.outbox.worker import OutboxWorker
from mail2ticket.pipeline.process import Processor
from mail2ticket.runtime import Runtime, Services
from mail2ticket.sdnotify import Notifier
from mail2ticket.stages import IDLE_POLL_SECONDS, MailboxStage, Stage, ThreadWorkerStage, backoff, wait_any

log = structlog.get_logger("mail2ticket.daemon")


class RuntimeRef:
    """The live runtime; readers call it, SIGHUP swaps it in one assignment."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime

    def __call__(self) -> Runtime:
        return self._runtime

    def swap(self, runtime: Runtime) -> None:
        self._runtime = runtime


class Daemon:
    def __init__(self, config_path: Path, runtime: Runtime, services: Services, deliverer: Deliverer,
                 notifier: Notifier | None = None,
                 extra_stages: Callable[[Daemon], list[Stage]] | None = None,
                 journal: DeliveryJournal | None = None) -> None:
        self.config_path = config_path
        self.runtime = RuntimeRef(runtime)
        self.services = services
        self.notifier = notifier or Notifier()
        self.metrics = Metrics()
        self.metrics.watch_write_lock(lambda: write_lock_usage(self.services.engine))
        self.stop = asyncio.Event()
        self.process_wake = asyncio.Event()
        self.outbox_wake = asyncio.Event()
        self.processor = Processor(services, self.runtime)
        config = runtime.config
        self.ops: OperationsConfig = config.operations
        self.deliverer = RecordingDeliverer(deliverer)
        self.outbox = OutboxWorker(services.factory, self.deliverer, config.smtp_out, services.instance_id,
                                   services.clock, journal)
        self.intake_pool = ThreadPoolExecutor(max_workers=config.daemon.worker_threads, thread_name_prefix="intake")
        self.status_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="status")
        self.committer = GroupCommitter(services.factory, self.intake_pool, on_stored=self.note_received)
        self.handler = IntakeHandler(lambda: self.runtime().config, self.committer, config.smtp_in.protocol)
        common: dict[str, Any] = {"max_failures": self.ops.stage_max_failures,
                                  "backoff_max": self.ops.stage_backoff_max_seconds,
                                  "on_failure": self._count_failure}
        outbox_stall = max(self.ops.stage_stall_seconds, 10 * config.smtp_out.timeout + 30)
        self.stages: list[Stage] = [
            ThreadWorkerStage("process", self._process_step, self.process_wake,
                              stall_after=self.ops.stage_stall_seconds, **common),
            ThreadWorkerStage("outbox", self._outbox_step, self.outbox_wake, self._outbox_idle_wait,
                              stall_after=outbox_stall, **common),
        ]
        if extra_stages is not None:
            self.stages.extend(extra_stages(self))
        self.task_failures: dict[str, int] = {s.name: 0 for s in self.stages}
        self.server: asyncio.Server | None = None
        self.http: asyncio.Server | None = None
        self.snapshot = Snapshot(ok=False)
        self._refreshing = False
        self._reload_lock = asyncio.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None

    # --- wiring between stages -----------------------------------------------------------------------

    def note_received(self, envelope: Envelope, stored: Stored) -> None:
        """Every ingress calls this after its intake commit (counts it, wakes processing); thread-safe."""
        self.metrics.received.labels(channel(envelope.source, envelope.mailbox), str(stored.duplicate).lower()).inc()
        if not stored.duplicate:
            self.wake_processing()

    def wake_processing(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.process_wake.set)

    def _process_step(self) -> bool:
        results = self.processor.process_batch()
        if not results:
            return False
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.outbox_wake.set)
        with contextlib.suppress(Exception):  # metrics must never fail a processed message
            with read_only(self.services.factory) as session:
                infos = processed_infos(session, [result.inbound_id for result in results])
            for result in results:
                if (info := infos.get(result.inbound_id)) is not None:
                    count_processed(self.metrics, result.state, info)
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.outbox_wake.set)
        return True

    def _outbox_step(self) -> bool:
        count = self.outbox.run_once()
        if handled := self.deliverer.handled:
            later: set[str] = set()
            with contextlib.suppress(Exception):  # a failed read loses these counts, never a mail
                with read_only(self.services.factory) as session:
                    infos = delivered_info(session, list(handled))
                later = count_delivered(self.metrics, infos, journaled=self.outbox.journal_pending())
            handled[:] = [message_id for message_id in handled if message_id in later]
        return count > 0

    def _outbox_idle_wait(self) -> float:
        due = self.outbox.next_due()
        if due is None:
            return IDLE_POLL_SECONDS
        return max(0.05, min(IDLE_POLL_SECONDS, (due - self.services.clock()).total_seconds()))

    def _count_failure(self, stage: str) -> None:
        self.metrics.stage_failures.labels(stage).inc()

    # --- lifecycle -------------------------------------------------------------------------------------

    async def serve(self) -> int:
        self._loop = asyncio.get_running_loop()
        config = self.runtime().config
        for sig, action in ((signal.SIGTERM, self.request_stop), (signal.SIGINT, self.request_stop),
                            (signal.SIGHUP, self.request_reload)):
            self._loop.add_signal_handler(sig, action)
        if config.smtp_in.enabled:
            self.committer.start()
            self.server = await start_server(self.handler, config.smtp_in)
            log.info("smtp_listening", address=_bound(self.server), protocol=config.smtp_in.protocol)
        if self.ops.http_enabled:
            host, port = self.ops.http_address
            self.http = await start_http(host, port, {"/metrics": self.metrics_response,
                                                      "/healthz": self.health_response})
            log.info("http_listening", address=_bound(self.http))
        self.processor.start_workers()  # spawned only; the first mail need not wait for their imports
        tasks = [asyncio.create_task(self._supervise(stage), name=stage.name) for stage in self.stages]
        self._apply_snapshot(await self._loop.run_in_executor(self.status_pool, self._take_snapshot))
        monitor = asyncio.create_task(self._monitor())
        self.notifier.ready(self.status_line())
        log.info("daemon_ready", instance=self.services.instance_id, stages=[s.name for s in self.stages])
        await self.stop.wait()
        self.notifier.stopping()
        log.info("daemon_stopping")
        await self._shutdown(tasks)
        monitor.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await monitor
        log.info("daemon_stopped")
        return 0

    def request_stop(self) -> None:
        self.handler.accepting = False
        self.stop.set()

    async def _shutdown(self, tasks: list[asyncio.Task[None]]) -> None:
        if self.server is not None:
            self.server.close()  # no new connections; open sessions get 421 at MAIL, DATA in flight finishes
            deadline = time.monotonic() + 20
            while self.handler.in_flight and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        await asyncio.gather(*tasks, return_exceptions=True)
        try:
            await asyncio.to_thread(self.outbox.fold_journal)
        except Exception as exc:  # noqa: BLE001 - the journal keeps the lines, and the next start folds them
            log.warning("outbox_journal_fold_failed", error=f"{type(exc).__name__}: {str(exc)[:200]}")
        await asyncio.to_thread(self.processor.close)  # ends its parse-ahead stream before the services close
        self.intake_pool.shutdown(wait=True)
        self.committer.close(timeout=30)
        with contextlib.suppress(Exception):  # the mails are sent; a failing QUIT must not fail the shutdown
            self.deliverer.close()
        if self.http is not None:
            self.http.close()
        self.status_pool.shutdown(wait=False, cancel_futures=True)

    async def _supervise(self, stage: Stage) -> None:
        """Run a stage until shutdown; a crash or an early return restarts it after backoff."""
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                await stage.run(self.stop)
                if self.stop.is_set():
                    return
                raise RuntimeError("stage returned before shutdown")
            except Exception as exc:
                if time.monotonic() - started > 2 * self.ops.stage_backoff_max_seconds:
                    self.task_failures[stage.name] = 0  # it ran fine for a while: a new burst
                self.task_failures[stage.name] += 1
                self._count_failure(stage.name)
                log.exception("stage_crashed", stage=stage.name, failures=self.task_failures[stage.name],
                          error=f"{type(exc).__name__}: {str(exc)[:200]}")
                await wait_any(self.stop, None,
                                backoff(self.task_failures[stage.name], self.ops.stage_backoff_max_seconds))

    # --- health, status, metrics -----------------------------------------------------------------------

    def stage_alive(self, stage: Stage, now: float) -> bool:
        return stage.alive(now) and self.task_failures.get(stage.name, 0) < self.ops.stage_max_failures

    def unhealthy(self, now: float) -> list[str]:
        return [s.name for s in self.stages if not self.stage_alive(s, now)]

    def connections(self) -> dict[str, bool]:
        out: dict[str, bool] = {}
        for stage in self.stages:
            if isinstance(stage, MailboxStage):
                out.update(stage.connections())
        return out

    def health(self) -> tuple[bool, dict[str, Any]]:
        now = time.monotonic()
        stages: dict[str, Any] = {}
        for stage in self.stages:
            detail = stage.detail(now) if isinstance(stage, ThreadWorkerStage) else {}
            detail.update(alive=self.stage_alive(stage, now), task_failures=self.task_failures.get(stage.name, 0))
            stages[stage.name] = detail
        ok = all(d["alive"] for d in stages.values()) and self.snapshot.ok and not self.stop.is_set()
        return ok, {"status": "ok" if ok else "unhealthy", "stopping": self.stop.is_set(), "stages": stages,
                    "database": self.snapshot.ok, "mailboxes": self.connections(),
                    "backlog": {"process": self.snapshot.inbound_backlog, "outbox": self.snapshot.outbound_backlog}}

    def health_response(self) -> Response:
        ok, detail = self.health()
        return Response.json(200 if ok else 503, detail)

    def metrics_response(self) -> Response:
        return Response(200, self.metrics.render(), CONTENT_TYPE)

    def status_line(self) -> str:
        snap = dataclasses.replace(self.snapshot, connected=self.connections())
        return snap.status_line(self.unhealthy(time.monotonic()))

    def _take_snapshot(self) -> Snapshot:
        try:
            return read_snapshot(self.services.factory, dt.datetime.now(dt.UTC))
        except Exception as exc:  # noqa: BLE001 - the status line must never take the daemon down
            log.warning("status_query_failed", error=type(exc).__name__)
            return Snapshot(ok=False)

    def _apply_snapshot(self, snap: Snapshot) -> None:
        self.snapshot = snap
        self.metrics.apply(snap)

    def _refresh(self) -> None:
        """Start a snapshot in the status thread unless one is still running (a hung DB must not pile up)."""
        if self._refreshing or self._loop is None:
            return
        self._refreshing = True

        def done(fut: asyncio.Future[Snapshot]) -> None:
            self._refreshing = False
            if not fut.cancelled() and fut.exception() is None:
                self._apply_snapshot(fut.result())
                self.notifier.status(self.status_line())

        with contextlib.suppress(RuntimeError):  # pool already shut down during stop
            self._loop.run_in_executor(self.status_pool, self._take_snapshot).add_done_callback(done)

    async def _monitor(self) -> None:
        """Watchdog pings only while every stage is alive; status and gauges every status_interval."""
        interval = self.notifier.watchdog_interval
        period = min(self.ops.status_interval, interval / 2) if interval else self.ops.status_interval
        next_status = time.monotonic() + self.ops.status_interval
        reported: list[str] = []
        while True:
            now = time.monotonic()
            unhealthy = self.unhealthy(now)
            for stage in self.stages:
                self.metrics.stage_up.labels(stage.name).set(0 if stage.name in unhealthy else 1)
            for mailbox, up in self.connections().items():
                self.metrics.mailbox_connected.labels(mailbox).set(1 if up else 0)
            if not unhealthy:
                self.notifier.watchdog()
                if reported:
                    log.info("stages_recovered", stages=reported)
            elif unhealthy != reported:
                log.error("stage_unhealthy", stages=unhealthy)
                self.notifier.status(self.status_line())
            reported = unhealthy
            if now >= next_status:
                next_status = now + self.ops.status_interval
                self._refresh()
            await asyncio.sleep(period)

    # --- reload ----------------------------------------------------------------------------------------

    def request_reload(self) -> None:
        if self._loop is not None:
            self._loop.create_task(self.reload())

    async def reload(self) -> None:
        async with self._reload_lock:
            self.notifier.reloading()
            try:
                runtime = await asyncio.to_thread(self._build_runtime)
            except ConfigError as exc:
                self.metrics.reloads.labels("refused").inc()
                log.error("reload_refused", error=str(exc))
            except Exception as exc:  # noqa: BLE001 - e.g. a template directory that vanished
                self.metrics.reloads.labels("refused").inc()
                log.error("reload_refused", error=f"{type(exc).__name__}: {exc}")
            else:
                self.runtime.swap(runtime)
                self.metrics.reloads.labels("ok").inc()
                log.info("reload_done", rules=len(runtime.router.rules), queues=len(runtime.config.queue))
            self.notifier.ready(self.status_line())

    def _build_runtime(self) -> Runtime:
        return Runtime.build(load_config(self.config_path))


def _bound(server: asyncio.Server) -> str:
    return ", ".join(f"{s.getsockname()[0]}:{s.getsockname()[1]}" for s in server.sockets)


def prepare_database(runtime: Runtime, services: Services) -> None:
    """Durability check and schema: embedded SQLite is upgraded in place, a shared PostgreSQL is not."""
    config = runtime.config
    check_durability(services.engine, allow_unsafe=config.daemon.allow_unsafe_durability)
    ensure_schema(services.engine, auto_upgrade=services.engine.dialect.name == "sqlite")


def run(config_path: Path, runtime: Runtime, services: Services, deliverer: Deliverer,
        extra_stages: Callable[[Daemon], list[Stage]] | None = None) -> int:
    journal = DeliveryJournal.for_engine(services.engine)  # first: a second daemon stops here (JournalInUse)
    try:
        log.info("malloc_tuned", settings=tune_malloc())
        prepare_database(runtime, services)

        async def main() -> int:
            daemon = Daemon(config_path, runtime, services, deliverer, extra_stages=extra_stages, journal=journal)
            return await daemon.serve()

        return asyncio.run(main())
    finally:
        if journal is not None:
            journal.close()
