"""A throw-away real Dovecot IMAP/LMTP server on 127.0.0.1 for integration tests.

Place in the test suite: the IMAP end of the pipeline. Tests that exercise ingestion, IMAP sync,
MOVE/flag handling or reconnect logic talk to this server instead of a fake (STYLE.md §13);
`tests/support/imap_fixtures.py` wraps it in pytest fixtures.

How it runs (see the traps in `dovecot.conf.template`):
- The config is rendered into a short `tempfile.mkdtemp(dir="/tmp")` directory; unix socket paths
  are limited to 108 bytes and pytest's `/tmp/pytest-of-root` is 0700, so `nobody` could not use it.
- As root, Dovecot refuses to run `imap-login` as root and uid 0 is no valid mail user, so the
  directory is chowned to `nobody` and Dovecot (and doveadm) run through `setpriv` as `nobody`.
- A pool of users is written up front because passwd-file is re-read at most once a second;
  `Dovecot.user()` hands out a fresh, never-used one so that tests get empty mailboxes.
- `stop()` kills the whole process group with SIGKILL (SIGTERM takes ~1.1 s) and removes the dir.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import NamedTuple, Self

from imapclient import IMAPClient

TEMPLATE = Path(__file__).with_name("dovecot.conf.template")
_SBIN_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
_APPENDUID = re.compile(rb"\[APPENDUID (\d+) ([0-9:,]+)\]", re.IGNORECASE)
_START_ATTEMPTS = 5
_START_TIMEOUT = 10.0
_CLIENT_TIMEOUT = 10.0

Flag = str | bytes


class DovecotUnavailable(RuntimeError):
    """The `dovecot`/`doveadm` binaries are not installed (see .ci/install-system-deps.sh)."""


class ImapUser(NamedTuple):
    """A mail account on the test server: `(name, password)`."""

    name: str
    password: str


UserRef = ImapUser | str


def find_binary(name: str) -> str | None:
    """Return the path of a Dovecot binary, also looking in /usr/sbin (absent from some PATHs)."""
    return shutil.which(name, path=_SBIN_PATH)


def binaries_available() -> bool:
    """True when both `dovecot` and `doveadm` can be run."""
    return find_binary("dovecot") is not None and find_binary("doveadm") is not None


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1 (racy by nature; `Dovecot.start` retries)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _expand_uid_set(text: str) -> list[int]:
    uids: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition(":")
        uids.extend(range(int(lo), int(hi or lo) + 1))
    return uids


class Dovecot:
    """One Dovecot instance listening on 127.0.0.1 high ports; use as a context manager.

    `drop_capabilities` removes names from the advertised post-login CAPABILITY list through
    Dovecot 2.3's `imap_capability` (which can only replace or `+`-extend the list, so the full
    default list is probed once from a plain instance). Dovecot still *accepts* the commands; only
    clients that honour CAPABILITY (imapclient does for MOVE) see a server without them.
    `idle_notify_interval` sets how often an IDLEing client gets `* OK Still here` (seconds).
    Dovecot 2.3 has no configurable IMAP inactivity timeout (autologout is a fixed 30 min);
    simulate dead connections with `tests.support.tcp_proxy.TcpProxy.blackhole()` instead.
    """

    host = "127.0.0.1"

    def __init__(
        self,
        *,
        pool_size: int = 200,
        tls: bool = False,
        drop_capabilities: Sequence[str] = (),
        idle_notify_interval: int | None = None,
        extra_config: str = "",
        run_as: str = "nobody",
    ) -> None:
        self.pool_size = pool_size
        self.tls = tls
        self.drop_capabilities = tuple(c.upper() for c in drop_capabilities)
        self.idle_notify_interval = idle_notify_interval
        self.extra_config = extra_config
        self.port = 0
        self.lmtp_port = 0
        self.imaps_port: int | None = None
        self.dir = Path()
        self.log_path = Path()
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._next_user = 1
        self._passwords: dict[str, str] = {}
        if os.getuid() == 0:
            entry = pwd.getpwnam(run_as)
            self._uid, self._gid = entry.pw_uid, entry.pw_gid
            self._drop = ["setpriv", f"--reuid={self._uid}", f"--regid={self._gid}", "--clear-groups"]
        else:
            self._uid, self._gid = os.getuid(), os.getgid()
            self._drop = []
        self._user = pwd.getpwuid(self._uid).pw_name  # Dovecot wants names: the uid must resolve
        self._group = grp.getgrgid(self._gid).gr_name

    # ----------------------------------------------------------------- lifecycle
    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def conf_path(self) -> Path:
        return self.dir / "dovecot.conf"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Render the config, start `dovecot -F` and wait for the `* OK` greeting."""
        dovecot = find_binary("dovecot")
        if dovecot is None or find_binary("doveadm") is None:
            raise DovecotUnavailable(
                "dovecot/doveadm not found; install with `sudo bash .ci/install-system-deps.sh`"
            )
        extra = self._variant_config()
        self.dir = Path(tempfile.mkdtemp(prefix="dc-", dir="/tmp"))
        self.log_path = self.dir / "dovecot.log"
        try:
            self._start_in_dir(dovecot, extra)
        except BaseException:
            self.stop()
            raise

    def _start_in_dir(self, dovecot: str, extra: str) -> None:
        os.chmod(self.dir, 0o755)
        self._write_users()
        if self.tls:
            self._make_cert()
        last_error = ""
        for _ in range(_START_ATTEMPTS):
            self.port, self.lmtp_port = free_port(), free_port()
            self.imaps_port = free_port() if self.tls else None
            self._render(extra)
            if self._drop:
                for path in [self.dir, *self.dir.rglob("*")]:
                    os.chown(path, self._uid, self._gid)
            (self.dir / "run" / "master.pid").unlink(missing_ok=True)
            with open(self.dir / "stderr.log", "wb") as err:
                self._proc = subprocess.Popen(
                    # pdeathsig: a test run that dies without teardown leaves no server behind
                    # (it fires when the *thread* that started Dovecot ends: start it from a
                    # long-lived thread, as pytest fixtures are).
                    [
                        *(self._drop or ["setpriv"]),
                        "--pdeathsig=KILL",
                        dovecot,
                        "-F",
                        "-c",
                        str(self.conf_path),
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=err,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            if self._wait_ready():
                return
            last_error = self.read_log()
            self._kill()
            if "Address already in use" not in last_error:
                break
        raise RuntimeError(f"Dovecot did not start:\n{last_error}")

    def stop(self) -> None:
        """Kill the server's process group (fast, leaves nothing behind) and remove its dir."""
        self._kill()
        self._cleanup()

    def _kill(self) -> None:
        if self._proc is None:
            return
        try:
            os.killpg(self._proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self._proc.wait(timeout=10)
        self._proc = None

    def _cleanup(self) -> None:
        if self.dir.name.startswith("dc-") and self.dir.is_dir():
            shutil.rmtree(self.dir, ignore_errors=True)

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                return False
            try:
                with socket.create_connection((self.host, self.port), timeout=1.0) as s:
                    if s.makefile("rb").readline().startswith(b"* OK"):
                        return True
            except OSError:
                time.sleep(0.01)
        return False

    def read_log(self) -> str:
        """Dovecot's log plus anything the master printed before its log was up."""
        parts = []
        for name in ("stderr.log", "dovecot.log"):
            path = self.dir / name
            if path.is_file():
                parts.append(path.read_text(errors="replace"))
        return "".join(parts)

    # ----------------------------------------------------------------- rendering
    def _write_users(self) -> None:
        names = [f"user{n:02d}" for n in range(1, self.pool_size + 1)] + ["alice", "bob"]
        self._passwords = {name: f"pw-{name}" for name in names}
        home = self.dir / "home"
        for sub in ("run", "state", "home"):
            (self.dir / sub).mkdir()
        lines = [
            f"{name}:{{PLAIN}}{pw}:{self._uid}:{self._gid}::{home}/{name}::\n"
            for name, pw in self._passwords.items()
        ]
        passwd = self.dir / "passwd"
        passwd.write_text("".join(lines))
        passwd.chmod(0o600)

    def _make_cert(self) -> None:
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-days", "2", "-subj", "/CN=localhost",
             "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
             "-keyout", str(self.dir / "key.pem"), "-out", str(self.dir / "cert.pem")],
            check=True, capture_output=True,
        )  # fmt: skip

    def _variant_config(self) -> str:
        lines = []
        if self.drop_capabilities:
            caps = [c for c in self._default_capabilities() if c not in self.drop_capabilities]
            lines += ["protocol imap {", f"  imap_capability = {' '.join(caps)}", "}"]
        if self.idle_notify_interval is not None:
            lines.append(f"imap_idle_notify_interval = {self.idle_notify_interval} secs")
        lines.append(self.extra_config)
        return "\n".join(lines)

    def _default_capabilities(self) -> list[str]:
        """The post-login CAPABILITY list of an unmodified instance with the same extra config."""
        with Dovecot(pool_size=1, extra_config=self.extra_config) as probe:
            return probe.capabilities(probe.user())

    def _render(self, extra: str) -> None:
        ssl_lines = ""
        if self.tls:
            ssl_lines = f"ssl_cert = <{self.dir}/cert.pem\nssl_key = <{self.dir}/key.pem"
        values = {
            "@SSL_LINES@": ssl_lines,
            "@EXTRA@": extra,
            "@DIR@": str(self.dir),
            "@USER@": self._user,
            "@GROUP@": self._group,
            "@IMAP_PORT@": str(self.port),
            "@IMAPS_PORT@": str(self.imaps_port or 0),
            "@LMTP_PORT@": str(self.lmtp_port),
            "@SSL@": "yes" if self.tls else "no",
        }
        text = TEMPLATE.read_text()
        for key, value in values.items():
            text = text.replace(key, value)
        leftover = re.search(r"@[A-Z_]+@", text)
        if leftover:
            raise ValueError(f"unrendered placeholder {leftover.group()} in {TEMPLATE}")
        self.conf_path.write_text(text)

    # ----------------------------------------------------------------- users and clients
    def user(self, n: int | str | None = None) -> ImapUser:
        """A fresh, never-handed-out pool user (`user01`, `user02`, ...; password `pw-<name>`).

        With an argument it looks up an existing account instead: pool user `n`, or a name such
        as "alice"/"bob" (kept out of the fresh pool). Such look-ups do not reserve the account.
        """
        if n is None:
            with self._lock:
                n = self._next_user
                if n > self.pool_size:
                    raise RuntimeError(f"user pool exhausted ({self.pool_size}); raise pool_size")
                self._next_user += 1
        name = f"user{n:02d}" if isinstance(n, int) else n
        if name not in self._passwords:
            raise KeyError(f"no such test user {name!r}")
        return ImapUser(name, self._passwords[name])

    def _resolve(self, user: UserRef) -> ImapUser:
        return user if isinstance(user, ImapUser) else self.user(user)

    def ssl_context(self) -> ssl.SSLContext:
        """A client context that trusts this instance's self-signed certificate (needs tls=True)."""
        if not self.tls:
            raise RuntimeError("this Dovecot was started without tls=True")
        return ssl.create_default_context(cafile=str(self.dir / "cert.pem"))

    def connect(
        self, *, tls: bool = False, port: int | None = None, timeout: float = _CLIENT_TIMEOUT
    ) -> IMAPClient:
        """A connected, not yet logged-in client (plain, or implicit TLS on `imaps_port`).

        `port` points the client elsewhere, e.g. at a `TcpProxy` in front of this server.
        """
        if tls:
            return IMAPClient(self.host, port or self.imaps_port, ssl=True,
                              ssl_context=self.ssl_context(), timeout=timeout)  # fmt: skip
        return IMAPClient(self.host, port or self.port, ssl=False, timeout=timeout)

    def client(
        self, user: UserRef, *, tls: bool = False, port: int | None = None, timeout: float = _CLIENT_TIMEOUT
    ) -> IMAPClient:
        """A logged-in `IMAPClient`; use it as a context manager to log out."""
        account = self._resolve(user)
        c = self.connect(tls=tls, port=port, timeout=timeout)
        try:
            c.login(account.name, account.password)
        except BaseException:
            c.shutdown()
            raise
        return c

    def capabilities(self, user: UserRef) -> list[str]:
        """The post-login CAPABILITY list as the server advertises it (upper-cased)."""
        with self.client(user) as c:
            return [cap.decode() for cap in c.capabilities()]

    # ----------------------------------------------------------------- mailbox helpers
    def append(self, user: UserRef, folder: str, raw: bytes, flags: Iterable[Flag] = ()) -> int:
        """APPEND one message (creating `folder` if missing) and return its UID."""
        with self.client(user) as c:
            self._ensure_folder(c, folder)
            response = c.append(folder, raw, flags=tuple(flags))
        return self._appended_uids(response)[0]

    def append_many(
        self, user: UserRef, folder: str, raws: Iterable[bytes], flags: Iterable[Flag] = ()
    ) -> list[int]:
        """APPEND several messages (one MULTIAPPEND when available) and return their UIDs."""
        messages = list(raws)
        flag_tuple = tuple(flags)
        with self.client(user) as c:
            self._ensure_folder(c, folder)
            if c.has_capability("MULTIAPPEND"):
                _typ, data = c.multiappend(folder, [{"msg": raw, "flags": flag_tuple} for raw in messages])
                return self._appended_uids(b" ".join(data))
            uids = []
            for raw in messages:
                uids.extend(self._appended_uids(c.append(folder, raw, flags=flag_tuple)))
            return uids

    @staticmethod
    def _ensure_folder(c: IMAPClient, folder: str) -> None:
        if not c.folder_exists(folder):
            c.create_folder(folder)

    @staticmethod
    def _appended_uids(response: bytes) -> list[int]:
        match = _APPENDUID.search(response)
        if match is None:
            raise RuntimeError(f"no APPENDUID in APPEND response {response!r}")
        return _expand_uid_set(match.group(2).decode())

    def uids(self, user: UserRef, folder: str = "INBOX") -> list[int]:
        """All UIDs in `folder`, ascending (EXAMINE: does not touch \\Recent or \\Seen)."""
        with self.client(user) as c:
            c.select_folder(folder, readonly=True)
            return sorted(int(uid) for uid in c.search("ALL"))

    def flags(self, user: UserRef, folder: str = "INBOX") -> dict[int, frozenset[str]]:
        """UID -> set of flags, e.g. `{3: frozenset({"\\\\Seen"})}`; the per-session \\Recent is left out."""
        with self.client(user) as c:
            c.select_folder(folder, readonly=True)
            data = c.get_flags(c.search("ALL"))
        return {int(uid): frozenset(f.decode() for f in fl) - {"\\Recent"} for uid, fl in data.items()}

    def messages(self, user: UserRef, folder: str = "INBOX") -> dict[int, bytes]:
        """UID -> raw message bytes, fetched with BODY.PEEK[] so nothing becomes \\Seen."""
        with self.client(user) as c:
            c.select_folder(folder, readonly=True)
            data = c.fetch(c.search("ALL"), ["BODY.PEEK[]"])
        return {int(uid): bytes(item[b"BODY[]"]) for uid, item in data.items()}

    def uidvalidity(self, user: UserRef, folder: str = "INBOX") -> int:
        """The folder's current UIDVALIDITY (via STATUS, without selecting it)."""
        with self.client(user) as c:
            status = c.folder_status(folder, [b"UIDVALIDITY"])
        return int(status[b"UIDVALIDITY"])

    def recreate_folder(self, user: UserRef, folder: str) -> int:
        """Delete and re-create `folder` (its mail is gone) and return its new UIDVALIDITY.

        INBOX cannot be deleted in Dovecot, so for INBOX every message is expunged and the
        UIDVALIDITY is raised with `doveadm mailbox update` (UIDNEXT is not reset there).
        """
        account = self._resolve(user)
        old = self.uidvalidity(account, folder)
        if folder.upper() == "INBOX":
            self.doveadm("expunge", "-u", account.name, "mailbox", folder, "all")
            self.doveadm("mailbox", "update", "-u", account.name, "--uid-validity", str(old + 1), folder)
        else:
            self.doveadm("mailbox", "delete", "-u", account.name, folder)
            self.doveadm("mailbox", "create", "-u", account.name, folder)
        new = self.uidvalidity(account, folder)
        if new == old:
            raise RuntimeError(f"UIDVALIDITY of {folder} did not change ({old})")
        return new

    def doveadm(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run `doveadm -c DIR/dovecot.conf ARGS` as the server's OS user; raise on failure."""
        doveadm = find_binary("doveadm")
        assert doveadm is not None
        proc = subprocess.run(
            [*self._drop, doveadm, "-c", str(self.conf_path), *args],
            check=False, capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        if proc.returncode != 0:
            raise RuntimeError(f"doveadm {' '.join(args)} failed ({proc.returncode}): {proc.stderr}")
        return proc
