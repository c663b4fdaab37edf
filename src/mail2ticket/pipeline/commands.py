"""Commands by mail: `#status in_progress`, `#close`, `#erledigt`, … on the first lines of a staff reply.

Pure parsing and validation, no database: `split_commands` takes the command lines off the top of the
text, `validate` turns them into typed changes or error messages. The staff stage applies the changes
only when every command is valid and the mail passed authentication.

| command                     | effect                                              |
|-----------------------------|-----------------------------------------------------|
| `#status <name or label>`   | status change (status mail to the participants)     |
| `#close` / `#reopen`        | status `closed_status` / `reopen_status`            |
| `#priority <p>`             | low, normal, high, urgent (or a configured alias)   |
| `#assign <address or name>` | assignee, must be staff of the queue                |
| `#take`                     | the sender becomes the assignee                     |
| `#note`                     | the whole mail stays internal                       |
| `#tag <t>`                  | adds a tag                                          |
| `#queue <name>`             | moves the ticket to another queue                   |
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mail2ticket.config.conversation import PRIORITIES
from mail2ticket.config.model import Config
from mail2ticket.addresses import normalize_address
from mail2ticket.safe_text import clean_text
from mail2ticket.pipeline.trust import is_staff

_COMMAND_LINE = re.compile(r"^\s*#(?P<word>[^\W\d_][\w-]{0,30})(?:[ \t]+(?P<arg>.*?))?\s*$")
_TAG = re.compile(r"^[\w][\w .-]{0,49}$")
MAX_COMMANDS = 20


@dataclass(frozen=True, slots=True)
class Change:
    command: str  # one of config.conversation.COMMANDS
    value: str | None = None
    line: str = ""


def split_commands(text: str) -> tuple[list[str], str]:
    """(command lines, remaining text): commands are the `#word` lines before the first other text line."""
    lines = text.splitlines()
    commands: list[str] = []
    i = 0
    while i < len(lines) and len(commands) <= MAX_COMMANDS:
        line = lines[i]
        if not line.strip():
            i += 1
            continue
        if _COMMAND_LINE.match(line) is None:
            break
        commands.append(line.strip())
        i += 1
    rest = "\n".join(lines[i:]).strip("\n")
    return commands, rest


def _status(config: Config, value: str) -> str | None:
    wanted = " ".join(value.split()).casefold()
    for status in config.conversation.statuses:
        names = {status.name, status.name.replace("_", " "), status.label_de.casefold(), status.label_en.casefold()}
        if wanted in names or wanted.replace(" ", "_") == status.name:
            return status.name
    return None


def _assignee(config: Config, queue: str, value: str) -> str | None:
    queue_config = config.queue_by_name(queue)
    named = config.conversation.staff_names.get(value.casefold())
    if named is not None:
        return named
    address = normalize_address(value)
    if address is not None:
        return address if is_staff(queue_config, address) else None
    for entry in queue_config.staff:
        if "@" in entry and not entry.startswith("@") and entry.split("@", 1)[0].casefold() == value.casefold():
            return entry.lower()
    return None


def validate(config: Config, queue: str, sender: str, lines: list[str]) -> tuple[list[Change], list[str]]:
    """Typed changes for valid lines and one human-readable error per invalid line."""
    conv = config.conversation
    changes: list[Change] = []
    errors: list[str] = []
    if len(lines) > MAX_COMMANDS:
        return [], [f"more than {MAX_COMMANDS} commands"]
    for line in lines:
        match = _COMMAND_LINE.match(line)
        shown = clean_text(line, max_len=120)
        if match is None:
            errors.append(f"{shown}: not a command")
            continue
        command = conv.command(match.group("word"))
        arg = (match.group("arg") or "").strip()
        if command is None:
            errors.append(f"{shown}: unknown command")
        elif command == "status":
            status = _status(config, arg) if arg else None
            if status is None:
                errors.append(f"{shown}: unknown status; valid: {', '.join(conv.status_names())}")
            else:
                changes.append(Change("status", status, line))
        elif command in ("close", "reopen"):
            target = conv.closed_status if command == "close" else conv.reopen_status
            changes.append(Change("status", target, line))
        elif command == "priority":
            priority = arg.casefold()
            priority = conv.priority_aliases.get(priority, priority)
            if priority not in PRIORITIES:
                errors.append(f"{shown}: unknown priority; valid: {', '.join(PRIORITIES)}")
            else:
                changes.append(Change("priority", priority, line))
        elif command == "assign":
            assignee = _assignee(config, queue, arg) if arg else None
            if assignee is None:
                errors.append(f"{shown}: not a staff member of this queue")
            else:
                changes.append(Change("assign", assignee, line))
        elif command == "take":
            changes.append(Change("assign", sender, line))
        elif command == "note":
            changes.append(Change("note", None, line))
        elif command == "tag":
            if not _TAG.match(arg):
                errors.append(f"{shown}: a tag is 1-50 letters, digits, spaces, '.', '-' or '_'")
            else:
                changes.append(Change("tag", arg, line))
        elif command == "queue":
            if arg.lower() not in {q.name for q in config.queue}:
                errors.append(f"{shown}: unknown queue; valid: {', '.join(q.name for q in config.queue)}")
            else:
                changes.append(Change("queue", arg.lower(), line))
    return changes, errors
