"""Routing rules as the admin writes them in TOML: order, continue, globs, regexes, headers and defaults."""

from __future__ import annotations

import tomllib
from email.message import EmailMessage

from mail2ticket.config.model import Config
from mail2ticket.parse import parse
from mail2ticket.rules import MailFacts, Router
from tests.support.mails import citizen_mail

BASE = """
[[queue]]
name = "buergerbuero"
address = "buergerbuero@stadt.example"
[[queue]]
name = "bauamt"
address = "bauamt@stadt.example"
acknowledge = false
[[queue]]
name = "ordnungsamt"
address = "ordnungsamt@stadt.example"
"""


def router(rules: str) -> Router:
    return Router(Config.model_validate(tomllib.loads(BASE + rules)))


def facts(raw: bytes, arrival: tuple[str, ...] = ("buergerbuero",), kind: str = "human") -> MailFacts:
    return MailFacts(parse(raw), kind, arrival)


def test_unmatched_mail_goes_to_the_queue_it_was_sent_to() -> None:
    """Without a matching rule the mail lands in the queue of its address, with that queue's ack setting."""
    r = router("")
    assert r.route(facts(citizen_mail(), ("bauamt",))).queue == "bauamt"
    assert r.route(facts(citizen_mail(), ("bauamt",))).reply is None
    assert r.route(facts(citizen_mail(), ("buergerbuero",))).reply == "ack"


def test_first_match_wins_and_continue_accumulates() -> None:
    """Rules apply in order; a rule with continue = true adds its settings and lets later rules decide more."""
    r = router("""
[[rule]]
name = "dringend"
match = { subject = "dringend" }
priority = "urgent"
tags = ["eilig"]
continue = true
[[rule]]
name = "lärm"
match = { subject = "lärm|ruhestörung" }
queue = "ordnungsamt"
tags = ["lärm"]
[[rule]]
name = "nie erreicht"
match = { subject = "lärm" }
queue = "bauamt"
""")
    decision = r.route(facts(citizen_mail(subject="DRINGEND: Ruhestörung in der Nacht")))
    assert (decision.rule, decision.queue, decision.priority) == ("lärm", "ordnungsamt", "urgent")
    assert decision.tags == ("eilig", "lärm")
    assert decision.matched == ("dringend", "lärm")


def test_glob_and_regex_conditions_on_addresses_and_headers() -> None:
    """A glob matches a whole address, a regex searches; header conditions see X-Priority and Importance."""
    r = router("""
[[rule]]
name = "formular"
match = { from = { glob = "*@formulare.stadt.example" }, headers = { "Importance" = "^high$" } }
category = "Formular"
requester = "reply-to"
""")
    hit = citizen_mail(sender="noreply@formulare.stadt.example", headers={"Importance": "high",
                                                                         "Reply-To": "erika@example.org"})
    miss = citizen_mail(sender="noreply@formulare.stadt.example.evil.example", headers={"Importance": "high"})
    assert r.route(facts(hit)).category == "Formular"
    assert r.route(facts(hit)).requester == "reply-to"
    assert r.route(facts(miss)).rule is None


def test_a_glob_without_wildcards_matches_only_that_exact_address() -> None:
    """A glob covers the whole value: "amt4@stadt.example" must not also catch "xamt4@stadt.example"."""
    r = router("""
[[rule]]
name = "amt4"
match = { from = { glob = "amt4@stadt.example" } }
queue = "bauamt"
""")
    assert r.route(facts(citizen_mail(sender="amt4@stadt.example"))).rule == "amt4"
    assert r.route(facts(citizen_mail(sender="xamt4@stadt.example"))).rule is None
    assert r.route(facts(citizen_mail(sender="boss.amt4@stadt.example"))).rule is None


def test_rules_match_normalised_text_so_invisible_characters_do_not_dodge_them() -> None:
    """Zero-width characters and full-width letters in a subject still match the admin's plain-text rule (T37)."""
    r = router("""
[[rule]]
name = "spam"
match = { subject = "gewinnspiel" }
action = "ignore"
reason = "Werbung"
""")
    decision = r.route(facts(citizen_mail(subject="Ihr Ge\u200bwinn\u200dspiel – ｇｅｗｉｎｎｓｐｉｅｌ")))
    assert decision.action == "ignore" and decision.reason == "Werbung"


def test_attachment_queue_and_classification_conditions() -> None:
    """has_attachment, the arrival queue and the classification can all be rule conditions."""
    r = router("""
[[rule]]
name = "listen"
match = { classification = "list" }
queue = "buergerbuero"
reply = false
[[rule]]
name = "pläne"
match = { queue = "bauamt", has_attachment = true }
category = "Pläne"
""")
    msg = EmailMessage()
    msg["From"] = "a@example.org"
    msg["To"] = "bauamt@stadt.example"
    msg["Subject"] = "Pläne"
    msg.set_content("anbei")
    msg.add_attachment(b"%PDF-1.4", maintype="application", subtype="pdf", filename="plan.pdf")
    assert r.route(facts(msg.as_bytes(), ("bauamt",))).category == "Pläne"
    assert r.route(facts(citizen_mail(), ("bauamt",))).category is None
    listed = r.route(facts(citizen_mail(), ("bauamt",), kind="list"))
    assert listed.rule == "listen" and listed.reply is None
