"""Prefilter for the routing rules: which rules can possibly match a mail, found without trying each one.

Every rule gets at most one *anchor*, a condition that must hold for the rule to match:

* an exact-valued condition (classification, arrival queue, has_attachment), looked up in a dict, or
* a set of literal strings of which at least one must occur in a text field (sender, recipients, a header,
  subject or body) for the rule's regex or glob on that field to match. The literals are extracted from the
  parsed regex (`re._parser`); all anchor literals of one field are compiled into one trie-shaped regex, so
  a field is scanned once per message however many rules look at it.

A rule without a usable anchor is always a candidate. Candidates are then evaluated completely, in rule
order, so the prefilter only ever removes rules that cannot match; first-match semantics are unchanged.

Soundness of the literal test: rule regexes are searched case-insensitively (`re.IGNORECASE`, Unicode).
Literals are restricted to ASCII and lower-cased; the text is *folded* (the four non-ASCII characters that
`re.IGNORECASE` equates with an ASCII letter are replaced by it, then `str.lower()`), so every
case-insensitive occurrence of a literal in the text is an exact occurrence in the folded text.
`tests/test_rules_prefilter.py` re-checks that claim against every code point.
"""

from __future__ import annotations

import fnmatch
import importlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from mail2ticket.config.rules import Pattern, RuleMatch

_parser: Any = importlib.import_module("re._parser")
_const: Any = importlib.import_module("re._constants")

LITERAL = _const.LITERAL
SUBPATTERN = _const.SUBPATTERN
BRANCH = _const.BRANCH
REPEATS = tuple(getattr(_const, name) for name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT")
                if hasattr(_const, name))
ATOMIC_GROUP = getattr(_const, "ATOMIC_GROUP", None)

MAX_LITERAL = 32  # longer literals are cut (a prefix of a required literal is required, too)
MIN_ANCHOR = 3  # shorter literals hit too often to be worth a scan; such rules use another anchor or none
SEPARATOR = "\x00"  # joins the values of a multi-valued field (To, Cc, a repeated header)

# Non-ASCII characters that `re.IGNORECASE` matches against an ASCII letter (CPython's simple lower-case
# mapping plus its extra equivalences). Checked exhaustively by the tests.
FOLD_EXTRA = {"\u0130": "i", "\u0131": "i", "\u017f": "s", "\u212a": "k"}
_FOLD_TABLE = str.maketrans(FOLD_EXTRA)
_FOLD_EXTRA_RE = re.compile("[" + "".join(FOLD_EXTRA) + "]")


def fold(text: str) -> str:
    """The text as the prefilter scans it: see the module docstring."""
    if not text.isascii() and _FOLD_EXTRA_RE.search(text):
        text = text.translate(_FOLD_TABLE)
    return text.lower()


Requirement = frozenset[str]  # at least one of these (folded, ASCII) literals occurs in the text


def _strength(req: Requirement) -> tuple[int, int]:
    return min(len(lit) for lit in req), -len(req)


def _requirements(seq: Iterable[tuple[Any, Any]]) -> list[Requirement]:
    """Necessary conditions for a parsed (sub)pattern to match: each listed requirement must hold."""
    reqs: list[Requirement] = []
    run: list[str] = []

    def flush() -> None:
        if run:
            reqs.append(frozenset({"".join(run)[:MAX_LITERAL]}))
            run.clear()

    for op, av in seq:
        if op is LITERAL and av < 128:
            run.append(chr(av).lower())
            continue
        flush()  # anything else ends the literal run (a shorter required literal is still required)
        if op is SUBPATTERN:
            reqs.extend(_requirements(av[-1]))
        elif ATOMIC_GROUP is not None and op is ATOMIC_GROUP:
            reqs.extend(_requirements(av))
        elif op in REPEATS:
            if av[0] >= 1:
                reqs.extend(_requirements(av[2]))
        elif op is BRANCH:
            alternatives: list[Requirement] = []
            for alt in av[1]:
                alt_reqs = _requirements(alt)
                if not alt_reqs:
                    break  # this alternative needs no literal, so the branch as a whole needs none
                alternatives.append(max(alt_reqs, key=_strength))
            else:
                reqs.append(frozenset().union(*alternatives))
        # Everything else (classes, anchors, lookarounds, backreferences, ...) requires no literal.
    flush()
    return reqs


def pattern_regex(pattern: Pattern) -> str:
    """The regex a `Pattern` is matched with (case-insensitively, by `re.search`)."""
    if pattern.glob is not None:
        # fnmatch anchors only the end (…\Z); a glob covers the whole value, so anchor the start too.
        return r"\A" + fnmatch.translate(pattern.glob)
    assert pattern.regex is not None
    return pattern.regex


def literal_requirements(pattern: Pattern) -> list[Requirement]:
    """Sets of literals of which one must occur (folded) in any value the pattern matches; [] if unknown."""
    try:
        parsed = _parser.parse(pattern_regex(pattern), re.IGNORECASE)
        return [req for req in _requirements(parsed) if req and all(req)]
    except Exception:  # noqa: BLE001 - an unexpected parser shape only costs the prefilter, never correctness
        return []


def pattern_fields(match: RuleMatch) -> list[tuple[str, Pattern]]:
    """The text conditions of a rule as (field, pattern); fields are what `FactsView.folded` accepts."""
    out: list[tuple[str, Pattern]] = []
    for field_name, pattern in (("from", match.from_), ("to", match.to), ("cc", match.cc),
                                ("subject", match.subject), ("body", match.body)):
        if pattern is not None:
            out.append((field_name, pattern))
    out.extend((f"header:{name.lower()}", pattern) for name, pattern in match.headers.items())
    return out


