"""Benchmark 5, rules: the cost of `Router.route` per message with 0 (floor), 10, 100 and 1,000 rules.

Corpus mails are parsed and classified once; each timed pass builds a fresh `MailFacts` per mail (as the
pipeline does) and routes it. The rules are a realistic mix (sender globs, subject and body regexes,
header conditions, recipient + classification) that no corpus mail matches, so every rule is evaluated:
the worst case for a first-match list.
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


def build_router(count: int) -> Any:
    from mail2ticket.config.model import Config
    from mail2ticket.rules import Router

    config = Config.model_validate({
        "queue": [{"name": name, "address": address} for name, (address, _) in QUEUES.items()],
        "rule": rule_set(count),
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
        kind = classify(parsed.msg, mail.mail_from, list(mail.rcpt_to)).kind
        queue = next(name for name, (address, _) in QUEUES.items() if address == mail.rcpt_to[0])
        facts_input.append((parsed, kind, (queue,)))
    out = Outcome(NAME, (
        f"{n} parsed corpus mails (no attachments), each routed with a fresh MailFacts by Router.route; rule "
        f"sets of {', '.join(map(str, RULE_COUNTS))} rules (sender glob, subject regex, header, body regex, "
        f"recipient+classification; none matches, so all are evaluated). Floor = 0 rules. {rounds} passes, "
        f"median µs per message."))
    per_msg: dict[int, float] = {}
    for count in RULE_COUNTS:
        router = build_router(count)
        samples = []
        for _ in range(rounds):
            start = time.perf_counter()
            for parsed, kind, arrival in facts_input:
                decision = router.route(MailFacts(parsed, kind, arrival))
            samples.append((time.perf_counter() - start) / n)
        assert decision.rule is None, f"a benchmark rule matched: {decision.rule}"
        per_msg[count] = median(samples)
        out.rounds.append({"rules": count, "us_per_msg": [s * 1e6 for s in samples]})
        say(f"  {count:5d} rules: {per_msg[count] * 1e6:9.1f} µs/msg")
    floor = per_msg[0]
    out.figures = {
        "mails": n, "passes": rounds,
        "us_per_msg": {str(c): rounded(v * 1e6) for c, v in per_msg.items()},
        "ratio_to_floor": {str(c): rounded(v / floor) for c, v in per_msg.items()},
        "growth_1000_vs_10": rounded(per_msg[1000] / per_msg[10]),
        "marginal_us_per_rule": rounded((per_msg[1000] - per_msg[10]) / 990 * 1e6),
    }
    cost = per_msg[1000] * 1000
    out.checks = [Check("1,000 rules < 1 ms per message", f"{cost:.3f} ms (growth ×{per_msg[1000] / per_msg[10]:.0f} "
                        f"from 10 to 1,000 rules)", cost < 1.0)]
    return out
