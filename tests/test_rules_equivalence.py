"""The prefiltered `Router.route` decides exactly as trying every rule in order would (issue 8).

Random rule sets over all condition types and random mails built from the same vocabulary (with case changes,
look-alike and invisible characters) are routed three ways: `Router.route`, `Router.route_reference` and a
naive evaluation written here straight from the rule schema. The prefilter may only ever drop rules that do
not match.
"""

from __future__ import annotations

import fnmatch
import random
import re
from email.message import EmailMessage
from typing import Any

from hypothesis import HealthCheck, given, settings, strategies as st

from bench.routing import rule_set
from mail2ticket.config.model import Config
from mail2ticket.config.rules import Pattern, RuleConfig
from mail2ticket.parse import ParsedMail, parse
from mail2ticket.rules import BODY_MATCH_LIMIT, MailFacts, Router, normalize

QUEUES = {"buergerbuero": "buergerbuero@stadt.example", "bauamt": "bauamt@stadt.example",
          "ordnungsamt": "ordnungsamt@stadt.example"}
KINDS = ("human", "auto-reply", "bounce", "list")
WORDS = ["Aktenzeichen", "XY-17", "XY-170", "Kundennummer", "Serienbrief", "lärm", "Ruhestörung", "dringend",
         "Kiosk", "Straße", "Strasse", "amt4", "bauamt", "ist", "Signal", "K1", "ok", "Größe", "abab", "aba"]
DOMAINS = ["lieferant3.example", "stadt.example", "Kiosk.example", "web.de"]
HEADERS = ["X-Mailer", "Importance", "x-priority"]


def naive_match(rule: RuleConfig, parsed: ParsedMail, kind: str, arrival: tuple[str, ...]) -> bool:
    """The rule semantics, spelled out without any of the router's machinery (a glob covers the whole value)."""
    def rx(p: Pattern) -> re.Pattern[str]:
        return re.compile(r"\A" + fnmatch.translate(p.glob) if p.glob is not None else str(p.regex), re.IGNORECASE)

    m = rule.match
    if m.classification and kind not in m.classification:
        return False
    if m.queue and not any(q in m.queue for q in arrival):
        return False
    if m.has_attachment is not None and bool(parsed.attachments) != m.has_attachment:
        return False
    if m.from_ is not None and (parsed.from_addr is None or not rx(m.from_).search(parsed.from_addr)):
        return False
    if m.to is not None and not any(rx(m.to).search(v) for v in parsed.to):
        return False
    if m.cc is not None and not any(rx(m.cc).search(v) for v in parsed.cc):
        return False
    for name, p in m.headers.items():
        if not any(rx(p).search(normalize(v)) for v in parsed.header(name.lower())):
            return False
    if m.subject is not None and not rx(m.subject).search(normalize(parsed.subject)):
        return False
    return m.body is None or bool(rx(m.body).search(normalize(parsed.text[:BODY_MATCH_LIMIT])))


def check(config: Config, mails: list[tuple[ParsedMail, str, tuple[str, ...]]]) -> int:
    """Route every mail all three ways; return how many mails some rule matched."""
    router = Router(config)
    hits = 0
    for parsed, kind, arrival in mails:
        fast = router.route(MailFacts(parsed, kind, arrival))
        slow = router.route_reference(MailFacts(parsed, kind, arrival))
        assert fast == slow
        matching = [i for i, r in enumerate(config.rule) if naive_match(r, parsed, kind, arrival)]
        candidates = set(router.prefilter.candidates(MailFacts(parsed, kind, arrival)))
        assert set(matching) <= candidates
        expected: list[str] = []
        for i in matching:
            expected.append(config.rule[i].name)
            if not config.rule[i].continue_:
                break
        assert list(fast.matched) == expected
        hits += bool(matching)
    return hits


# --- random text --------------------------------------------------------------------------------

LOOKALIKE = {"s": "ſ", "k": "\u212a", "i": "ı", "I": "İ", "K": "\u212a", "a": "ａ", "e": "ｅ"}


@st.composite
def word(draw: st.DrawFn, ascii_only: bool = False) -> str:
    w = draw(st.sampled_from(WORDS))
    w = draw(st.sampled_from([w, w.lower(), w.upper(), w.swapcase()]))
    if ascii_only:
        return w.encode("ascii", "ignore").decode() or "x"
    if draw(st.booleans()):
        w = "".join(LOOKALIKE.get(c, c) if draw(st.integers(0, 3)) == 0 else c for c in w)
    if draw(st.integers(0, 4)) == 0:
        cut = draw(st.integers(0, len(w)))
        w = w[:cut] + draw(st.sampled_from(["\u200b", "\u00ad", "\u202e", ""])) + w[cut:]
    return w


@st.composite
def text(draw: st.DrawFn) -> str:
    words = draw(st.lists(word(), max_size=6))
    seps = [draw(st.sampled_from([" ", ": ", "-", "", "\n", "  "])) for _ in words]
    return "".join(w + s for w, s in zip(words, seps))


@st.composite
def address(draw: st.DrawFn) -> str:
    local = draw(word(ascii_only=True)).replace(" ", "").replace("-", ".").strip(".") or "x"
    return f"{local}@{draw(st.sampled_from(DOMAINS))}"


