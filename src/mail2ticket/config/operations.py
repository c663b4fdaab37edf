"""Config section [operations]: HTTP health/metrics endpoint and other operator settings."""

from __future__ import annotations

from mail2ticket.config.base import Strict


class OperationsConfig(Strict):
    pass
