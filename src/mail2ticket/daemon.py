"""The daemon: one asyncio loop runs the SMTP listener and supervises the worker stages.

Blocking work never runs on the loop: intake commits use a bounded thread pool, processing and the outbox
each have one thread of their own. Stages are woken by events (a stored message wakes processing, a
queued mail wakes the outbox) and also poll slowly, so nothing waits on a lost wake-up.

Lifecycle: READY=1 is sent once the schema is current and the listener is bound. SIGTERM stops accepting
(new sessions get 421), lets in-flight DATA finish, lets each worker finish its current item, then exits 0.
SIGHUP rebuilds the runtime (rules, templates, queues) from the config file and swaps it atomically; an
invalid file is refused with a logged error and the old runtime stays live.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import structlog

from mail2ticket.config import ConfigError, load_config
from mail2ticket.db import repo
from mail2ticket.db.engine import check_durability, unit_of_work
from mail2ticket.db.schema import ensure_schema
from mail2ticket.ingress.smtp import IntakeHandler, start_server
from mail2ticket.intake import Envelope, Stored, store
from mail2ticket.outbox.deliver import Deliverer
from mail2ticket.outbox.worker import OutboxWorker
from mail2ticket.pipeline.process import Processor
from mail2ticket.runtime import Runtime, Services
from mail2ticket.sdnotify import Notifier

log = structlog.get_logger("mail2ticket.daemon")

IDLE_POLL_SECONDS = 5.0


class RuntimeRef:
    """The live runtime; readers call it, SIGHUP swaps it in one assignment."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime

    def __call__(self) -> Runtime:
        return self._runtime

    def swap(self, runtime: Runtime) -> None:
        self._runtime = runtime


class Stage(Protocol):
    """A supervised worker: `run` returns when `stop` is set; `heartbeat` is when it last made progress."""

    name: str

    async def run(self, stop: asyncio.Event) -> None: ...

    def alive(self, now: float) -> bool: ...


@dataclass
class Heartbeat:
    last: float = field(default_factory=time.monotonic)
    stall_after: float = 120.0

    def beat(self) -> None:
        self.last = time.monotonic()

    def alive(self, now: float) -> bool:
        return now - self.last < self.stall_after


class ThreadWorkerStage:
    """Runs a blocking `step()` repeatedly in a dedicated thread; sleeps until woken when there is no work."""

    def __init__(self, name: str, step: Callable[[], bool], wake: asyncio.Event,
                 idle_wait: Callable[[], float] = lambda: IDLE_POLL_SECONDS) -> None:
        self.name = name
        self._step = step
        self._wake = wake
        self._idle_wait = idle_wait
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self.heartbeat = Heartbeat()
        self.failures = 0

    def alive(self, now: float) -> bool:
        return self.heartbeat.alive(now)

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        try:
            while not stop.is_set():
                self._wake.clear()
                try:
                    busy = await loop.run_in_executor(self._executor, self._step)
                    self.failures = 0
                except Exception:  # noqa: BLE001 - a crashing stage backs off and retries, the watchdog sees it
                    self.failures += 1
                    log.exception("stage_failed", stage=self.name, failures=self.failures)
                    busy = False
                    await _wait_any(stop, None, min(60.0, 2.0**self.failures))
                self.heartbeat.beat()
                if not busy:
                    await _wait_any(stop, self._wake, self._idle_wait())
        finally:
            self._executor.shutdown(wait=True)


