"""Tests for mail2ticket.text.html: HTML mail is readable as text and safe to display."""

from __future__ import annotations

import pytest

from mail2ticket.text.html import html_to_text, sanitize_html

XSS_PAYLOADS = [
    '<script>alert("x")</script><p>Hallo</p>',
    '<img src="x" onerror="alert(1)"><p>Hallo</p>',
    '<a href="javascript:alert(1)">Hallo</a>',
    '<a href="  JaVaScRiPt:alert(1)">Hallo</a>',
    '<svg onload="alert(1)"><script>alert(1)</script></svg><p>Hallo</p>',
    '<div style="width: expression(alert(1))">Hallo</div>',
    '<p style="background:url(javascript:alert(1))">Hallo</p>',
    '<iframe src="https://evil.example/"></iframe><p>Hallo</p>',
    '<body onload="alert(1)"><p>Hallo</p></body>',
    '<form action="https://evil.example/"><input name="pw"></form><p>Hallo</p>',
    '<math><mtext><a href="javascript:alert(1)">Hallo</a></mtext></math>',
    '<style>@import "https://evil.example/x.css";</style><p>Hallo</p>',
]


@pytest.mark.parametrize("payload", XSS_PAYLOADS)
def test_xss_payloads_are_removed(payload: str) -> None:
    """No script, event handler, javascript: URL, frame, form or CSS expression survives."""
    clean = sanitize_html(payload).lower()
    for bad in ("<script", "onerror", "onload", "javascript:", "expression(", "<iframe", "<svg", "<form",
                "<input", "@import", "url("):  # fmt: skip
        assert bad not in clean, (payload, clean)


def test_safe_formatting_is_kept() -> None:
    """Bold, lists, tables and plain links stay, so the mail still looks like a mail."""
    html = (
        '<p><b>Wichtig:</b> <a href="https://stadt.example/termin">Termin</a></p>'
        "<ul><li>eins</li></ul><table><tr><td>a</td></tr></table>"
    )
    clean = sanitize_html(html)
    assert "<b>Wichtig:</b>" in clean
    assert 'href="https://stadt.example/termin"' in clean
    assert "<li>eins</li>" in clean and "<td>a</td>" in clean


def test_links_get_noopener_noreferrer_nofollow() -> None:
    """Links opened from a ticket do not leak the ticket URL or pass ranking."""
    clean = sanitize_html('<a href="https://example.org/" rel="opener">x</a>')
    assert 'rel="noopener noreferrer nofollow"' in clean
    assert 'rel="opener"' not in clean


def test_remote_images_are_dropped_but_inline_cid_images_stay() -> None:
    """Opening a ticket never loads a tracking pixel; images sent inside the mail still show."""
    clean = sanitize_html(
        '<img src="https://tracker.example/p.gif" width="1">'
        '<img src="cid:logo@stadt.example" alt="Logo">'
        '<img src="data:image/png;base64,AAAA">'
    )
    assert "tracker.example" not in clean
    assert "data:" not in clean
    assert 'src="cid:logo@stadt.example"' in clean


def test_harmless_inline_style_is_kept_and_dangerous_style_dropped() -> None:
    """A red colour survives, CSS that can run code or load a URL does not."""
    assert 'style="color:red"' in sanitize_html('<span style="color: red">x</span>')
    assert "style" not in sanitize_html('<span style="color: red; background: url(https://x/)">x</span>')


def test_empty_html_gives_empty_results() -> None:
    """Blank HTML gives blank text and blank sanitized HTML."""
    assert html_to_text("") == ""
    assert html_to_text("  \n") == ""
    assert sanitize_html("") == ""


NEWSLETTER = """\
<!DOCTYPE html>
<html lang="de"><head><meta charset="utf-8"><title>Newsletter</title>
<style>.x { color: #333; }</style><script>track()</script></head>
<body>
<div style="display:none">Vorschau&zwnj;&nbsp;&zwnj;&nbsp;&zwnj;&nbsp;</div>
<table width="600"><tr><td>
<h1>Neuigkeiten aus dem Rathaus</h1>
<p>Sehr geehrte B&uuml;rgerinnen und B&uuml;rger,</p>
<p>die &Ouml;ffnungszeiten des B&uuml;rgerb&uuml;ros &auml;ndern sich ab M&auml;rz:</p>
<ul><li>Montag: 8&ndash;12 Uhr</li><li>Donnerstag: 14&ndash;18 Uhr</li></ul>
<p>Mit freundlichen Gr&#252;&szlig;en<br>Ihre Stadtverwaltung</p>
<p><a href="https://stadt.example/abmelden">Newsletter abbestellen</a></p>
</td></tr></table>
<img src="https://tracker.example/open.gif" width="1" height="1">
</body></html>
"""


def test_html_newsletter_becomes_readable_text_with_umlauts() -> None:
    """An HTML-only German mail becomes plain text with umlauts, lists and no markup or script."""
    text = html_to_text(NEWSLETTER)
    assert "Neuigkeiten aus dem Rathaus" in text
    assert "Sehr geehrte Bürgerinnen und Bürger," in text
    assert "die Öffnungszeiten des Bürgerbüros ändern sich ab März:" in text
    assert "Montag: 8–12 Uhr" in text and "Donnerstag: 14–18 Uhr" in text
    assert "Mit freundlichen Grüßen\nIhre Stadtverwaltung" in text
    for leftover in ("<", "track()", "color: #333", "\u200c", "\n\n\n"):
        assert leftover not in text
    assert text == text.strip()


def test_paragraphs_are_separated_by_blank_lines() -> None:
    """Block elements become separate paragraphs instead of one run-on line."""
    assert html_to_text("<p>Eins</p><p>Zwei</p>") == "Eins\n\nZwei"
    assert html_to_text("Eins<br>Zwei") == "Eins\nZwei"


def test_html_to_text_never_raises_on_broken_markup() -> None:
    """Truncated or bogus markup still yields its text."""
    assert "Hallo" in html_to_text("<div><p>Hallo <b>Welt")
    assert "Text" in html_to_text("<?xml version='1.0' encoding='utf-8'?><p>Text</p>")
    assert html_to_text("<!-- nur ein Kommentar -->") == ""
