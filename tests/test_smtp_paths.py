"""MAIL FROM and RCPT TO paths are read exactly as aiosmtpd reads them (the daemon's reader only skips its overhead)."""

from __future__ import annotations

from typing import Any

import pytest
from aiosmtpd.smtp import SMTP
from hypothesis import given
from hypothesis import strategies as st

from mail2ticket.ingress.smtp import _ShutdownAwareSMTP

PATHS = [
    "", "<>", "<a@b.example>", "a@b.example", " <a@b.example> SIZE=100", "<a@b.example> BODY=8BITMIME SMTPUTF8",
    "<bürger@stadt.example>", '<"quoted local"@stadt.example>', "<@relay.example:a@b.example>", "<a@[127.0.0.1]>",
    "<a@b.example", "a@", "@b.example", "<<a@b.example>>", "<a b@c.example>", "<" + "x" * 64 + "@b.example>",
    "<" + "x" * 65 + "@b.example>", "<a@b.example>\x00", "<a@b.example> =x", "<a\r@b.example>", "no address",
]


def _read_by(cls: type[SMTP], path: str) -> Any:
    server = cls.__new__(cls)
    server.local_part_limit = 64
    try:
        return cls._getaddr(server, path)
    except Exception as exc:  # aiosmtpd answers these with its generic 500 (e.g. IndexError for "<")
        return type(exc)


@pytest.mark.parametrize("path", PATHS)
def test_a_path_is_read_as_aiosmtpd_reads_it(path: str) -> None:
    assert _read_by(_ShutdownAwareSMTP, path) == _read_by(SMTP, path)
    assert _read_by(_ShutdownAwareSMTP, path) == _read_by(SMTP, path)  # again, now from the memo


@given(st.text(alphabet=st.sampled_from(list("<>@\". :[]\\ab1äé=\t()")), max_size=30))
def test_any_path_is_read_as_aiosmtpd_reads_it(path: str) -> None:
    assert _read_by(_ShutdownAwareSMTP, path) == _read_by(SMTP, path)
