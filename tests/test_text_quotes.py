"""Tests for mail2ticket.text.quotes: staff see only what the sender newly wrote in a reply."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from mail2ticket.text.quotes import new_text
from tests.support.corpus import corpus_dir

BENCH = Path(__file__).resolve().parents[1] / "bench" / "quote_accuracy.py"

# Measured with bench/quote_accuracy.py (languages de,en): crisp 64/65, zapier 9/9, talon 13/28,
# overall 86/102 = 84.3 %. The talon misses are by design (we strip greetings such as
# "Thanks,\nAlex" and mobile footers, talon keeps them) or need talon's ML signature classifier.
MIN_OVERALL = 0.84
MIN_PER_FOLDER = {"crisp-email-reply-parser": 0.95, "zapier-email-reply-parser": 1.0}


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("quote_accuracy", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("quote_accuracy", module)
    spec.loader.exec_module(module)
    return module


@pytest.mark.corpus
def test_fixture_accuracy_meets_the_measured_threshold() -> None:
    """On the crisp/zapier/talon reply fixtures the new text is right in at least 84 % of cases."""
    bench = _bench()
    results = bench.evaluate(corpus_dir())
    summary = bench.summarize(results)
    failed = [f"{r.folder}/{r.fixture}: {r.detail}" for r in results if r.passed is False]
    assert bench.accuracy(results) >= MIN_OVERALL, "\n".join(failed)
    for folder, minimum in MIN_PER_FOLDER.items():
        passed, total = summary[folder]
        assert passed / total >= minimum, (folder, passed, total, failed)


@pytest.mark.corpus
def test_pathological_fixture_is_handled() -> None:
    """The regex-backtracking fixture gives a non-empty new text (no hang, no crash)."""
    path = corpus_dir() / "reply-quote-fixtures/zapier-email-reply-parser/fixtures/pathological.txt"
    assert new_text(path.read_text(encoding="utf-8")).strip()


OUTLOOK_DE = """\
Sehr geehrte Damen und Herren,

anbei der ausgefüllte Antrag.

Mit freundlichen Grüßen
Max Mustermann

