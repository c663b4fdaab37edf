"""Credentials for IMAP login: password files, XOAUTH2 tokens from a file or a helper command, error wording.

Place in the test suite: the I/O edge of IMAP ingress (ingress/imap_conn.py). A real Dovecot answers the
login attempts; the token helper is a real subprocess.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from mail2ticket.config.model import MailboxConfig
from mail2ticket.ingress.imap_conn import AuthFailed, close_quietly, connect, obtain_secret, run_token_command
from tests.support.dovecot import Dovecot, ImapUser


def box(**values: object) -> MailboxConfig:
    return MailboxConfig.model_validate({"name": "bauamt", "host": "127.0.0.1", "security": "none",
                                         "username": "u", **values})


def test_token_command_output_first_line_is_the_token(tmp_path: Path) -> None:
    """The XOAUTH2 token is the first line the admin's helper prints; the rest is ignored."""
    script = tmp_path / "token.py"
    script.write_text("print('ya29.token-abc')\nprint('expires in 3599 s')\n")
    assert run_token_command(f"{sys.executable} {script}") == "ya29.token-abc"


@pytest.mark.parametrize(
    ("code", "expected"),
    [("import sys; sys.exit(3)", "exited 3"), ("print('')", "printed no token"),
     ("import time; time.sleep(5)", "did not finish")],
)
def test_failing_token_command_is_a_login_failure(tmp_path: Path, code: str, expected: str) -> None:
    """A helper that fails, prints nothing or hangs yields a clear login failure, never a hang or a traceback."""
    script = tmp_path / "token.py"
    script.write_text(code + "\n")
    with pytest.raises(AuthFailed, match=expected):
        run_token_command(f"{sys.executable} {script}", timeout=1)


def test_missing_token_command_binary_is_reported(tmp_path: Path) -> None:
    """A token_command that does not exist is reported as such."""
    with pytest.raises(AuthFailed, match="could not be started"):
        run_token_command(str(tmp_path / "no-such-helper"))


def test_secrets_are_read_fresh_from_their_files(tmp_path: Path) -> None:
    """Password and token files are read at every login, so a rotated secret needs no restart."""
    secret = tmp_path / "pw"
    secret.write_text("alt\n")
    config = box(password_file=secret)
    assert obtain_secret(config, tmp_path / "m.toml") == "alt"
    secret.write_text("neu\n")
    assert obtain_secret(config, tmp_path / "m.toml") == "neu"
    token = tmp_path / "token"
    token.write_text("")
    with pytest.raises(AuthFailed, match="empty"):
        obtain_secret(box(auth="xoauth2", token_file=token), tmp_path / "m.toml")


def test_missing_password_file_is_a_login_failure_naming_the_key(tmp_path: Path) -> None:
    """An unreadable password file is reported with the mailbox and key, not as a crash."""
    with pytest.raises(AuthFailed, match=r"mailbox\[bauamt\].password_file"):
        obtain_secret(box(password_file=tmp_path / "missing"), tmp_path / "m.toml")


def test_login_against_dovecot(dovecot: Dovecot, dovecot_user: ImapUser, tmp_path: Path) -> None:
    """The right password logs in; a wrong one is AuthFailed with the server's reason; XOAUTH2 is refused cleanly."""
    secret = tmp_path / "pw"
    secret.write_text(dovecot_user.password)
    client = connect(box(port=dovecot.port, username=dovecot_user.name, password_file=secret), tmp_path / "m.toml")
    try:
        assert client.select_folder("INBOX")[b"EXISTS"] == 0
    finally:
        close_quietly(client)
    secret.write_text("falsch")
    with pytest.raises(AuthFailed, match="AUTHENTICATIONFAILED"):
        connect(box(port=dovecot.port, username=dovecot_user.name, password_file=secret), tmp_path / "m.toml")
    token = tmp_path / "token"
    token.write_text("ya29.x")
    with pytest.raises(AuthFailed, match="login refused"):
        connect(box(port=dovecot.port, username=dovecot_user.name, auth="xoauth2", token_file=token),
                tmp_path / "m.toml")
