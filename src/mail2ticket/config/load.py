"""Load mail2ticket.toml: tomllib, then pydantic, with errors that name the file, the key and the fix.

The CLI calls `load_config` once and passes the result down; nothing here is global.
"""

from __future__ import annotations

import os
import secrets
import tomllib
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, SecretStr, ValidationError

from mail2ticket.config.model import Config
from mail2ticket.config.rules import RulesFile

M = TypeVar("M", bound=BaseModel)
ENV_CONFIG = "MAIL2TICKET_CONFIG"
DEFAULT_CONFIG = Path("mail2ticket.toml")


class ConfigError(Exception):
    """A configuration problem, already worded for the admin (file, key path, what is valid)."""


def config_path(cli_value: str | None) -> Path:
    if cli_value:
        return Path(cli_value)
    env = os.environ.get(ENV_CONFIG)
    return Path(env) if env else DEFAULT_CONFIG


def load_config(path: Path) -> Config:
    data = _read_toml(path)
    base = path.resolve().parent
    rules_file = data.get("daemon", {}).get("rules_file") if isinstance(data.get("daemon"), dict) else None
    if rules_file is not None:
        rules_path = _expand(base, str(rules_file))
        rules_data = _read_toml(rules_path)
        rules = _validate(RulesFile, rules_data, rules_path)
        if data.get("rule"):
            raise ConfigError(
                f"{path}: rule: rules are given both here and in daemon.rules_file ({rules_path}); keep them in one place"
            )
        data["rule"] = [r.model_dump(by_alias=True, exclude_none=True) for r in rules.rule]
    config = _validate(Config, data, path)
    daemon = config.daemon.model_copy(
        update={
            "data_dir": _expand(base, str(config.daemon.data_dir)),
            "database_url": _absolute_sqlite_url(config.daemon.database_url, base),
            "reply_secret_file": _maybe(base, config.daemon.reply_secret_file),
            "templates_dir": _maybe(base, config.daemon.templates_dir),
            "template_override_dir": _maybe(base, config.daemon.template_override_dir),
        }
    )
    smtp_out = config.smtp_out.model_copy(
        update={
            "folder": _expand(base, str(config.smtp_out.folder)),
            "password_file": _maybe(base, config.smtp_out.password_file),
        }
    )
    mailboxes = tuple(
        m.model_copy(update={"password_file": _maybe(base, m.password_file), "token_file": _maybe(base, m.token_file)})
        for m in config.mailbox
    )
    return config.model_copy(
        update={"daemon": daemon, "smtp_out": smtp_out, "mailbox": mailboxes, "source_path": path}
    )


def read_secret(file: Path | None, env: str | None, what: str, config_file: Path) -> str | None:
    """A secret from a file (first line, whitespace stripped) or an environment variable."""
    if file is not None:
        try:
            return file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"{config_file}: {what}: cannot read secret file {file}: {exc.strerror}") from None
    if env is not None:
        value = os.environ.get(env)
        if not value:
            raise ConfigError(f"{config_file}: {what}: the environment variable {env} is not set or empty")
        return value
    return None


def reply_secret(config: Config) -> SecretStr:
    """The HMAC key for reply tokens and VERP addresses; generated once under data_dir if none is configured."""
    value = read_secret(
        config.daemon.reply_secret_file, config.daemon.reply_secret_env, "daemon.reply_secret_file", config.source_path
    )
    if value:
        return SecretStr(value)
    generated = config.daemon.data_dir / "reply-secret"
    if not generated.exists():
        config.daemon.data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(generated, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(32))
    return SecretStr(generated.read_text().strip())


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: file not found; pass --config PATH, set ${ENV_CONFIG}, "
            "or copy config.example.toml to ./mail2ticket.toml"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


def _validate(model: type[M], data: dict[str, Any], path: Path) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, path, model, data)) from None


def format_validation_error(exc: ValidationError, path: Path, model: type[BaseModel], data: Any) -> str:
    lines = [f"{path}: invalid configuration ({exc.error_count()} problem{'s' if exc.error_count() > 1 else ''}):"]
    for error in exc.errors(include_url=False):
        loc = [p for p in error["loc"] if not (isinstance(p, str) and p in ("function-after", "function-before"))]
        key = _key_path(loc, data)
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            valid = _valid_keys(model, loc[:-1], data)
            message = f"unknown key; valid keys here are: {', '.join(valid)}" if valid else "unknown key"
        elif error["type"] == "missing":
            message = "required key is missing"
        elif error["type"] == "literal_error":
            message = f"invalid value {error.get('input')!r}; {error['msg'].lower()}"
        lines.append(f"  {key or '(top level)'}: {message}")
    return "\n".join(lines)


def _key_path(loc: list[Any], data: Any) -> str:
    out = ""
    node = data
    for part in loc:
        if isinstance(part, int):
            label = f"[{part}]"
            if isinstance(node, list) and part < len(node) and isinstance(node[part], dict):
                name = node[part].get("name")
                if isinstance(name, str):
                    label = f"[{part}] ({name!r})"
            out += label
            node = node[part] if isinstance(node, list) and part < len(node) else None
        else:
            out += f".{part}" if out else str(part)
            node = node.get(part) if isinstance(node, dict) else None
    return out


def _valid_keys(model: type[BaseModel], loc: list[Any], data: Any) -> list[str]:
    current: Any = model
    for part in loc:
        if isinstance(part, int) or current is None:
            continue
        field = current.model_fields.get(part) if hasattr(current, "model_fields") else None
        if field is None:
            field = next((f for f in current.model_fields.values() if f.alias == part), None)
        current = _model_of(field.annotation) if field else None
    if current is None or not hasattr(current, "model_fields"):
        return []
    keys = [f.alias or name for name, f in current.model_fields.items() if not f.exclude]
    return sorted(keys)


def _model_of(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_of(arg)
        if found is not None:
            return found
    return None


def _expand(base: Path, value: str) -> Path:
    # An unset variable (e.g. $CREDENTIALS_DIRECTORY outside systemd) stays as written; reading the file
    # later fails with a message naming the key, and commands that never need the secret still work.
    path = Path(os.path.expandvars(value)).expanduser()
    return path if path.is_absolute() else (base / path)


def _maybe(base: Path, value: Path | None) -> Path | None:
    return None if value is None else _expand(base, str(value))


def _absolute_sqlite_url(url: str, base: Path) -> str:
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith("sqlite:////") and url != "sqlite:///:memory:":
        return prefix + str((base / url[len(prefix) :]).resolve())
    return url