-----Ursprüngliche Nachricht-----
Von: Bürgerbüro <buergerbuero@stadt.example>
Gesendet: Montag, 3. Februar 2025 10:12
An: Max Mustermann <max@example.org>
Betreff: [Ticket#2025-000123] Ihr Antrag

Bitte senden Sie uns den Antrag ausgefüllt zurück.
"""


def test_german_outlook_reply_keeps_only_the_new_text() -> None:
    """An Outlook reply loses the "Ursprüngliche Nachricht" block and the greeting signature."""
    assert new_text(OUTLOOK_DE) == "Sehr geehrte Damen und Herren,\n\nanbei der ausgefüllte Antrag."


def test_outlook_header_block_without_separator_line() -> None:
    """A newer Outlook reply (underscore line, then Von/Gesendet/An/Betreff) is cut at the line."""
    body = (
        "Danke, der Termin passt.\n\n"
        "________________________________\n"
        "Von: Ordnungsamt <ordnungsamt@stadt.example>\n"
        "Gesendet: Dienstag, 4. Februar 2025 08:00\n"
        "An: erika@example.org\n"
        "Betreff: Termin\n\n"
        "Ihr Termin ist am Freitag.\n"
    )
    assert new_text(body) == "Danke, der Termin passt."


def test_thunderbird_reply_with_quote_block() -> None:
    """A Thunderbird top-post loses the "Am … schrieb …:" line and the quoted mail."""
    body = (
        "Hallo,\n\nich komme am Dienstag vorbei.\n\n"
        "Am 03.02.2025 um 10:12 schrieb Bürgerbüro:\n"
        "> Guten Tag,\n>\n> bitte bringen Sie Ihren Ausweis mit.\n"
    )
    assert new_text(body) == "Hallo,\n\nich komme am Dienstag vorbei."


def test_gmail_reply_with_attribution_split_over_two_lines() -> None:
    """Gmail's long German attribution wrapped over two lines is still recognised."""
    body = (
        "Vielen Dank für die schnelle Antwort!\n\n"
        "Am Mo., 3. Feb. 2025 um 10:12 Uhr schrieb Bürgerbüro der Stadt <\n"
        "buergerbuero@stadt.example>:\n\n"
        "> Sehr geehrte Frau Musterfrau,\n"
        "> Ihr Ausweis liegt zur Abholung bereit.\n"
    )
    assert new_text(body) == "Vielen Dank für die schnelle Antwort!"


def test_apple_mail_iphone_footer_is_removed() -> None:
    """ "Von meinem iPhone gesendet" and the quoted mail below it are not new text."""
    body = (
        "Passt, danke.\n\nVon meinem iPhone gesendet\n\n"
        "> Am 03.02.2025 um 10:12 schrieb Bürgerbüro <buergerbuero@stadt.example>:\n"
        ">\n> Ihr Termin: Freitag 9 Uhr.\n"
    )
    assert new_text(body) == "Passt, danke."


def test_bottom_posted_reply_drops_the_opening_quote() -> None:
    """When the answer is written below the whole quote, only the answer remains."""
    body = (
        "Am 03.02.2025 um 10:12 schrieb Bürgerbüro:\n"
        "> Bitte nennen Sie uns Ihr Aktenzeichen.\n\n"
        "Das Aktenzeichen lautet 32-123/2025.\n"
    )
    assert new_text(body) == "Das Aktenzeichen lautet 32-123/2025."


def test_inline_answers_keep_their_questions() -> None:
    """Answers written between quoted questions keep those questions, so they stay readable."""
    body = (
        "Am 03.02.2025 um 10:12 schrieb Bürgerbüro:\n"
        "> Welche Hausnummer?\n\n12a\n\n"
        "> Welches Stockwerk?\n\n3. OG\n"
    )
    result = new_text(body)
    assert "12a" in result and "3. OG" in result
    assert "> Welches Stockwerk?" in result
    assert "schrieb" not in result


def test_dash_dash_signature_is_removed() -> None:
    """Everything below the standard "-- " signature separator is dropped."""
    body = "Bitte um Rückruf.\n\n-- \nErika Musterfrau\nTel. 0123 456789\n"
    assert new_text(body) == "Bitte um Rückruf."


def test_hyphen_lists_are_not_taken_for_signatures() -> None:
    """A list written with hyphens stays part of the text."""
    body = "Folgende Unterlagen fehlen:\n\n- Meldebescheinigung\n- Geburtsurkunde\n\nDanke"
    assert "- Geburtsurkunde" in new_text(body)


def test_long_line_starting_with_greeting_word_is_kept() -> None:
    """A sentence that merely starts like a greeting ("Thanks, …") is not cut as signature."""
    body = (
        "Hello,\n"
        "Thanks, the form arrived, but the second page is missing and I need it by Friday "
        "for the appointment at the registry office.\n"
    )
    assert "second page is missing" in new_text(body)


def test_forwarded_message_is_not_cut() -> None:
    """A forwarded mail is content for a ticket, so its text is kept."""
    body = (
        "Zur Kenntnis.\n\n---------- Weitergeleitete Nachricht ---------\n"
        "Von: Erika <erika@example.org>\nDatum: Mo., 3. Feb. 2025\nBetreff: Laterne defekt\n\n"
        "Die Laterne in der Hauptstraße ist seit einer Woche aus.\n"
    )
    assert "Laterne in der Hauptstraße" in new_text(body)


def test_body_that_is_only_a_quote_falls_back_to_the_whole_body() -> None:
    """A mail with no detectable new text is shown in full rather than as an empty article."""
    body = "> Bitte bestätigen Sie den Termin.\n> Ihr Bürgerbüro\n"
    assert new_text(body) == body.strip()


def test_empty_body_gives_empty_text() -> None:
    """An empty or blank body gives an empty new text."""
    assert new_text("") == ""
    assert new_text(" \n\t\n") == ""


def test_crlf_line_endings_are_handled() -> None:
    """Bodies with Windows line endings are cut the same way."""
    body = "Ja, gerne.\r\n\r\nAm 03.02.2025 um 10:12 schrieb X:\r\n> Frage\r\n"
    assert new_text(body) == "Ja, gerne."


def test_very_long_line_starting_like_an_attribution_is_kept_intact() -> None:
    """A huge single-line paragraph (e.g. from HTML) survives unchanged and is not cut."""
    line = "Am " + "Montag war ich im Amt und " * 2000 + "das war gut."
    assert new_text(f"Hallo,\n{line}\n") == f"Hallo,\n{line}"


def test_english_reply_with_languages_parameter() -> None:
    """English "On … wrote:" replies are recognised with the default languages."""
    body = (
        "Thank you, that works.\n\nOn Mon, Feb 3, 2025 at 10:12 AM Town Hall <th@example.org> wrote:\n> Hi\n"
    )
    assert new_text(body, languages=("en",)) == "Thank you, that works."
