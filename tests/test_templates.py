"""Templates: German and English render, HTML is escaped, mail content is only ever data."""

from __future__ import annotations

import pytest

from mail2ticket.cli.check_cmd import SAMPLE
from mail2ticket.outbox.render import Renderer
from tests.support.app import App
from tests.support.conversation import STAFF, configure, ingest, mail, outbound_mails, plain, staff_mail

CONVERSATION_TEMPLATES = ("ack", "staff_new", "reply", "status", "status_resolved", "status_closed", "command_error")
EXTRA = {"body": "Zeile 1\nZeile 2 <b>", "summary": {"rule": "r", "tags": ["t"]}, "requester": "e@example.org",
         "requester_name": "Erika <b>", "status_label": "In Bearbeitung", "status_changed": True, "errors": ["#x: unknown command"],
         "commands": ["status"], "aliases": [("erledigt", "close")]}


@pytest.mark.parametrize("language", ["de", "en"])
@pytest.mark.parametrize("name", CONVERSATION_TEMPLATES)
def test_every_template_renders_in_both_languages(name: str, language: str) -> None:
    """Each shipped template renders in German and English, with the check-config sample and with full data."""
    renderer = Renderer()
    assert renderer.exists(name, language)
    for context in (dict(SAMPLE), {**SAMPLE, **EXTRA}):
        rendered = renderer.render(name, language, context)
        assert SAMPLE["number"] in rendered.subject + rendered.text
        assert "\n" not in rendered.subject
    html = renderer.render(name, language, {**SAMPLE, **EXTRA}).html
    if html is not None:
        assert "&lt;b&gt;" in html and "<b>" not in html  # mail data is escaped in HTML parts


def test_languages_differ() -> None:
    """German and English acks are different texts."""
    renderer = Renderer()
    assert renderer.render("ack", "de", dict(SAMPLE)).text != renderer.render("ack", "en", dict(SAMPLE)).text


def test_template_injection_comes_out_literally(app: App) -> None:
    """`{{ 7*7 }}` and `{% ... %}` in subject and body appear verbatim in ack, notification, reply and status mail."""
    configure(app)
    payload = "{{ 7*7 }} {% for x in range(3) %}X{% endfor %} {{ ''.__class__ }}"
    number = str(ingest(app, mail(subject=f"Frage {payload}", body=f"Text {payload}\n"))["ticket"])
    note = next(m for t, _, m in outbound_mails(app, number) if t == "staff_new")
    ingest(app, staff_mail(f"#status in_progress\nAntwort {payload}\n", in_reply_to=str(note["Message-ID"])),
           sender=STAFF)
    app.json("tickets", "set-status", number, "waiting")
    mails = outbound_mails(app, number)
    assert [t for t, _, _ in mails] == ["ack", "staff_new", "reply", "status"]
    for template, _, msg in mails:
        rendered = str(msg["Subject"]) + plain(msg)
        assert "{{ 7*7 }}" in rendered, template
        assert "49" not in rendered and "XXX" not in rendered and "<class" not in rendered, template


def test_per_queue_override_directory(app: App, tmp_path: object) -> None:
    """An admin template in <override>/<queue>/ replaces the shipped one for that queue only."""
    configure(app)
    override = app.root / "templates"
    (override / "bauamt" / "de").mkdir(parents=True)
    (override / "bauamt" / "de" / "ack.subject.j2").write_text("{{ tag }} Bauamt hat es", encoding="utf-8")
    (override / "bauamt" / "de" / "ack.txt.j2").write_text("Eigenes Bauamt-Template {{ number }}", encoding="utf-8")
    app.set("daemon", template_override_dir=str(override))
    app.queues_toml = app.queues_toml.replace('language = "en"\n', "")
    bau = str(ingest(app, mail(to="bauamt@stadt.example"), recipients=("bauamt@stadt.example",))["ticket"])
    other = str(ingest(app, mail(sender="Max <max@example.net>"), sender="max@example.net")["ticket"])
    assert "Eigenes Bauamt-Template" in plain(outbound_mails(app, bau)[0][2])
    assert "vielen Dank" in plain(outbound_mails(app, other)[0][2])


def test_check_config_renders_the_conversation_templates(app: App) -> None:
    """check-config renders every template with sample data and finds no problem in ours."""
    configure(app)
    proc = app.cli("check-config", check=False)
    for name in CONVERSATION_TEMPLATES:
        assert f"/{name}:" not in proc.stdout, proc.stdout