async def _wait_any(stop: asyncio.Event, wake: asyncio.Event | None, timeout: float) -> None:
    waiters = [asyncio.ensure_future(stop.wait())]
    if wake is not None:
        waiters.append(asyncio.ensure_future(wake.wait()))
    try:
        await asyncio.wait(waiters, timeout=max(0.05, timeout), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()


class Daemon:
    def __init__(self, config_path: Path, runtime: Runtime, services: Services, deliverer: Deliverer,
                 notifier: Notifier | None = None,
                 extra_stages: Callable[[Daemon], list[Stage]] | None = None) -> None:
        self.config_path = config_path
        self.runtime = RuntimeRef(runtime)
        self.services = services
        self.notifier = notifier or Notifier()
        self.stop = asyncio.Event()
        self.process_wake = asyncio.Event()
        self.outbox_wake = asyncio.Event()
        self.processor = Processor(services, self.runtime)
        config = runtime.config
        self.outbox = OutboxWorker(services.factory, deliverer, config.smtp_out, services.instance_id,
                                   services.clock)
        self.intake_pool = ThreadPoolExecutor(max_workers=config.daemon.worker_threads, thread_name_prefix="intake")
        self.handler = IntakeHandler(lambda: self.runtime().config, self._store, self.intake_pool,
                                     config.smtp_in.protocol)
        self.stages: list[Stage] = [
            ThreadWorkerStage("process", self._process_step, self.process_wake),
            ThreadWorkerStage("outbox", self._outbox_step, self.outbox_wake, self._outbox_idle_wait),
        ]
        if extra_stages is not None:
            self.stages.extend(extra_stages(self))
        self.server: asyncio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # --- wiring between stages -----------------------------------------------------------------------

    def _store(self, raw: bytes, envelope: Envelope) -> Stored:
        stored = store(self.services.factory, raw, envelope)
        self.wake_processing()
        return stored

    def wake_processing(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.process_wake.set)

    def _process_step(self) -> bool:
        result = self.processor.process_next()
        if result is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(self.outbox_wake.set)
        return result is not None

    def _outbox_step(self) -> bool:
        return self.outbox.run_once() > 0

    def _outbox_idle_wait(self) -> float:
        due = self.outbox.next_due()
        if due is None:
            return IDLE_POLL_SECONDS
        return max(0.05, min(IDLE_POLL_SECONDS, (due - self.services.clock()).total_seconds()))

    # --- lifecycle -------------------------------------------------------------------------------------

    async def serve(self) -> int:
        self._loop = asyncio.get_running_loop()
        config = self.runtime().config
        for sig, action in ((signal.SIGTERM, self.request_stop), (signal.SIGINT, self.request_stop),
                            (signal.SIGHUP, self.reload)):
            self._loop.add_signal_handler(sig, action)
        if config.smtp_in.enabled:
            self.server = await start_server(self.handler, config.smtp_in)
            bound = ", ".join(f"{s.getsockname()[0]}:{s.getsockname()[1]}" for s in self.server.sockets)
            log.info("smtp_listening", address=bound, protocol=config.smtp_in.protocol)
        tasks = [asyncio.create_task(stage.run(self.stop), name=stage.name) for stage in self.stages]
        watchdog = asyncio.create_task(self._watchdog())
        self.notifier.ready(self._status_line())
        log.info("daemon_ready", instance=self.services.instance_id, stages=[s.name for s in self.stages])
        await self.stop.wait()
        self.notifier.stopping()
        log.info("daemon_stopping")
        await self._shutdown(tasks)
        watchdog.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watchdog
        log.info("daemon_stopped")
        return 0

    def request_stop(self) -> None:
        self.handler.accepting = False
        self.stop.set()

    async def _shutdown(self, tasks: list[asyncio.Task[None]]) -> None:
        if self.server is not None:
            self.server.close()  # no new connections; open sessions finish their DATA
            deadline = time.monotonic() + 20
            while self.handler.in_flight and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        await asyncio.gather(*tasks, return_exceptions=True)
        self.intake_pool.shutdown(wait=True)

    def reload(self) -> None:
        self.notifier.reloading()
        try:
            config = load_config(self.config_path)
            runtime = Runtime.build(config)
        except ConfigError as exc:
            log.error("reload_refused", error=str(exc))
        except Exception as exc:  # noqa: BLE001 - e.g. a template directory that vanished
            log.error("reload_refused", error=f"{type(exc).__name__}: {exc}")
        else:
            self.runtime.swap(runtime)
            log.info("reload_done", rules=len(runtime.router.rules), queues=len(config.queue))
        self.notifier.ready(self._status_line())

    async def _watchdog(self) -> None:
        interval = self.notifier.watchdog_interval
        period = min(10.0, interval / 2) if interval else 10.0
        while True:
            now = time.monotonic()
            if all(stage.alive(now) for stage in self.stages):
                self.notifier.watchdog()
            else:
                dead = [s.name for s in self.stages if not s.alive(now)]
                log.error("stage_stalled", stages=dead)
            self.notifier.status(self._status_line())
            await asyncio.sleep(period)

    def _status_line(self) -> str:
        try:
            with unit_of_work(self.services.factory) as session:
                backlog = repo.inbound_backlog(session)
                outbox = repo.outbound_backlog(session)
        except Exception:  # noqa: BLE001 - the status line must never take the daemon down
            return "database unreachable"
        return f"backlog {backlog}, outbox {outbox}"


def prepare_database(runtime: Runtime, services: Services) -> None:
    """Durability check and schema: embedded SQLite is upgraded in place, a shared PostgreSQL is not."""
    config = runtime.config
    check_durability(services.engine, allow_unsafe=config.daemon.allow_unsafe_durability)
    ensure_schema(services.engine, auto_upgrade=services.engine.dialect.name == "sqlite")


def run(config_path: Path, runtime: Runtime, services: Services, deliverer: Deliverer,
        extra_stages: Callable[[Daemon], list[Stage]] | None = None) -> int:
    prepare_database(runtime, services)

    async def main() -> int:
        daemon = Daemon(config_path, runtime, services, deliverer, extra_stages=extra_stages)
        return await daemon.serve()

    return asyncio.run(main())

