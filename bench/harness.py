"""Shared plumbing for the benchmarks: databases per backend, installations, process probes, statistics.

Each benchmark gets a fresh database (a SQLite file, or a new PostgreSQL database that is dropped again) and
an installation written by the test harness `tests.support.app.App`, so the benchmarks configure and start
mail2ticket exactly as the integration tests do.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.app import App

from bench.corpus import QUEUES_TOML

CLK_TCK = os.sysconf("SC_CLK_TCK")
DONE_STATES = ("done", "ignored", "quarantined")


# --- statistics ------------------------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(p / 100 * len(ordered) + 0.5)))
    return float(ordered[rank - 1])


def rounded(value: float, digits: int = 3) -> float:
    return float(f"{value:.{digits}g}") if math.isfinite(value) else value


@dataclass
class Check:
    """One target from the issue, with the measured value and whether it holds."""

    target: str
    measured: str
    passed: bool | None  # None: not applicable on this backend / not measured

    def as_dict(self) -> dict[str, Any]:
        return {"target": self.target, "measured": self.measured, "passed": self.passed}


@dataclass
class Outcome:
    """What a benchmark returns: its method, figures, per-round raw values, target checks and notes."""

    name: str
    method: str
    figures: dict[str, Any] = field(default_factory=dict)
    rounds: list[dict[str, Any]] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "method": self.method, "figures": self.figures, "rounds": self.rounds,
                "checks": [c.as_dict() for c in self.checks], "notes": self.notes}


def say(*parts: object) -> None:
    print(*parts, flush=True)


# --- databases ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Backend:
    name: str  # "sqlite" | "postgresql"
    admin_url: str | None = None  # PostgreSQL server to create throw-away databases on

    @contextlib.contextmanager
    def database(self, root: Path) -> Iterator[str]:
        """A fresh, empty database URL; a PostgreSQL database is dropped afterwards."""
        if self.name == "sqlite":
            root.mkdir(parents=True, exist_ok=True)
            yield f"sqlite:///{root / 'mail2ticket.db'}"
            return
        import psycopg

        assert self.admin_url is not None
        admin = self.admin_url.replace("postgresql+psycopg://", "postgresql://", 1)
        name = f"m2t_bench_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        try:
            yield f"{admin.rsplit('/', 1)[0].replace('postgresql://', 'postgresql+psycopg://', 1)}/{name}"
        finally:
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def upgrade_schema(database_url: str) -> None:
    """Build the schema with the migrations (the daemon only auto-upgrades SQLite)."""
    from mail2ticket.db.engine import make_engine
    from mail2ticket.db.schema import upgrade

    engine = make_engine(database_url)
    try:
        upgrade(engine)
    finally:
        engine.dispose()


class StateProbe:
    """Counts rows by state without taking SQLite's write lock (plain reads; the daemon keeps writing)."""

    def __init__(self, database_url: str) -> None:
        self.url = database_url
        if database_url.startswith("sqlite"):
            self._sqlite: sqlite3.Connection | None = sqlite3.connect(
                database_url.split(":///", 1)[1], isolation_level=None, timeout=30)
            self._pg: Any = None
        else:
            import psycopg

            self._sqlite = None
            self._pg = psycopg.connect(database_url.replace("postgresql+psycopg://", "postgresql://", 1),
                                       autocommit=True)

    def _rows(self, sql: str) -> list[tuple[Any, ...]]:
        if self._sqlite is not None:
            return list(self._sqlite.execute(sql).fetchall())
        return list(self._pg.execute(sql).fetchall())

    def inbound(self) -> dict[str, int]:
        return {str(s): int(n) for s, n in self._rows("SELECT state, count(*) FROM inbound_message GROUP BY state")}

    def outbound(self) -> dict[str, int]:
        return {str(s): int(n) for s, n in self._rows("SELECT state, count(*) FROM outbound_mail GROUP BY state")}

    def finished(self) -> int:
        return sum(n for s, n in self.inbound().items() if s in DONE_STATES)

    def scalar(self, sql: str) -> Any:
        rows = self._rows(sql)
        return rows[0][0] if rows else None

    def close(self) -> None:
        if self._sqlite is not None:
            self._sqlite.close()
        if self._pg is not None:
            self._pg.close()


# --- installations -----------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_app(root: Path, database_url: str) -> App:
    """An installation with the corpus's three queues (Bürgerbüro, Bauamt, Ordnungsamt)."""
    root.mkdir(parents=True, exist_ok=True)
    app = App(root=root, database_url=database_url, queues_toml=QUEUES_TOML)
    app.write_config()
    if not database_url.startswith("sqlite"):
        upgrade_schema(database_url)
    return app


def mail2ticket(app: App, *args: str) -> list[str]:
    return [sys.executable, "-m", "mail2ticket", "--config", str(app.write_config()), *args]


@dataclass
class ChildRun:
    returncode: int
    seconds: float
    max_rss_mb: float
    stdout: str
    stderr: str