class FactsView(Protocol):
    """What the prefilter needs of a mail (`rules.MailFacts` provides it)."""

    @property
    def classification(self) -> str: ...

    @property
    def arrival_queues(self) -> tuple[str, ...]: ...

    def has_attachment(self) -> bool: ...

    def folded(self, field_name: str) -> str: ...


class _Trie:
    """One field's anchor literals as a single regex that finds, at each position, the longest literal."""

    def __init__(self, literals: dict[str, list[int]]) -> None:
        root: dict[str, Any] = {}
        for lit in literals:
            node = root
            for ch in lit:
                node = node.setdefault(ch, {})
            node[""] = True
        self.regex = re.compile(self._emit(root))
        # A hit reports the longest literal at its position; the shorter literals that are its prefixes
        # occur there as well.
        self.rules_at: dict[str, tuple[int, ...]] = {
            lit: tuple(sorted({r for n in range(1, len(lit) + 1) for r in literals.get(lit[:n], ())}))
            for lit in literals
        }

    @classmethod
    def _emit(cls, node: dict[str, Any]) -> str:
        terminal = "" in node
        branches = [re.escape(ch) + cls._emit(child) for ch, child in sorted(node.items()) if ch]
        if not branches:
            return ""
        if len(branches) == 1 and not terminal:
            return branches[0]
        alternation = "(?:" + "|".join(branches) + ")"
        return alternation + "?" if terminal else alternation  # greedy: the longest literal wins

    def scan(self, text: str, out: set[int]) -> None:
        search = self.regex.search
        rules_at = self.rules_at
        seen: set[str] = set()
        pos = 0
        while (m := search(text, pos)) is not None:
            lit = m.group()
            if lit not in seen:
                seen.add(lit)
                out.update(rules_at[lit])
            pos = m.start() + 1  # literals may overlap: look again from the next position


@dataclass(frozen=True, slots=True)
class Anchor:
    kind: str  # "field", "classification", "queue", "attachment", or "none"
    field: str | None = None
    values: frozenset[Any] = frozenset()


def choose_anchor(match: RuleMatch, literal_count: dict[tuple[str, str], int]) -> Anchor:
    """The condition a rule is indexed by: the most selective one that is cheap to look up."""
    best: tuple[tuple[int, ...], Anchor] | None = None
    for field_name, pattern in pattern_fields(match):
        for req in literal_requirements(pattern):
            shortest = min(len(lit) for lit in req)
            if shortest < MIN_ANCHOR:
                continue
            shared = max(literal_count[(field_name, lit)] for lit in req)
            # Long literals are rare in text; among those, prefer the ones fewer rules share; scanning
            # the body costs most, so it loses ties.
            score = (2, min(shortest, 4), -shared, -len(req), field_name != "body", shortest)
            if best is None or score > best[0]:
                best = (score, Anchor("field", field_name, req))
    if best is not None:
        return best[1]
    if match.queue:
        return Anchor("queue", values=frozenset(match.queue))
    if match.has_attachment:
        return Anchor("attachment", values=frozenset({True}))
    if match.classification and "human" not in match.classification:
        return Anchor("classification", values=frozenset(match.classification))
    if match.classification:
        return Anchor("classification", values=frozenset(match.classification))
    if match.has_attachment is not None:
        return Anchor("attachment", values=frozenset({match.has_attachment}))
    return Anchor("none")


class Prefilter:
    """Candidate rules (by index) for a mail: a superset of the rules that match it."""

    def __init__(self, matches: Sequence[RuleMatch]) -> None:
        literal_count: dict[tuple[str, str], int] = {}
        for match in matches:
            for field_name, pattern in pattern_fields(match):
                for req in literal_requirements(pattern):
                    for lit in req:
                        literal_count[(field_name, lit)] = literal_count.get((field_name, lit), 0) + 1
        self.anchors = tuple(choose_anchor(m, literal_count) for m in matches)
        always: list[int] = []
        exact: dict[str, dict[Any, list[int]]] = {"classification": {}, "queue": {}, "attachment": {}}
        by_field: dict[str, dict[str, list[int]]] = {}
        for index, anchor in enumerate(self.anchors):
            if anchor.kind == "none":
                always.append(index)
            elif anchor.kind == "field":
                assert anchor.field is not None
                literals = by_field.setdefault(anchor.field, {})
                for lit in anchor.values:
                    literals.setdefault(lit, []).append(index)
            else:
                for value in anchor.values:
                    exact[anchor.kind].setdefault(value, []).append(index)
        self.always = frozenset(always)
        self._by_classification = {k: tuple(v) for k, v in exact["classification"].items()}
        self._by_queue = {k: tuple(v) for k, v in exact["queue"].items()}
        self._by_attachment = {k: tuple(v) for k, v in exact["attachment"].items()}
        # Cheap fields first; the body last.
        order = sorted(by_field, key=lambda f: (f == "body", f))
        self._tries = tuple((f, _Trie(by_field[f])) for f in order)

    def candidates(self, facts: FactsView) -> list[int]:
        """Indexes, in rule order, of every rule that might match `facts`."""
        out = set(self.always)
        if self._by_classification:
            out.update(self._by_classification.get(facts.classification, ()))
        if self._by_queue:
            for queue in facts.arrival_queues:
                out.update(self._by_queue.get(queue, ()))
        if self._by_attachment:
            out.update(self._by_attachment.get(facts.has_attachment(), ()))
        for field_name, trie in self._tries:
            text = facts.folded(field_name)
            if text:
                trie.scan(text, out)
        return sorted(out)
