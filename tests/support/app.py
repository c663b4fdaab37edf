"""Test harness for mail2ticket itself: config files, databases, the CLI and the daemon as a subprocess.

Everything is real: the config is a TOML file, the database is built by the Alembic migrations, the
daemon runs as `python -m mail2ticket run` and is talked to over SMTP on loopback.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import smtplib
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mail2ticket.cli.main import main as cli_main

QUEUES = """
[[queue]]
name = "buergerbuero"
address = "buergerbuero@stadt.example"
display_name = "Bürgerbüro Musterstadt"
staff = ["@stadt.example"]

[[queue]]
name = "bauamt"
address = "bauamt@stadt.example"
display_name = "Bauamt Musterstadt"
staff = ["@stadt.example"]
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def toml_value(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False) if not isinstance(value, bool) else str(value).lower()


@dataclass
class App:
    """One mail2ticket installation in a temp dir: config, database, outbox folder."""

    root: Path
    database_url: str
    smtp_port: int = field(default_factory=free_port)
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)
    extra_toml: str = ""
    queues_toml: str = QUEUES

    @property
    def config_path(self) -> Path:
        return self.root / "mail2ticket.toml"

    @property
    def outbox(self) -> Path:
        return self.root / "outbox"

    def set(self, section: str, **values: Any) -> App:
        self.sections.setdefault(section, {}).update(values)
        return self

    def write_config(self) -> Path:
        daemon = {"database_url": self.database_url, "data_dir": str(self.root / "data"), "domain": "stadt.example",
                  "subject_tag_prefix": "Stadt", "log_format": "json"}
        smtp_in = {"host": "127.0.0.1", "port": self.smtp_port}
        smtp_out = {"delivery": "folder", "folder": str(self.outbox), "retry_initial_seconds": 1,
                    "retry_max_seconds": 2}
        merged: dict[str, dict[str, Any]] = {"daemon": daemon, "smtp_in": smtp_in, "smtp_out": smtp_out}
        for name, values in self.sections.items():
            merged.setdefault(name, {}).update(values)
        lines: list[str] = []
        for name, values in merged.items():
            lines.append(f"[{name}]")
            lines.extend(f"{k} = {toml_value(v)}" for k, v in values.items())
            lines.append("")
        text = "\n".join(lines) + self.queues_toml + "\n" + self.extra_toml
        path = self.config_path
        if path.exists() and path.read_text(encoding="utf-8") == text:
            return path
        # Atomic: a daemon starting or reloading never reads a half-written file.
        tmp = path.with_suffix(".toml.tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
        return path

    # --- CLI --------------------------------------------------------------------------------------

    def cli(self, *args: str, stdin: bytes | None = None, env: dict[str, str] | None = None,
            check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run the real console entry point in a subprocess (exit codes and stderr as a user sees them)."""
        self.write_config()
        proc = subprocess.run(
            [sys.executable, "-m", "mail2ticket", "--config", str(self.config_path), *args],
            input=stdin.decode("utf-8", "surrogateescape") if stdin is not None else None,
            capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=120,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"mail2ticket {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}")
        return proc

    def run_inprocess(self, *args: str) -> int:
        """Run a CLI command in this process (fast; for commands that do not need their own process)."""
        self.write_config()
        return cli_main(["--config", str(self.config_path), *args])

    def json(self, *args: str) -> Any:
        """A --json listing, run in-process (much cheaper than a subprocess when polling)."""
        self.write_config()
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = cli_main(["--config", str(self.config_path), *args, "--json"])
        if code != 0:
            raise AssertionError(f"mail2ticket {' '.join(args)} --json exited {code}")
        return json.loads(out.getvalue())

    def tickets(self) -> list[dict[str, Any]]:
        return list(self.json("tickets", "list"))

    def ticket(self, number: str) -> dict[str, Any]:
        return dict(self.json("tickets", "show", number))

    def outbox_files(self) -> list[Path]:
        return sorted(self.outbox.glob("*.eml")) if self.outbox.exists() else []

    # --- daemon -----------------------------------------------------------------------------------

    def start(self, env: dict[str, str] | None = None, wait: bool = True) -> Daemon:
        self.write_config()
        log_path = self.root / "daemon.log"
        ready_before = log_path.read_text(errors="replace").count("daemon_ready") if log_path.exists() else 0
        with (self.root / "daemon.log").open("ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "mail2ticket", "--config", str(self.config_path), "run"],
                stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, start_new_session=True,
            )
        daemon = Daemon(self, proc, self.root / "daemon.log", ready_before=ready_before)
        if wait:
            daemon.wait_listening()
        return daemon


@dataclass
class Daemon:
    app: App
    proc: subprocess.Popen[bytes]
    log_path: Path
    ready_before: int = 0  # daemon_ready lines of earlier runs in the same log

    def wait_listening(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}:\n{self.log()}")
            if self.log().count("daemon_ready") > self.ready_before:
                return
            time.sleep(0.05)
        raise AssertionError(f"daemon not ready after {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def smtp(self) -> smtplib.SMTP:
        return smtplib.SMTP("127.0.0.1", self.app.smtp_port, timeout=30)

    def send(self, raw: bytes, sender: str = "buerger@example.org",
             recipients: tuple[str, ...] = ("buergerbuero@stadt.example",)) -> None:
        with self.smtp() as client:
            client.sendmail(sender, list(recipients), raw)

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
                raise AssertionError(f"daemon did not stop within {timeout}s:\n{self.log()}") from None
        return int(self.proc.returncode)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)


def wait_until(predicate: Any, timeout: float = 15.0, interval: float = 0.05, message: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {message}")
        time.sleep(interval)