def run_child_rss(argv: list[str], *, stdout_path: Path, timeout: float = 3600) -> ChildRun:
    """Run a command to completion; wall time and its own peak RSS (its parse workers included), measured by
    `peak_rss.py` so that the peak of this process, which the command's would otherwise include, stays out."""
    start = time.perf_counter()
    result = stdout_path.with_suffix(".rss")
    launcher = [sys.executable, str(Path(__file__).with_name("peak_rss.py")), str(result), "--", *argv]
    with stdout_path.open("wb") as out, stdout_path.with_suffix(".err").open("wb") as err:
        proc = subprocess.Popen(launcher, stdout=out, stderr=err, start_new_session=True)
        try:
            returncode = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise TimeoutError(f"{argv[:4]} did not finish within {timeout}s") from None
    seconds = time.perf_counter() - start
    peak_mb = int(result.read_text(encoding="ascii")) / 1024
    return ChildRun(returncode, seconds, peak_mb, stdout_path.read_text(errors="replace"),
                    stdout_path.with_suffix(".err").read_text(errors="replace"))


# --- process probes ---------------------------------------------------------------------------------------


def proc_status_kb(pid: int, key: str) -> int:
    """A field of /proc/PID/status in kB (VmRSS, VmHWM), or 0 when the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return 0
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def _children(task: Path) -> list[int]:
    """The child processes a thread started (/proc/PID/task/TID/children); [] once the thread has ended."""
    try:
        return [int(child) for child in (task / "children").read_text().split()]
    except (OSError, ValueError):
        return []


def tree_cpu_seconds(pid: int) -> float:
    """CPU time of a process, its live descendants (the daemon's parse workers) and its reaped children."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    own = sum(int(fields[i]) for i in (11, 12, 13, 14)) / CLK_TCK  # utime, stime, cutime, cstime
    return own + sum(tree_cpu_seconds(child) for task in tasks for child in _children(task))


def run_delays(pid: int) -> dict[tuple[int, int], float]:
    """Seconds each live thread of a process and of its descendants, keyed (pid, tid), has been ready to run but
    waited for a CPU: the kernel's run-queue delay, /proc/PID/task/TID/schedstat. Threads that ended are missing
    (compare two samples thread by thread); {} when the process is gone."""
    delays: dict[tuple[int, int], float] = {}
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return delays
    for task in tasks:
        try:
            delays[(pid, int(task.name))] = int((task / "schedstat").read_text().split()[1]) / 1e9
        except (OSError, IndexError, ValueError):  # the thread ended while it was read
            continue
        for child in _children(task):
            delays.update(run_delays(child))
    return delays


def cpu_pressure_seconds() -> float | None:
    """Seconds in which at least one runnable task of the machine waited for a CPU (Linux PSI, the `some`
    line of /proc/pressure/cpu); None where the kernel does not report it."""
    try:
        some = Path("/proc/pressure/cpu").read_text().splitlines()[0]
        return int(some.rsplit("total=", 1)[1]) / 1e6
    except (OSError, IndexError, ValueError):
        return None


def start_sink(mode: str, workdir: Path, *, db: Path | None = None) -> tuple[subprocess.Popen[bytes], int, Path]:
    """Start `bench.sink` in its own process; returns (process, port, record file)."""
    record = workdir / f"sink-{mode}-{uuid.uuid4().hex[:6]}.tsv"
    argv = [sys.executable, "-m", "bench.sink", "--mode", mode, "--record", str(record)]
    if db is not None:
        argv += ["--db", str(db)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=(workdir / "sink.err").open("ab"))
    assert proc.stdout is not None
    line = proc.stdout.readline().decode().strip()
    if not line.startswith("PORT "):
        proc.kill()
        raise RuntimeError(f"sink did not start: {line!r}")
    return proc, int(line.split()[1]), record


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def read_records(path: Path) -> list[tuple[float, str, str]]:
    """The sink's records: (monotonic arrival time, In-Reply-To, recipient)."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        parts = line.split("\t")
        if len(parts) == 3:
            out.append((float(parts[0]), parts[1], parts[2]))
    return out


def git_describe(repo: Path) -> dict[str, Any]:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=False).stdout.strip()

    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}


def dump_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
    tmp.replace(path)


@dataclass
class Ctx:
    """What every benchmark is given: backend, sizes, where to work and where to put profiles."""

    backend: Backend
    quick: bool
    workdir: Path
    seed: int
    profile_dir: Path | None = None
    sizes: dict[str, int] = field(default_factory=dict)
    rounds_override: int | None = None

    def size(self, key: str, full: int, quick: int) -> int:
        return self.sizes.get(key, quick if self.quick else full)

    def rounds(self, full: int, quick: int = 1) -> int:
        return self.rounds_override or (quick if self.quick else full)

    def dir(self, name: str) -> Path:
        path = self.workdir / self.backend.name / f"{name}-{uuid.uuid4().hex[:6]}"
        path.mkdir(parents=True, exist_ok=True)
        return path


def py_spy() -> str:
    """py-spy from the venv (pip install py-spy), else from PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else "py-spy"


def start_spy(pid: int, path: Path | None, rate: int = 200) -> subprocess.Popen[bytes] | None:
    """py-spy sampling of a running process into collapsed stacks (`--format raw`); None without a path."""
    if path is None:
        return None
    proc = subprocess.Popen([py_spy(), "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw",
                             "--threads", "-o", str(path), "--nonblocking"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    return proc


def stop_spy(proc: subprocess.Popen[bytes] | None) -> None:
    """py-spy writes its file when the target exits or on SIGINT."""
    if proc is None:
        return
    if proc.poll() is None:
        proc.send_signal(2)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def spy_argv(argv: list[str], path: Path | None, rate: int = 200) -> list[str]:
    """Wrap a command so py-spy samples it from start to exit."""
    if path is None:
        return argv
    return [py_spy(), "record", "--rate", str(rate), "--format", "raw", "--threads", "-o", str(path),
            "--nonblocking", "--", *argv]
