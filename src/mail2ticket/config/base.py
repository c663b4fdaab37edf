"""Shared pieces of the configuration schema: the strict base model and value checks."""

from __future__ import annotations

import ipaddress
import re

from pydantic import BaseModel, ConfigDict

LOCAL_PART = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+"
ADDRESS_RE = re.compile(rf"^{LOCAL_PART}@[A-Za-z0-9.-]+\.[A-Za-z0-9-]+$")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def check_address(value: str) -> str:
    if not ADDRESS_RE.match(value):
        raise ValueError(f"{value!r} is not a mail address like 'buergerbuero@stadt.example'")
    return value.lower()


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