@st.composite
def mail(draw: st.DrawFn) -> tuple[EmailMessage, str, tuple[str, ...]]:
    msg = EmailMessage()
    msg["From"] = draw(address())
    msg["To"] = ", ".join(draw(st.lists(st.one_of(address(), st.sampled_from(list(QUEUES.values()))),
                                        min_size=1, max_size=3)))
    cc = draw(st.lists(address(), max_size=2))
    if cc:
        msg["Cc"] = ", ".join(cc)
    msg["Subject"] = draw(text()).replace("\n", " ")
    for name in HEADERS:
        for _ in range(draw(st.integers(0, 2))):
            msg[name] = draw(text()).replace("\n", " ").strip() or "x"
    msg.set_content(draw(text()) + "\n")
    if draw(st.booleans()):
        msg.add_attachment(b"%PDF-1.4", maintype="application", subtype="pdf", filename="a.pdf")
    arrival = tuple(draw(st.lists(st.sampled_from(list(QUEUES)), max_size=2, unique=True)))
    return msg, draw(st.sampled_from(KINDS)), arrival


# --- random rules -------------------------------------------------------------------------------

@st.composite
def regex(draw: st.DrawFn) -> str:
    a, b = draw(word()), draw(word())
    ea, eb = re.escape(a), re.escape(b)
    return draw(st.sampled_from([
        ea, rf"\b{ea}\s+{eb}\b", f"{ea}|{eb}", f"^{ea}", f"{ea}$", f"(?:{ea})?{eb}", f"{ea}.*{eb}",
        f"(?:{ea}|{eb}){{2}}", rf"{ea}\s*:?\s*\d+\b", f"(?-i:{ea})", f"[{ea[:1]}x]{ea[1:]}", f"(?={ea}){eb}",
        f"{ea}(?!{eb})", r"(\w+) \1", f"{ea[:2]}.{ea[3:]}", ".", "",
    ]))


@st.composite
def glob(draw: st.DrawFn) -> str:
    w = draw(word(ascii_only=True))
    d = draw(st.sampled_from(DOMAINS))
    return draw(st.sampled_from([f"*@{d}", f"{w}@*", f"*{w}*", f"{w}@{d}", f"?{w[1:]}*", f"*[!x]{w}*", "*"]))


def pattern() -> st.SearchStrategy[Any]:
    return st.one_of(regex(), glob().map(lambda g: {"glob": g}), regex().map(lambda r: {"regex": r}))


@st.composite
def rule(draw: st.DrawFn, index: int) -> dict[str, Any]:
    match: dict[str, Any] = {}
    for key in draw(st.lists(st.sampled_from(["from", "to", "cc", "subject", "body", "headers", "queue",
                                              "classification", "has_attachment"]), max_size=3, unique=True)):
        if key == "headers":
            names = draw(st.lists(st.sampled_from(HEADERS), min_size=1, max_size=2, unique=True))
            match["headers"] = {h: draw(pattern()) for h in names}
        elif key == "queue":
            match["queue"] = draw(st.lists(st.sampled_from(list(QUEUES)), min_size=1, max_size=2,
                                           unique=True))
        elif key == "classification":
            match["classification"] = draw(st.lists(st.sampled_from(KINDS), min_size=1, max_size=2,
                                                    unique=True))
        elif key == "has_attachment":
            match["has_attachment"] = draw(st.booleans())
        else:
            match[key] = draw(pattern())
    out: dict[str, Any] = {"name": f"r{index}", "match": match, "continue": draw(st.integers(0, 3)) == 0}
    if draw(st.booleans()):
        out["tags"] = [f"t{index}"]
    if draw(st.booleans()):
        out["queue"] = draw(st.sampled_from(list(QUEUES)))
    return out


@st.composite
def config(draw: st.DrawFn) -> Config:
    count = draw(st.integers(0, 25))
    return Config.model_validate({
        "queue": [{"name": n, "address": a} for n, a in QUEUES.items()],
        "rule": [draw(rule(i)) for i in range(count)],
    })


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(cfg=config(), mails=st.lists(mail(), min_size=1, max_size=8))
def test_prefiltered_routing_equals_trying_every_rule(cfg: Config, mails: list[Any]) -> None:
    check(cfg, [(parse(msg.as_bytes()), kind, arrival) for msg, kind, arrival in mails])


def test_benchmark_rule_sets_with_mails_that_match() -> None:
    """The benchmark's 1,000 rules against mails written to hit rules (and near-misses), incl. look-alikes."""
    rules = rule_set(1000)
    queues = [{"name": n, "address": a} for n, a in QUEUES.items()]
    cfg = Config.model_validate({"queue": queues, "rule": rules})
    rng = random.Random(8)
    mails = []
    for _ in range(80):
        i = rng.randrange(1000)
        msg = EmailMessage()
        msg["From"] = rng.choice([f"info@lieferant{i}.example", f"info@LIEFERANT{i}.example.org", "a@web.de",
                                  f"info@lieferant{i}.exampl\u212a"])
        msg["To"] = rng.choice([f"amt{i}@stadt.example", f"xamt{i}@stadt.example", "bauamt@stadt.example"])
        msg["Subject"] = rng.choice([f"Aktenzeichen XY-{i}", f"AKTENZEICHEN  xy-{i}0",
                                     f"Aktenzeichen BA-{i}/2025", f"\u212aurz: Akten\u200bzeichen XY-{i}",
                                     "Hallo"])
        if rng.random() < 0.5:
            msg["X-Mailer"] = rng.choice([f"Serienbrief {i}", f"ſerienbrief {i}", "Outlook"])
        msg.set_content(rng.choice([f"Kundennummer: {i}", f"kundennummer{i}x", "Guten Tag"]) + "\n")
        mails.append((parse(msg.as_bytes()), rng.choice(KINDS), (rng.choice(list(QUEUES)),)))
    assert check(cfg, mails) > 15
