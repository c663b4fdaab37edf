"""Validation of `[[mailbox]]` sections: each mistake gets one clear message naming the key.

Place in the test suite: config loading for IMAP ingress (config/model.py MailboxConfig), through the real
`load_config` so the messages are the ones an admin sees.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mail2ticket.config import ConfigError, load_config
from tests.support.app import QUEUES

BASE = """
[[mailbox]]
name = "bauamt"
host = "imap.stadt.example"
username = "bauamt"
password_file = "secret"
"""


def load(tmp_path: Path, mailbox: str) -> str | None:
    path = tmp_path / "mail2ticket.toml"
    path.write_text(QUEUES + mailbox, encoding="utf-8")
    try:
        load_config(path)
    except ConfigError as exc:
        return str(exc)
    return None


def test_minimal_mailbox_is_valid_with_safe_defaults(tmp_path: Path) -> None:
    """A mailbox with host, user and password file is valid; TLS on port 993 and flag-after are the defaults."""
    path = tmp_path / "mail2ticket.toml"
    path.write_text(QUEUES + BASE, encoding="utf-8")
    box = load_config(path).mailbox[0]
    assert (box.security, box.effective_port, box.after, box.folders, box.idle) == ("tls", 993, "flag", ("INBOX",), True)
    assert box.password_file == tmp_path / "secret"


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ('security = "none"', "clear text"),
        ('after = "archive"', "'move:FOLDER'"),
        ('after = "move:INBOX"', "also polled"),
        ('folders = ["INBOX", "INBOX"]', "listed once"),
        ('folders = ["Bad\\nName"]', "not a usable IMAP folder"),
        ('quarantine_folder = "INBOX"', "also polled"),
        ('idle_refresh = 3600', "idle_refresh"),
        ('auth = "xoauth2"', "token_command or token_file"),
        ('queue = "finanzamt"', "not configured"),
        ('pasword_file = "x"', "unknown key"),
    ],
)
def test_mistakes_get_one_clear_message(tmp_path: Path, extra: str, expected: str) -> None:
    """Each typical mistake in a mailbox section is reported with a message that says what to fix."""
    error = load(tmp_path, BASE + extra + "\n")
    assert error is not None and expected in error


def test_password_is_required_for_login(tmp_path: Path) -> None:
    """auth = login without password_file or password_env is refused."""
    error = load(tmp_path, BASE.replace('password_file = "secret"\n', ""))
    assert error is not None and "needs password_file or password_env" in error
