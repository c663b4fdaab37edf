"""The real daemon under a fake systemd: sd_notify READY/STATUS/WATCHDOG/STOPPING, stalls, crashes, signals.

Each test starts `mail2ticket run` as a subprocess with NOTIFY_SOCKET pointing at an abstract datagram
socket owned by the test, exactly what systemd does for `Type=notify`.
"""

from __future__ import annotations

import signal
import smtplib
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.app import App, wait_until
from tests.support.mails import citizen_mail


class NotifySocket:
    """The systemd side of sd_notify: collects every datagram the daemon sends."""

    def __init__(self) -> None:
        self.name = f"m2t-test-{uuid.uuid4().hex[:12]}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + self.name)
        self.sock.settimeout(0.2)
        self.messages: list[dict[str, str]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    @property
    def env(self) -> dict[str, str]:
        return {"NOTIFY_SOCKET": "@" + self.name}

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            with self._lock:
                self.messages.append(fields)

    def all(self) -> list[dict[str, str]]:
        with self._lock:
            return list(self.messages)

    def count(self, key: str) -> int:
        return sum(1 for m in self.all() if key in m)

    def statuses(self) -> list[str]:
        return [m["STATUS"] for m in self.all() if "STATUS" in m]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


@pytest.fixture
def notify() -> Iterator[NotifySocket]:
    sock = NotifySocket()
    yield sock
    sock.close()


def fast_ops(app: App, **extra: object) -> App:
    """Short status interval so STATUS= and the gauges follow quickly."""
    return app.set("operations", status_interval=0.2, **extra)


def test_ready_status_watchdog_and_stopping(app: App, notify: NotifySocket) -> None:
    """READY=1 comes with a status line, WATCHDOG=1 repeats while healthy, STATUS counts tickets, STOPPING=1 on SIGTERM."""
    daemon = fast_ops(app).start(env={**notify.env, "WATCHDOG_USEC": "400000"})
    try:
        wait_until(lambda: notify.count("READY"), message="READY=1")
        ready = next(m for m in notify.all() if "READY" in m)
        assert ready["READY"] == "1"
        assert "backlog 0" in ready["STATUS"] and "tickets today 0" in ready["STATUS"]
        wait_until(lambda: notify.count("WATCHDOG") >= 3, message="watchdog pings")
        daemon.send(citizen_mail(subject="Status probe"))
        wait_until(lambda: any("tickets today 1" in s for s in notify.statuses()), message="STATUS with the ticket")
    finally:
        code = daemon.stop()
    assert code == 0
    assert notify.count("STOPPING") == 1
    assert [e["event"] for e in daemon.events()].count("daemon_stopped") == 1


def test_stalled_stage_stops_watchdog_pings(app: App, notify: NotifySocket) -> None:
    """A processing step stuck longer than stage_stall_seconds stops the WATCHDOG pings and says so in STATUS."""
    fast_ops(app, stage_stall_seconds=1)
    daemon = app.start(env={**notify.env, "WATCHDOG_USEC": "200000", "M2T_FAILPOINT": "process.step:sleep=60"})
    try:
        wait_until(lambda: any(e["event"] == "stage_unhealthy" for e in daemon.events()), message="stall detected")
        stalled = next(e for e in daemon.events() if e["event"] == "stage_unhealthy")
        assert stalled["stages"] == ["process"]
        wait_until(lambda: any("UNHEALTHY: process" in s for s in notify.statuses()), message="status names it")
        pings = notify.count("WATCHDOG")
        time.sleep(1.0)  # five ping periods: a healthy daemon would have pinged again by now
        assert notify.count("WATCHDOG") == pings
    finally:
        daemon.kill()


def test_crashing_stage_is_retried_and_then_fails_the_watchdog(app: App, notify: NotifySocket) -> None:
    """An outbox step that keeps failing is retried with backoff; after stage_max_failures the pings stop."""
    fast_ops(app, stage_max_failures=3, stage_backoff_max_seconds=0.5)
    daemon = app.start(env={**notify.env, "WATCHDOG_USEC": "200000", "M2T_FAILPOINT": "outbox.step:raise"})
    try:
        wait_until(lambda: any(e["event"] == "stage_unhealthy" for e in daemon.events()), message="unhealthy")
        failures = [e for e in daemon.events() if e["event"] == "stage_failed"]
        assert len(failures) >= 3 and {e["stage"] for e in failures} == {"outbox"}
        assert "FailpointError" in failures[0]["error"]
        pings = notify.count("WATCHDOG")
        # The other stages keep working: mail still becomes a ticket.
        daemon.send(citizen_mail(subject="Trotz Ausfall"))
        wait_until(lambda: any(t["subject"] == "Trotz Ausfall" for t in app.tickets()), message="ticket")
        wait_until(lambda: len([e for e in daemon.events() if e["event"] == "stage_failed"]) > len(failures),
                   message="the failing stage is still retried")
        assert notify.count("WATCHDOG") == pings
    finally:
        code = daemon.stop()
    assert code == 0


def _write_rules(path: Path, body: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(body, encoding="utf-8")
    tmp.replace(path)


def test_sighup_reloads_rules_and_refuses_an_invalid_file(app: App, notify: NotifySocket) -> None:
    """SIGHUP applies a changed rules file; a broken one is refused with a logged error and the old rules stay."""
    rules = app.root / "rules.toml"
    _write_rules(rules, '[[rule]]\nname = "bau"\nmatch = { subject = "Bauantrag" }\nqueue = "bauamt"\n')
    app.set("daemon", rules_file=str(rules))
    daemon = app.start(env=notify.env)

    def processed(n: int) -> None:
        wait_until(lambda: len([e for e in daemon.events() if e["event"] == "message_processed"]) == n,
                   message=f"{n} processed")

    try:
        daemon.send(citizen_mail(subject="Bauantrag 1"))
        processed(1)
        _write_rules(rules, '[[rule]]\nname = "bau"\nmatch = { subject = "Bauantrag" }\nqueue = "buergerbuero"\n')
        daemon.signal(signal.SIGHUP)
        wait_until(lambda: any(e["event"] == "reload_done" for e in daemon.events()), message="reload_done")
        daemon.send(citizen_mail(subject="Bauantrag 2"))
        processed(2)
        _write_rules(rules, '[[rule]]\nname = "bau"\nmatch = { subject = "([" }\nqueue = "bauamt"\n')
        daemon.signal(signal.SIGHUP)
        wait_until(lambda: any(e["event"] == "reload_refused" for e in daemon.events()), message="reload_refused")
        daemon.send(citizen_mail(subject="Bauantrag 3"))
        processed(3)
        _write_rules(rules, "")  # valid again, so the CLI below can read the config
        queues = {t["subject"]: t["queue"] for t in app.tickets()}
    finally:
        assert daemon.stop() == 0
    assert queues == {"Bauantrag 1": "bauamt", "Bauantrag 2": "buergerbuero", "Bauantrag 3": "buergerbuero"}
    refused = next(e for e in daemon.events() if e["event"] == "reload_refused")
    assert "rules.toml" in refused["error"] and refused["level"] == "error"
    assert notify.count("RELOADING") == 2
    assert notify.count("READY") == 3  # start-up plus one after each reload attempt


class LoadClient(threading.Thread):
    """A relay that keeps delivering, one connection per message, and remembers what got a 250."""

    def __init__(self, port: int, prefix: str, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.port, self.prefix, self.stop = port, prefix, stop
        self.accepted: list[str] = []
        self.outcomes: dict[str, int] = {}

    def _note(self, outcome: str) -> None:
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1

    def run(self) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            subject = f"{self.prefix}-{n}"
            try:
                with smtplib.SMTP("127.0.0.1", self.port, timeout=10) as client:
                    client.sendmail("buerger@example.org", ["buergerbuero@stadt.example"],
                                    citizen_mail(subject=subject))
                self.accepted.append(subject)
                self._note("250")
            except smtplib.SMTPResponseException as exc:
                self._note(str(exc.smtp_code))
            except (smtplib.SMTPServerDisconnected, ConnectionError, OSError):
                self._note("disconnected")
                time.sleep(0.02)


@pytest.mark.slow
def test_sigterm_under_smtp_load_loses_nothing(app: App, notify: NotifySocket) -> None:
    """T21: SIGTERM during steady SMTP load exits 0; every mail that got a 250 is a ticket after the restart."""
    daemon = app.start(env=notify.env)
    stop = threading.Event()
    clients = [LoadClient(app.smtp_port, f"load{i}", stop) for i in range(4)]
    for c in clients:
        c.start()
    try:
        wait_until(lambda: sum(len(c.accepted) for c in clients) >= 40, timeout=60, message="steady load")
        daemon.signal(signal.SIGTERM)
        daemon.proc.wait(30)
    finally:
        time.sleep(0.3)  # let the relays see the closed listener
        stop.set()
        for c in clients:
            c.join(15)
    assert daemon.proc.returncode == 0
    outcomes: dict[str, int] = {}
    for c in clients:
        for key, value in c.outcomes.items():
            outcomes[key] = outcomes.get(key, 0) + value
    assert set(outcomes) <= {"250", "421", "451", "disconnected"}, outcomes  # never a 5xx
    assert outcomes.get("421", 0) + outcomes.get("disconnected", 0) > 0  # the relays saw the shutdown
    accepted = [s for c in clients for s in c.accepted]
    restarted = app.start(env=notify.env, wait=False)
    try:
        wait_until(lambda: restarted.log().count('"daemon_ready"') == 2 or restarted.proc.poll() is not None,
                   timeout=30, message="restart")
        assert restarted.proc.poll() is None, restarted.log()[-3000:]
        wait_until(lambda: len(app.tickets()) >= len(accepted), timeout=60, message="backlog processed")
        subjects = [t["subject"] for t in app.tickets()]
    finally:
        assert restarted.stop() == 0, restarted.log()[-3000:]
    assert all(subjects.count(s) == 1 for s in accepted), "a 250-acknowledged mail is missing or doubled"
