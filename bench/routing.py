"""Benchmark 5, rules: the cost of `Router.route` per message with 0 (floor), 10, 100 and 1,000 rules.

Corpus mails are parsed and classified once; each timed pass builds a fresh `MailFacts` per mail (as the
pipeline does) and routes it. The rules are a realistic mix (sender globs, subject and body regexes,
header conditions, recipient + classification) that no corpus mail matches, so every rule has to be
considered: the worst case for a first-match list. (The router's prefilter skips the rules that cannot match;
it does not know that none will.) A second pass with 1,000 rules adds a final rule that every corpus mail
matches, so the cost of a rule that is found and evaluated is in the figures too.
"""

from __future__ import annotations

import time
from typing import Any

from bench.corpus import QUEUES, generate
from bench.harness import Check, Ctx, Outcome, median, rounded, say

NAME = "rules"
RULE_COUNTS = (0, 10, 100, 1000)


def rule_set(count: int) -> list[dict[str, Any]]:
    queues = list(QUEUES)
    rules: list[dict[str, Any]] = []
    for i in range(count):
        kind = i % 5
        rule: dict[str, Any] = {"name": f"regel-{i:04d}", "queue": queues[i % len(queues)]}
        if kind == 0:
            rule["match"] = {"from": {"glob": f"*@lieferant{i}.example"}}
        elif kind == 1:
            rule["match"] = {"subject": rf"\bAktenzeichen\s+XY-{i}\b"}
        elif kind == 2:
            rule["match"] = {"headers": {"x-mailer": f"Serienbrief {i}"}}
            rule["action"] = "ignore"
        elif kind == 3:
            rule["match"] = {"body": rf"Kundennummer\s*:?\s*{i}\b", "has_attachment": False}
        else:
            rule["match"] = {"to": {"glob": f"amt{i}@stadt.example"}, "classification": ["human"]}
            rule["priority"] = "high"
        rules.append(rule)
    return rules


# Appended for the "last rule matches" pass: every corpus mail is addressed to a queue of the city.
LAST_MATCHING_RULE: dict[str, Any] = {
    "name": "alle-an-die-stadt", "match": {"to": {"glob": "*@stadt.example"}}, "tags": ["stadt"],
}


def build_router(count: int, last_matches: bool = False) -> Any:
    from mail2ticket.config.model import Config
    from mail2ticket.rules import Router

    config = Config.model_validate({
        "queue": [{"name": name, "address": address} for name, (address, _) in QUEUES.items()],
        "rule": rule_set(count) + ([LAST_MATCHING_RULE] if last_matches else []),
    })
    return Router(config)


def run(ctx: Ctx) -> Outcome:
    from mail2ticket.classify import classify
    from mail2ticket.parse import parse
    from mail2ticket.rules import MailFacts

    n = ctx.size("rules_mails", 500, 100)
    rounds = ctx.rounds(5, 3)
    facts_input = []
    for mail in generate(n, ctx.seed, attachments=False):
        parsed = parse(mail.raw)
        assert parsed.msg is not None  # the corpus holds no mail the parser refuses
        kind = classify(parsed.msg, mail.mail_from, list(mail.rcpt_to)).kind
        queue = next(name for name, (address, _) in QUEUES.items() if address == mail.rcpt_to[0])
        facts_input.append((parsed, kind, (queue,)))
    out = Outcome(NAME, (
        f"{n} parsed corpus mails (no attachments), each routed with a fresh MailFacts by Router.route; rule "
        f"sets of {', '.join(map(str, RULE_COUNTS))} rules (sender glob, subject regex, header, body regex, "
        f"recipient+classification; none matches, so every rule must be considered). Floor = 0 rules. Then "
        f"1,000 rules plus a last rule that every mail matches. {rounds} passes, median µs per message."))
    per_msg: dict[int, float] = {}

    def timed(router: Any) -> tuple[list[float], set[str | None]]:
        samples, decided = [], set()
        for _ in range(rounds):
            start = time.perf_counter()
            for parsed, kind, arrival in facts_input:
                decision = router.route(MailFacts(parsed, kind, arrival))
                decided.add(decision.rule)
            samples.append((time.perf_counter() - start) / n)
        return samples, decided

    for count in RULE_COUNTS:
        samples, decided = timed(build_router(count))
        assert decided == {None}, f"a benchmark rule matched: {decided}"
        per_msg[count] = median(samples)
        out.rounds.append({"rules": count, "us_per_msg": [s * 1e6 for s in samples]})
        say(f"  {count:5d} rules: {per_msg[count] * 1e6:9.1f} µs/msg")
    samples, decided = timed(build_router(1000, last_matches=True))
    assert decided == {LAST_MATCHING_RULE["name"]}, f"unexpected decisions: {decided}"
    last_matches = median(samples)
    out.rounds.append({"rules": 1001, "last_rule_matches": True, "us_per_msg": [s * 1e6 for s in samples]})
    say(f"  {1001:5d} rules: {last_matches * 1e6:9.1f} µs/msg (the last rule matches every mail)")
    floor = per_msg[0]
    out.figures = {
        "mails": n, "passes": rounds,
        "us_per_msg": {str(c): rounded(v * 1e6) for c, v in per_msg.items()},
        "ratio_to_floor": {str(c): rounded(v / floor) for c, v in per_msg.items()},
        "growth_1000_vs_10": rounded(per_msg[1000] / per_msg[10]),
        "marginal_us_per_rule": rounded((per_msg[1000] - per_msg[10]) / 990 * 1e6),
        "us_per_msg_1000_plus_last_matching": rounded(last_matches * 1e6),
    }
    cost = per_msg[1000] * 1000
    out.checks = [Check("1,000 rules < 1 ms per message", f"{cost:.3f} ms (growth ×{per_msg[1000] / per_msg[10]:.0f} "
                        f"from 10 to 1,000 rules)", cost < 1.0)]
    return out
