"""Config section [conversation]: threading, staff replies and commands by mail, status workflow.

Read by the thread stage (reopen rules), the staff stage (command names, who is trusted) and the
workflow (statuses, which status sends a mail). Per-queue differences go into `queue_overrides`,
keyed by queue name, because the `[[queue]]` table itself lives in `config.model`.

```toml
[conversation]
trusted_authserv_ids = ["mx.stadt.example"]   # A-R headers our relay adds; nothing else is believed
internal_channels = ["imap:intern"]           # mail arriving here counts as authenticated staff mail

[conversation.command_aliases]
erledigt = "close"

[conversation.queue_overrides.bauamt]
notify = ["bauamt-team@stadt.example"]        # who gets the new-ticket notification
```
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from mail2ticket.config.base import Strict, check_address

COMMANDS = ("status", "close", "reopen", "priority", "assign", "take", "note", "tag", "queue")
PRIORITIES = ("low", "normal", "high", "urgent")


class StatusConfig(Strict):
    """One ticket status: its machine name, labels for mails, and whether entering it mails the requester."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,31}$")
    label_de: str = Field(min_length=1, max_length=60)
    label_en: str = Field(min_length=1, max_length=60)
    mail: bool = False

    def label(self, language: str) -> str:
        return self.label_en if language == "en" else self.label_de


DEFAULT_STATUSES = (
    StatusConfig(name="new", label_de="Neu", label_en="New"),
    StatusConfig(name="open", label_de="Offen", label_en="Open"),
    StatusConfig(name="in_progress", label_de="In Bearbeitung", label_en="In progress", mail=True),
    StatusConfig(name="waiting", label_de="Wartet auf Rückmeldung", label_en="Waiting for reply", mail=True),
    StatusConfig(name="resolved", label_de="Erledigt", label_en="Resolved", mail=True),
    StatusConfig(name="closed", label_de="Geschlossen", label_en="Closed", mail=True),
)

DEFAULT_ALIASES = {
    "erledigt": "close",
    "schliessen": "close",
    "schließen": "close",
    "abschliessen": "close",
    "abschließen": "close",
    "wiedereroeffnen": "reopen",
    "wiedereröffnen": "reopen",
    "oeffnen": "reopen",
    "öffnen": "reopen",
    "prioritaet": "priority",
    "priorität": "priority",
    "zuweisen": "assign",
    "uebernehmen": "take",
    "übernehmen": "take",
    "notiz": "note",
    "intern": "note",
    "schlagwort": "tag",
    "stichwort": "tag",
    "verschieben": "queue",
    "warteschlange": "queue",
}

DEFAULT_PRIORITY_ALIASES = {"niedrig": "low", "normal": "normal", "hoch": "high", "dringend": "urgent"}


class QueueOverride(Strict):
    """Conversation settings for one queue that `[[queue]]` has no key for."""

    notify: tuple[str, ...] | None = None  # None: the plain addresses listed in the queue's `staff`
    notify_staff: bool | None = None
    trusted_authserv_ids: tuple[str, ...] | None = None

    @field_validator("notify")
    @classmethod
    def _notify(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        return None if value is None else tuple(check_address(v) for v in value)


class ConversationConfig(Strict):
    # Statuses in workflow order; the first is the status of a new ticket.
    statuses: tuple[StatusConfig, ...] = DEFAULT_STATUSES
    # A citizen's reply to a ticket in one of these statuses sets `reopen_status`.
    reopen_from: tuple[str, ...] = ("resolved", "closed")
    reopen_status: str = "open"
    # Replies to a ticket in this status, closed longer than daemon.reopen_window_days, open a new linked ticket.
    closed_status: str = "closed"
    # Status that a staff reply to the citizen moves a new ticket into (None: leave the status alone).
    status_on_staff_reply: str | None = "open"
    # `#command` names: alias → one of COMMANDS.
    command_aliases: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_ALIASES))
    priority_aliases: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_PRIORITY_ALIASES))
    # `#assign <name>`: short names for staff addresses.
    staff_names: dict[str, str] = Field(default_factory=dict)
    # Authentication-Results from these authserv-ids (our relay) are believed; all others are ignored.
    trusted_authserv_ids: tuple[str, ...] = ()
    # Channels whose mail counts as authenticated: "smtp", "lmtp", "cli", "imap" or "imap:<mailbox>".
    internal_channels: tuple[str, ...] = ()
    # A new ticket is announced to the queue's staff by mail.
    notify_staff: bool = True
    # Who else than the requester receives staff replies: the CC participants too.
    reply_to_cc: bool = True
    # Take the ticket language from the citizen's Content-Language when it is one we have templates for.
    detect_language: bool = True
    queue_overrides: dict[str, QueueOverride] = Field(default_factory=dict)

    @field_validator("command_aliases")
    @classmethod
    def _aliases(cls, value: dict[str, str]) -> dict[str, str]:
        out: dict[str, str] = {}
        for alias, command in value.items():
            if command not in COMMANDS:
                raise ValueError(f"alias {alias!r} names {command!r}; commands are: {', '.join(COMMANDS)}")
            if not re.fullmatch(r"\w{1,30}", alias):
                raise ValueError(f"alias {alias!r}: use one word of letters and digits")
            out[alias.casefold()] = command
        return out

    @field_validator("priority_aliases")
    @classmethod
    def _priorities(cls, value: dict[str, str]) -> dict[str, str]:
        for alias, priority in value.items():
            if priority not in PRIORITIES:
                raise ValueError(f"priority alias {alias!r} names {priority!r}; priorities: {', '.join(PRIORITIES)}")
        return {k.casefold(): v for k, v in value.items()}

    @field_validator("staff_names")
    @classmethod
    def _staff_names(cls, value: dict[str, str]) -> dict[str, str]:
        return {k.casefold(): check_address(v) for k, v in value.items()}

    @field_validator("internal_channels")
    @classmethod
    def _channels(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for channel in value:
            if not re.fullmatch(r"(smtp|lmtp|cli|imap)(:[a-z0-9][a-z0-9_-]{0,63})?", channel):
                raise ValueError(f"{channel!r}: use 'smtp', 'lmtp', 'cli', 'imap' or 'imap:<mailbox name>'")
        return value

    @model_validator(mode="after")
    def _status_names(self) -> ConversationConfig:
        names = [s.name for s in self.statuses]
        if len(set(names)) != len(names):
            raise ValueError("status names must be unique")
        for key, value in (("reopen_status", self.reopen_status), ("closed_status", self.closed_status),
                           ("status_on_staff_reply", self.status_on_staff_reply), *(
                               ("reopen_from", v) for v in self.reopen_from)):
            if value is not None and value not in names:
                raise ValueError(f"{key} names {value!r}, which is not a configured status; known: {', '.join(names)}")
        return self

    # --- lookups ----------------------------------------------------------------------------------

    def status(self, name: str) -> StatusConfig | None:
        return next((s for s in self.statuses if s.name == name), None)

    def status_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.statuses)

    def command(self, word: str) -> str | None:
        lowered = word.casefold()
        if lowered in COMMANDS:
            return lowered
        return self.command_aliases.get(lowered)

    def override(self, queue: str) -> QueueOverride:
        return self.queue_overrides.get(queue) or QueueOverride()

    def authserv_ids(self, queue: str | None) -> tuple[str, ...]:
        if queue is not None:
            ids = self.override(queue).trusted_authserv_ids
            if ids is not None:
                return ids
        return self.trusted_authserv_ids


Language = Literal["de", "en"]
