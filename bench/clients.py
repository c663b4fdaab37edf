"""SMTP load generators: K smtplib clients on persistent connections, as fast as possible or at a fixed rate.

Each send is MAIL, RCPT, then a timed DATA: the recorded latency runs from the DATA command to the final
reply (so it includes the 354 round trip and the transfer of the bytes, as a relay experiences it).

The message is dot-stuffed before MAIL, not between the 354 and the transfer as `smtplib.SMTP.data` does it.
smtplib's regex takes 12–16 ms for a 2 MB attachment, with the interpreter lock held (so the other client
threads wait too), and that was measured as the daemon's latency. A relay such as Postfix stuffs the lines
as it writes them. The paced load stuffs every mail before its clock starts.
"""

from __future__ import annotations

import re
import smtplib
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from bench.corpus import CorpusMail


@dataclass(frozen=True, slots=True)
class Sent:
    message_id: str
    latency: float  # seconds from DATA to the final reply
    replied_at: float  # time.monotonic() of the final reply (comparable across processes on Linux)
    code: int


_LINE_START_DOT = re.compile(rb"(?m)^\.")


def stuffed(raw: bytes) -> bytes:
    """The DATA payload of `raw` as `smtplib.SMTP.data` sends it: dots doubled, CRLF "." CRLF appended."""
    wire = _LINE_START_DOT.sub(b"..", raw)
    if wire[-2:] != b"\r\n":
        wire += b"\r\n"
    return wire + b".\r\n"


class _Client:
    def __init__(self, port: int) -> None:
        self.port = port
        self.smtp: smtplib.SMTP | None = None

    def send(self, mail: CorpusMail, wire: bytes | None = None) -> Sent:
        """MAIL, RCPT and a timed DATA of `wire` (`stuffed(mail.raw)`, computed here when not given)."""
        if wire is None:
            wire = stuffed(mail.raw)
        for attempt in range(3):
            try:
                if self.smtp is None:
                    self.smtp = smtplib.SMTP("127.0.0.1", self.port, timeout=120)
                    self.smtp.ehlo("bench.localhost")
                code, _ = self.smtp.mail(mail.mail_from)
                if code != 250:
                    self.smtp.rset()
                    return Sent(mail.message_id, float("nan"), time.monotonic(), code)
                for rcpt in mail.rcpt_to:
                    self.smtp.rcpt(rcpt)
                start = time.monotonic()
                code = self._data(self.smtp, wire)
                end = time.monotonic()
                return Sent(mail.message_id, end - start, end, code)
            except (smtplib.SMTPServerDisconnected, ConnectionError, TimeoutError):
                self.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    @staticmethod
    def _data(smtp: smtplib.SMTP, wire: bytes) -> int:
        """`smtplib.SMTP.data` for a payload that is stuffed already."""
        smtp.putcmd("data")
        code, _ = smtp.getreply()
        if code != 354:
            return code
        smtp.send(wire)
        code, _ = smtp.getreply()
        return code

    def close(self) -> None:
        if self.smtp is not None:
            try:
                self.smtp.quit()
            except (smtplib.SMTPException, OSError):
                self.smtp.close()
            self.smtp = None


def send_all(port: int, mails: Sequence[CorpusMail], concurrency: int) -> list[Sent]:
    """Send every mail as fast as `concurrency` clients can; results in corpus order."""
    return _send(port, mails, concurrency, start_of=None)


def send_paced(port: int, mails: Sequence[CorpusMail], rate: float, concurrency: int = 16) -> list[Sent]:
    """Open-loop load: mail i starts at t0 + i/rate whatever the previous replies took (no coordinated omission).

    Every mail is stuffed before the clock starts, so the clients do nothing but send while the load runs."""
    wires = [stuffed(mail.raw) for mail in mails]
    t0 = time.monotonic() + 0.2
    return _send(port, mails, concurrency, start_of=lambda index: t0 + index / rate, wires=wires)


def _send(port: int, mails: Sequence[CorpusMail], concurrency: int,
          start_of: Callable[[int], float] | None, wires: Sequence[bytes] | None = None) -> list[Sent]:
    """`concurrency` clients take the mails in order; mail i waits for `start_of(i)` (monotonic) when given."""
    results: list[Sent | None] = [None] * len(mails)
    next_index = 0
    lock = threading.Lock()
    errors: list[BaseException] = []

    def worker() -> None:
        nonlocal next_index
        client = _Client(port)
        try:
            while True:
                with lock:
                    index = next_index
                    next_index += 1
                if index >= len(mails) or errors:
                    return
                if start_of is not None and (delay := start_of(index) - time.monotonic()) > 0:
                    time.sleep(delay)
                results[index] = client.send(mails[index], wires[index] if wires is not None else None)
        except BaseException as exc:  # noqa: BLE001 - reported to the caller below
            errors.append(exc)
        finally:
            client.close()

    run_threads([worker] * concurrency, errors)
    return [r for r in results if r is not None]


def run_threads(targets: Sequence[Callable[[], None]], errors: list[BaseException]) -> None:
    """Start one thread per target, wait for all, then raise the first error any of them recorded."""
    threads = [threading.Thread(target=target, daemon=True) for target in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
