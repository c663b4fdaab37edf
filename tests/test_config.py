"""Configuration as an admin meets it: the shipped example works, mistakes get one clear message and exit 2."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mail2ticket.config import ConfigError, load_config
from tests.support.app import free_port

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "config.example.toml"


def run_cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mail2ticket", "--config", str(config), *args],
                          capture_output=True, text=True, timeout=60)


def test_example_config_loads_with_town_hall_queues() -> None:
    """config.example.toml is valid as shipped and describes the Bürgerbüro and Bauamt of stadt.example."""
    config = load_config(EXAMPLE)
    assert {q.address for q in config.queue} >= {"buergerbuero@stadt.example", "bauamt@stadt.example"}
    assert config.daemon.database_url.startswith("sqlite:///")
    assert config.smtp_in.host == "127.0.0.1" and config.smtp_in.port == 2525
    assert config.smtp_out.delivery == "folder"


def test_example_config_comments_every_key() -> None:
    """Every key set in config.example.toml has a comment on the line above it or in its section's block."""
    lines = EXAMPLE.read_text(encoding="utf-8").splitlines()
    uncommented = []
    for index, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", "[")) or "=" not in stripped:
            continue
        block = lines[max(0, index - 12): index]
        if not any(b.strip().startswith("#") for b in block) and "#" not in line:
            uncommented.append(stripped)
    assert uncommented == []


def test_daemon_starts_on_the_example_config(tmp_path: Path) -> None:
    """The README's first command works: the daemon starts on config.example.toml, says ready, and stops with 0."""
    shutil.copy(EXAMPLE, tmp_path / "config.example.toml")
    config = tmp_path / "config.example.toml"
    port = free_port()
    text = config.read_text(encoding="utf-8").replace("port = 2525", f"port = {port}")
    config.write_text(text, encoding="utf-8")
    proc = subprocess.Popen([sys.executable, "-m", "mail2ticket", "--config", str(config), "run"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 20
        output = b""
        assert proc.stdout is not None
        os.set_blocking(proc.stdout.fileno(), False)
        while b"daemon_ready" not in output and time.monotonic() < deadline:
            output += proc.stdout.read() or b""
            time.sleep(0.05)
        assert b"daemon_ready" in output, output.decode(errors="replace")
        assert (tmp_path / "mail2ticket.db").exists()
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(20)
        if proc.stdout is not None:
            proc.stdout.close()
    assert code == 0


BAD_CONFIGS = {
    "unknown key": ('[daemon]\ndatabse_url = "sqlite:///x.db"\n', "daemon.databse_url", "database_url"),
    "bad enum": ('[smtp_out]\ndelivery = "carrier-pigeon"\n', "smtp_out.delivery", "'folder'"),
    "bad address": ('[[queue]]\nname = "amt"\naddress = "not-an-address"\n', "queue[0] ('amt').address",
                    "buergerbuero@stadt.example"),
    "broken regex": ('[[rule]]\nname = "Kaputt"\nmatch = { subject = "(unclosed" }\n', "rule[0] ('Kaputt')",
                     "invalid regex"),
    "unknown queue in rule": ('[[rule]]\nname = "Falsch"\nqueue = "finanzamt"\n', "Falsch", "known queues"),
    "toml syntax": ('[daemon\nx = 1\n', "not valid TOML", "line 1"),
    "clear-text smarthost": ('[smtp_out]\ndelivery = "smtp"\nhost = "mail.example.net"\nsecurity = "none"\n',
                             "smtp_out", "starttls"),
    "number format": ('[daemon]\nticket_number_format = "{jahr}-{seq}"\n', "daemon.ticket_number_format",
                      "{year}"),
}

QUEUE = '\n[[queue]]\nname = "buergerbuero"\naddress = "buergerbuero@stadt.example"\n'


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_bad_config_names_file_key_and_fix_with_exit_2(tmp_path: Path, case: str) -> None:
    """Typical mistakes give one message naming the file, the key and what is valid; exit code 2, no traceback."""
    body, key, hint = BAD_CONFIGS[case]
    path = tmp_path / "mail2ticket.toml"
    path.write_text(body if "queue" in body and "[[queue]]" in body else body + QUEUE, encoding="utf-8")
    result = run_cli(path, "check-config")
    assert result.returncode == 2, result.stderr
    assert str(path) in result.stderr
    assert key in result.stderr
    assert hint in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_config_file_says_how_to_get_one(tmp_path: Path) -> None:
    """Starting without a config file explains where it is looked for and how to make one."""
    result = run_cli(tmp_path / "nope.toml", "run")
    assert result.returncode == 2
    assert "config.example.toml" in result.stderr and "Traceback" not in result.stderr


def test_rules_file_errors_name_the_rules_file(tmp_path: Path) -> None:
    """A mistake in a separate rules file is reported with that file's name."""
    (tmp_path / "rules.toml").write_text('[[rule]]\nname = "x"\nprioity = "high"\n', encoding="utf-8")
    path = tmp_path / "mail2ticket.toml"
    path.write_text('[daemon]\nrules_file = "rules.toml"\n' + QUEUE, encoding="utf-8")
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert "rules.toml" in str(exc.value) and "prioity" in str(exc.value)


def test_secret_file_outside_systemd_fails_only_when_needed(tmp_path: Path) -> None:
    """A *_file path with an unset $CREDENTIALS_DIRECTORY loads; reading it later names the key."""
    path = tmp_path / "mail2ticket.toml"
    path.write_text('[daemon]\nreply_secret_file = "${CREDENTIALS_DIRECTORY}/reply-secret"\n' + QUEUE,
                    encoding="utf-8")
    env_backup = os.environ.pop("CREDENTIALS_DIRECTORY", None)
    try:
        config = load_config(path)
        from mail2ticket.config import reply_secret

        with pytest.raises(ConfigError) as exc:
            reply_secret(config)
        assert "daemon.reply_secret_file" in str(exc.value)
    finally:
        if env_backup is not None:
            os.environ["CREDENTIALS_DIRECTORY"] = env_backup
