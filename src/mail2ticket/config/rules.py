"""Configuration schema of the routing rules: the `[[rule]]` tables of mail2ticket.toml or of the rules file.

`rules` compiles them and `rules_prefilter` files each rule under what it cannot match without; this module only
describes what is valid.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from mail2ticket.config.base import Strict


class Pattern(Strict):
    """A condition value: a case-insensitive regex (searched) or a glob (matched against the whole value)."""

    regex: str | None = None
    glob: str | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Pattern:
        if (self.regex is None) == (self.glob is None):
            raise ValueError("give exactly one of 'regex' or 'glob', e.g. { glob = \"*@bauamt.example\" }")
        if self.regex is not None:
            try:
                re.compile(self.regex)
            except re.error as exc:
                raise ValueError(f"invalid regex {self.regex!r}: {exc}") from None
        return self


def _pattern(value: Any) -> Any:
    """A bare string means a regex; a table means {regex=...} or {glob=...}."""
    if isinstance(value, str):
        return {"regex": value}
    return value


class RuleMatch(Strict):
    from_: Pattern | None = Field(None, alias="from")
    to: Pattern | None = None
    cc: Pattern | None = None
    subject: Pattern | None = None
    body: Pattern | None = None
    headers: dict[str, Pattern] = {}
    queue: tuple[str, ...] = ()
    has_attachment: bool | None = None
    classification: tuple[Literal["human", "auto-reply", "bounce", "list"], ...] = ()

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="before")
    @classmethod
    def _bare_strings(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        out = dict(data)
        for key in ("from", "to", "cc", "subject", "body"):
            if key in out:
                out[key] = _pattern(out[key])
        if isinstance(out.get("headers"), dict):
            out["headers"] = {k: _pattern(v) for k, v in out["headers"].items()}
        for key in ("queue", "classification"):
            if isinstance(out.get(key), str):
                out[key] = (out[key],)
        return out


class RuleConfig(Strict):
    name: str = Field(min_length=1, max_length=100)
    match: RuleMatch = RuleMatch()
    action: Literal["ticket", "ignore", "quarantine"] = "ticket"
    reason: str | None = None
    queue: str | None = None
    priority: Literal["low", "normal", "high", "urgent"] | None = None
    category: str | None = None
    tags: tuple[str, ...] = ()
    reply: str | bool | None = None
    requester: Literal["from", "reply-to"] | None = None
    continue_: bool = Field(False, alias="continue")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("reply")
    @classmethod
    def _reply(cls, value: str | bool | None) -> str | bool | None:
        if value is True:
            raise ValueError("use a template name such as 'ack', or false for no acknowledgement")
        if isinstance(value, str) and not re.fullmatch(r"[a-z0-9_-]+", value):
            raise ValueError("a template name uses lower-case letters, digits, '-' and '_'")
        return value


class RulesFile(Strict):
    rule: tuple[RuleConfig, ...] = ()
