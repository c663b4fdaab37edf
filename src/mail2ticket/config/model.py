"""Configuration schema: the pydantic models behind mail2ticket.toml.

Every model forbids unknown keys, so a typo is reported instead of silently ignored. Loading, secret
resolution and error formatting live in `config.load`; this module only describes what is valid.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from mail2ticket.config.base import Strict, check_address as _check_address, is_loopback as _is_loopback
from mail2ticket.config.conversation import ConversationConfig
from mail2ticket.config.operations import OperationsConfig
from mail2ticket.config.rules import RuleConfig


class SecretSource(Strict):
    """A secret read from a file (systemd credentials) or an environment variable, never inline."""

    file: Path | None = None
    env: str | None = None


class DaemonConfig(Strict):
    database_url: str = "sqlite:///./mail2ticket.db"
    data_dir: Path = Path("./data")
    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    domain: str = Field(
        "stadt.example", description="Our own mail domain: Message-IDs of generated mail use it."
    )
    ticket_number_format: str = "{year}-{seq:06d}"
    subject_tag_prefix: str = "Ticket"
    language: Literal["de", "en"] = "de"
    reply_secret_file: Path | None = None
    reply_secret_env: str | None = None
    rules_file: Path | None = None
    templates_dir: Path | None = None
    template_override_dir: Path | None = None
    reopen_window_days: int = Field(30, ge=0)
    allow_unsafe_durability: bool = False
    worker_threads: int = Field(4, ge=1, le=64)

    @field_validator("ticket_number_format")
    @classmethod
    def _number_format(cls, value: str) -> str:
        try:
            rendered = value.format(year=2026, seq=123)
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(
                f"{value!r} is not a valid format; use the fields {{year}} and {{seq}}, "
                f"e.g. '{{year}}-{{seq:06d}}' ({exc})"
            ) from None
        if "{seq" not in value:
            raise ValueError("the format must contain {seq}, e.g. '{year}-{seq:06d}'")
        if not re.fullmatch(r"[A-Za-z0-9-]+", rendered):
            raise ValueError(f"{value!r} renders as {rendered!r}; only letters, digits and '-' are allowed")
        return value

    @field_validator("subject_tag_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9 ._-]{0,30}", value):
            raise ValueError("use 1-31 letters, digits, spaces, '.', '_' or '-', e.g. 'Stadt Musterstadt'")
        return value

    @field_validator("domain")
    @classmethod
    def _domain(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+", value):
            raise ValueError(f"{value!r} is not a domain like 'stadt.example'")
        return value.lower()

    @field_validator("database_url")
    @classmethod
    def _db_url(cls, value: str) -> str:
        if not re.match(r"^(sqlite|postgresql)(\+\w+)?://", value):
            raise ValueError("use 'sqlite:///path/to/file.db' or 'postgresql+psycopg://user@host/db'")
        return value


class SmtpInConfig(Strict):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(2525, ge=0, le=65535)
    protocol: Literal["smtp", "lmtp"] = "smtp"
    hostname: str = "localhost"
    max_message_size: int = Field(26_214_400, ge=1024)
    max_connections: int = Field(100, ge=1)
    timeout: float = Field(300, gt=0)


class SmtpOutConfig(Strict):
    delivery: Literal["folder", "smtp"] = "folder"
    folder: Path = Path("./outbox")
    host: str = "127.0.0.1"
    port: int = Field(25, ge=1, le=65535)
    security: Literal["none", "starttls", "tls"] = "none"
    username: str | None = None
    password_file: Path | None = None
    password_env: str | None = None
    timeout: float = Field(30, gt=0)
    retry_initial_seconds: float = Field(60, gt=0)
    retry_max_seconds: float = Field(3600, gt=0)
    give_up_after_hours: float = Field(96, gt=0)

    @model_validator(mode="after")
    def _security_on_network(self) -> SmtpOutConfig:
        if self.delivery == "smtp" and self.security == "none" and not _is_loopback(self.host):
            raise ValueError(
                f"security = 'none' sends mail in clear text to {self.host}; use 'starttls' or 'tls' "
                "(plain SMTP is only allowed to a loopback smarthost)"
            )
        return self


class QueueConfig(Strict):
    name: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")]
    address: str
    aliases: tuple[str, ...] = ()
    display_name: str | None = None
    language: Literal["de", "en"] | None = None
    acknowledge: bool = True
    ack_template: str = "ack"
    staff: tuple[str, ...] = ()
    # Conversation settings per queue (issue: threading and staff by mail).
    reply_token: bool = True
    forwarded_requester: bool = True
    cc_participants: bool = True
    show_staff_address: bool = False
    status_mails: tuple[str, ...] | None = None
    # Retention per queue, in days (None: keep forever).
    delete_raw_after_days: int | None = Field(None, ge=1)
    anonymise_after_days: int | None = Field(None, ge=1)

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        return _check_address(value)

    @field_validator("aliases")
    @classmethod
    def _aliases(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(_check_address(v) for v in value)


_FOLDER_RE = re.compile(r"^[^\x00-\x1f\x7f]{1,400}$")


def _check_folder(value: str, what: str) -> str:
    if not _FOLDER_RE.match(value) or value != value.strip():
        raise ValueError(f"{what} {value!r} is not a usable IMAP folder name (1-400 characters, no control "
                         "characters, no leading or trailing spaces), e.g. 'INBOX' or 'Processed'")
    return value


class MailboxConfig(Strict):
    """One IMAP account polled for mail; each folder is synced on its own connection."""

    name: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")]
    host: str = Field(min_length=1)
    port: int | None = Field(None, ge=1, le=65535)
    security: Literal["tls", "starttls", "none"] = "tls"
    username: str = Field(min_length=1)
    auth: Literal["login", "xoauth2"] = "login"
    password_file: Path | None = None
    password_env: str | None = None
    token_command: str | None = Field(None, min_length=1)
    token_file: Path | None = None
    folders: tuple[str, ...] = ("INBOX",)
    after: str = "flag"
    quarantine_folder: str | None = None
    queue: str | None = None
    idle: bool = True
    poll_interval: float = Field(60, ge=1)
    idle_refresh: float = Field(540, ge=10, le=1740)
    # During IDLE a server silent for this long gets a NOOP; no answer within `timeout` means a dead connection.
    noop_interval: float = Field(120, ge=1, le=1740)
    batch_size: int = Field(50, ge=1, le=1000)
    max_message_size: int | None = Field(None, ge=1024)
    timeout: float = Field(60, gt=0)

    @field_validator("after")
    @classmethod
    def _after(cls, value: str) -> str:
        if value in ("flag", "delete"):
            return value
        if value.startswith("move:") and len(value) > 5:
            _check_folder(value[5:], "the target folder")
            return value
        raise ValueError("use 'flag', 'delete' or 'move:FOLDER', e.g. 'move:Processed'")

    @field_validator("folders")
    @classmethod
    def _folders(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for folder in value:
            _check_folder(folder, "folder")
        if len(set(value)) != len(value):
            raise ValueError("each folder may be listed once")
        return value

    @field_validator("quarantine_folder")
    @classmethod
    def _quarantine_folder(cls, value: str | None) -> str | None:
        return None if value is None else _check_folder(value, "quarantine_folder")

    @model_validator(mode="after")
    def _credentials(self) -> MailboxConfig:
        if self.security == "none" and not _is_loopback(self.host):
            raise ValueError(
                f"security = 'none' sends the password in clear text to {self.host}; "
                "use 'tls' or 'starttls' ('none' is only allowed for a loopback server)"
            )
        if self.auth == "login" and not (self.password_file or self.password_env):
            raise ValueError("auth = 'login' needs password_file or password_env")
        if self.auth == "xoauth2" and not (self.token_command or self.token_file):
            raise ValueError("auth = 'xoauth2' needs token_command or token_file")
        if not self.folders:
            raise ValueError("folders must name at least one folder, e.g. ['INBOX']")
        target = self.move_target
        if target is not None and target in self.folders:
            raise ValueError(f"after = 'move:{target}' moves mail into a folder that is also polled; "
                             "pick a folder outside 'folders', e.g. 'move:Processed'")
        if self.quarantine_folder is not None and self.quarantine_folder in self.folders:
            raise ValueError(f"quarantine_folder {self.quarantine_folder!r} is also polled; pick another folder")
        return self

    @property
    def effective_port(self) -> int:
        if self.port is not None:
            return self.port
        return 993 if self.security == "tls" else 143

    @property
    def move_target(self) -> str | None:
        return self.after[5:] if self.after.startswith("move:") else None


class LimitsConfig(Strict):
    """The hostile-input budget: a message over any of these is quarantined, never half-processed."""

    max_parts: int = Field(1000, ge=1)
    max_depth: int = Field(50, ge=1)
    max_header_bytes: int = Field(102_400, ge=1024)
    max_header_count: int = Field(1000, ge=10)
    max_line_length: int = Field(100_000, ge=998)
    max_attachment_size: int = Field(26_214_400, ge=1024)
    max_attachments_total: int = Field(52_428_800, ge=1024)
    max_recipients: int = Field(1000, ge=1)
    parse_timeout: float = Field(10, gt=0)


class LoopProtectionConfig(Strict):
    """Limits on automatic mail (acknowledgements, status mails), after RFC 3834 and the OTRS/Zammad defaults."""

    per_recipient_per_hour: int = Field(5, ge=0)
    per_recipient_per_day: int = Field(40, ge=0)
    per_ticket_per_10_minutes: int = Field(10, ge=0)
    noreply_patterns: tuple[str, ...] = (
        "noreply@*", "no-reply@*", "no_reply@*", "donotreply@*", "do-not-reply@*", "do_not_reply@*",
        "mailer-daemon@*", "postmaster@*", "bounce@*", "bounces@*", "bounce-*@*", "bounces+*@*", "*-bounces@*",
    )


class Config(Strict):
    daemon: DaemonConfig = DaemonConfig()
    smtp_in: SmtpInConfig = SmtpInConfig()
    smtp_out: SmtpOutConfig = SmtpOutConfig()
    queue: tuple[QueueConfig, ...] = Field(min_length=1)
    mailbox: tuple[MailboxConfig, ...] = ()
    limits: LimitsConfig = LimitsConfig()
    loop_protection: LoopProtectionConfig = LoopProtectionConfig()
    conversation: ConversationConfig = ConversationConfig()
    operations: OperationsConfig = OperationsConfig()
    rule: tuple[RuleConfig, ...] = ()
    # Filled in by the loader, not by the file.
    source_path: Path = Field(Path("mail2ticket.toml"), exclude=True)
    reply_secret: SecretStr = Field(SecretStr(""), exclude=True)

    @model_validator(mode="after")
    def _cross_checks(self) -> Config:
        names = [q.name for q in self.queue]
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise ValueError(f"queue names must be unique; repeated: {', '.join(sorted(dupes))}")
        addresses: list[str] = []
        for q in self.queue:
            addresses.extend((q.address, *q.aliases))
        dup_addr = {a for a in addresses if addresses.count(a) > 1}
        if dup_addr:
            raise ValueError(f"a queue address may belong to one queue only; repeated: {', '.join(sorted(dup_addr))}")
        mailbox_names = [m.name for m in self.mailbox]
        if len(set(mailbox_names)) != len(mailbox_names):
            raise ValueError("mailbox names must be unique")
        for m in self.mailbox:
            if m.queue is not None and m.queue not in names:
                raise ValueError(
                    f"mailbox {m.name!r} names queue {m.queue!r}, which is not configured; known queues: {', '.join(names)}"
                )
        for index, rule in enumerate(self.rule):
            for ref in (rule.queue, *rule.match.queue):
                if ref is not None and ref not in names:
                    raise ValueError(
                        f"rule[{index}] ({rule.name!r}) names queue {ref!r}, which is not configured; "
                        f"known queues: {', '.join(names)}"
                    )
        return self

    def queue_by_name(self, name: str) -> QueueConfig:
        for q in self.queue:
            if q.name == name:
                return q
        raise KeyError(name)

    @property
    def own_addresses(self) -> frozenset[str]:
        out: set[str] = set()
        for q in self.queue:
            out.update((q.address, *q.aliases))
        return frozenset(out)
