"""Config section [operations]: the health/metrics endpoint, stage supervision and global retention knobs.

Per-queue retention (`delete_raw_after_days`, `anonymise_after_days`) lives on each `[[queue]]`; this section
holds what is not tied to one queue. Every key has a safe default, so the section may be left out.
"""

from __future__ import annotations

import ipaddress

from pydantic import Field, field_validator

from mail2ticket.config.base import Strict


def split_listen(value: str) -> tuple[str, int]:
    """'127.0.0.1:9125' or '[::1]:9125' -> (host, port)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"{value!r} is not HOST:PORT, e.g. '127.0.0.1:9125' or '[::1]:9125'")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    number = int(port)
    if not 0 <= number <= 65535:
        raise ValueError(f"port {number} is out of range")
    return host, number


class OperationsConfig(Strict):
    # HTTP endpoint with /metrics (Prometheus) and /healthz; off unless asked for, loopback by default.
    http_enabled: bool = False
    http_listen: str = "127.0.0.1:9125"
    # A stage whose current step runs longer than this counts as stalled: the systemd watchdog pings stop
    # and /healthz turns red. The outbox gets at least 10 x smtp_out.timeout (a batch of slow sends).
    stage_stall_seconds: float = Field(120, gt=0)
    # A stage that fails this many times in a row (with backoff in between) is given up on: the watchdog
    # fails, so systemd restarts the whole daemon (Restart=on-failure).
    stage_max_failures: int = Field(8, ge=1)
    stage_backoff_max_seconds: float = Field(60, gt=0)
    # Seconds between STATUS=/gauge refreshes (and watchdog pings when WatchdogSec/2 is longer).
    status_interval: float = Field(10, gt=0)
    # Intake rows that never became part of a ticket (ignored: loops, bounces, duplicates; quarantined) are
    # deleted with their raw bytes this many days after arrival by `purge`. None keeps them forever.
    delete_unticketed_after_days: int | None = Field(None, ge=1)

    @field_validator("http_listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        host, _ = split_listen(value)
        if host != "localhost":
            try:
                ipaddress.ip_address(host)
            except ValueError:
                raise ValueError(f"{host!r} is not an IP address; use e.g. '127.0.0.1:9125'") from None
        return value

    @property
    def http_address(self) -> tuple[str, int]:
        return split_listen(self.http_listen)
