"""The body of an inbound mail as text, and its new text: what an article stores.

The parse worker works both out (`with_body`), so the processing thread only copies them; quote stripping and
HTML conversion then run under the worker's CPU budget and on its core.
"""

from __future__ import annotations

from dataclasses import replace

from mail2ticket.parse import ParsedMail
from mail2ticket.text.html import html_to_text
from mail2ticket.text.quotes import new_text


def body_text(parsed: ParsedMail) -> str:
    """The text part; for an HTML-only mail its HTML as text."""
    if parsed.body is not None:
        return parsed.body
    if parsed.text.strip():
        return parsed.text
    if parsed.html:
        return html_to_text(parsed.html)
    return ""


def body_new_text(parsed: ParsedMail, full: str) -> str:
    """The new text of `full`, the mail's body (or a text standing in for it)."""
    if parsed.body_new_text is not None and full is parsed.body:
        return parsed.body_new_text
    return new_text(full) if full.strip() else ""


def with_body(parsed: ParsedMail) -> ParsedMail:
    """`parsed` with its body and new text worked out; unchanged if that fails (processing tries again)."""
    try:
        body = body_text(parsed)
        return replace(parsed, body=body, body_new_text=new_text(body) if body.strip() else "")
    except Exception:  # noqa: BLE001 - the processing thread repeats it and decides the outcome
        return parsed
