"""Route stage: the admin's TOML rules, compiled once, applied to a parsed mail.

Rules are tried in order and the first match wins, unless it says `continue = true`: then its settings
apply and later rules may add to them (tags accumulate, other fields are overwritten). A mail that no rule
matches goes to the queue of the address it arrived at. Text is matched after NFKC normalisation with
zero-width and bidi characters removed, so look-alike tricks do not dodge a rule.

`Router.route` does not try every rule: a prefilter (`rules_prefilter`) indexes each rule by one necessary
condition (a literal its regex needs, or an exact classification/queue/attachment value) and only the
candidates it yields are evaluated, in rule order. `Router.route_reference` tries every rule; both give the
same decision (tests/test_rules_equivalence.py).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from mail2ticket.config.model import Config
from mail2ticket.config.rules import Pattern, RuleConfig
from mail2ticket.parse import ParsedMail
from mail2ticket.rules_prefilter import SEPARATOR, Prefilter, fold, pattern_regex

BODY_MATCH_LIMIT = 65_536
_INVISIBLE = re.compile("[\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff\u00ad]")


def normalize(text: str) -> str:
    return _INVISIBLE.sub("", unicodedata.normalize("NFKC", text))


@dataclass(frozen=True, slots=True)
class MailFacts:
    """What rules can see of one mail, computed once per message."""

    parsed: ParsedMail
    classification: str
    arrival_queues: tuple[str, ...]
    _cache: dict[str, str] = field(default_factory=dict, repr=False, compare=False)
    _headers: dict[str, tuple[str, ...]] = field(default_factory=dict, repr=False, compare=False)

    def subject(self) -> str:
        if "subject" not in self._cache:
            self._cache["subject"] = normalize(self.parsed.subject)
        return self._cache["subject"]

    def body(self) -> str:
        if "body" not in self._cache:
            self._cache["body"] = normalize(self.parsed.text[:BODY_MATCH_LIMIT])
        return self._cache["body"]

    def header(self, key: str) -> tuple[str, ...]:
        """The normalised values of a header (`key` in lower case)."""
        values = self._headers.get(key)
        if values is None:
            values = self._headers[key] = tuple(normalize(v) for v in self.parsed.header(key))
        return values

    def has_attachment(self) -> bool:
        return bool(self.parsed.attachments)

    def folded(self, field_name: str) -> str:
        """A field as the prefilter scans it (`rules_prefilter.fold`); multiple values joined by NUL."""
        key = "folded:" + field_name
        text = self._cache.get(key)
        if text is None:
            if field_name == "subject":
                raw = self.subject()
            elif field_name == "body":
                raw = self.body()
            elif field_name == "from":
                raw = self.parsed.from_addr or ""
            elif field_name == "to":
                raw = SEPARATOR.join(self.parsed.to)
            elif field_name == "cc":
                raw = SEPARATOR.join(self.parsed.cc)
            elif field_name.startswith("header:"):
                raw = SEPARATOR.join(self.header(field_name[7:]))
            else:
                raise ValueError(f"unknown field {field_name!r}")
            text = self._cache[key] = fold(raw)
        return text


@dataclass(frozen=True, slots=True)
class Decision:
    rule: str | None
    action: str
    reason: str | None
    queue: str
    priority: str
    category: str | None
    tags: tuple[str, ...]
    reply: str | None
    requester: str
    matched: tuple[str, ...] = ()


Check = Callable[[MailFacts], bool]


def _compile_pattern(pattern: Pattern) -> re.Pattern[str]:
    return re.compile(pattern_regex(pattern), re.IGNORECASE)


def _any(regex: re.Pattern[str], values: Sequence[str | None]) -> bool:
    return any(v is not None and regex.search(v) for v in values)


def _header_check(rx: re.Pattern[str], key: str) -> Check:
    return lambda f: _any(rx, f.header(key))


@dataclass(frozen=True, slots=True)
class CompiledRule:
    config: RuleConfig
    checks: tuple[Check, ...]

    def matches(self, facts: MailFacts) -> bool:
        return all(check(facts) for check in self.checks)


def compile_rule(rule: RuleConfig) -> CompiledRule:
    m = rule.match
    checks: list[Check] = []
    if m.classification:
        kinds = frozenset(m.classification)
        checks.append(lambda f: f.classification in kinds)
    if m.queue:
        queues = frozenset(m.queue)
        checks.append(lambda f: any(q in queues for q in f.arrival_queues))
    if m.has_attachment is not None:
        want = m.has_attachment
        checks.append(lambda f: bool(f.parsed.attachments) == want)
    if m.from_ is not None:
        rx_from = _compile_pattern(m.from_)
        checks.append(lambda f: _any(rx_from, [f.parsed.from_addr]))
    if m.to is not None:
        rx_to = _compile_pattern(m.to)
        checks.append(lambda f: _any(rx_to, f.parsed.to))
    if m.cc is not None:
        rx_cc = _compile_pattern(m.cc)
        checks.append(lambda f: _any(rx_cc, f.parsed.cc))
    for name, pattern in m.headers.items():
        rx_h = _compile_pattern(pattern)
        key = name.lower()
        checks.append(_header_check(rx_h, key))
    # Costly text checks last, so cheap ones short-circuit them.
    if m.subject is not None:
        rx_subject = _compile_pattern(m.subject)
        checks.append(lambda f: bool(rx_subject.search(f.subject())))
    if m.body is not None:
        rx_body = _compile_pattern(m.body)
        checks.append(lambda f: bool(rx_body.search(f.body())))
    return CompiledRule(rule, tuple(checks))


class Router:
    """The compiled rule set of one configuration; immutable, so a reload swaps the whole object."""

    def __init__(self, config: Config) -> None:
        self._config = config
        self.rules = tuple(compile_rule(r) for r in config.rule)
        self.prefilter = Prefilter([r.match for r in config.rule])
        self._default_queue = config.queue[0].name

    def candidates(self, facts: MailFacts) -> list[CompiledRule]:
        """The rules that might match, in order: a superset of the matching ones."""
        rules = self.rules
        return [rules[i] for i in self.prefilter.candidates(facts)]

    def route(self, facts: MailFacts) -> Decision:
        return self._decide(facts, self.candidates(facts))

    def route_reference(self, facts: MailFacts) -> Decision:
        """`route` without the prefilter: every rule is tried. For tests and as the definition of `route`."""
        return self._decide(facts, self.rules)

    def _decide(self, facts: MailFacts, candidates: Iterable[CompiledRule]) -> Decision:
        queue_name = facts.arrival_queues[0] if facts.arrival_queues else self._default_queue
        action, reason, rule_name = "ticket", None, None
        priority, category, tags = "normal", None, list[str]()
        reply: str | bool | None = None
        requester = "from"
        matched: list[str] = []
        queue_override: str | None = None
        for compiled in candidates:
            if not compiled.matches(facts):
                continue
            rule = compiled.config
            matched.append(rule.name)
            rule_name = rule.name
            action = rule.action
            reason = rule.reason or reason
            queue_override = rule.queue or queue_override
            priority = rule.priority or priority
            category = rule.category or category
            tags.extend(t for t in rule.tags if t not in tags)
            reply = rule.reply if rule.reply is not None else reply
            requester = rule.requester or requester
            if not rule.continue_:
                break
        queue = self._config.queue_by_name(queue_override or queue_name)
        template: str | None
        if reply is None:
            template = queue.ack_template if queue.acknowledge else None
        else:
            template = reply if isinstance(reply, str) and reply else None
        return Decision(
            rule=rule_name,
            action=action,
            reason=reason,
            queue=queue.name,
            priority=priority,
            category=category,
            tags=tuple(tags),
            reply=template if isinstance(template, str) else None,
            requester=requester,
            matched=tuple(matched),
        )
