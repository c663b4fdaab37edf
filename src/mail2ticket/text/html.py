"""HTML bodies: readable text and a sanitized copy for display.

Place in the pipeline: the processing stage calls these on the ``text/html`` part of an inbound
message after parsing. ``html_to_text`` gives the article's plain text when a mail has no
``text/plain`` part (and feeds ``quotes.new_text``); ``sanitize_html`` gives the HTML the ticket
UI may show. Both are pure functions; neither fetches anything.

* ``html_to_text`` uses inscriptis (layout-aware: paragraphs, lists, tables) rather than
  regexes, then tidies whitespace and drops invisible filler characters that newsletters use.
* ``sanitize_html`` uses nh3 (ammonia) with an allow-list of formatting tags. Scripts, styles,
  event handlers, ``javascript:`` and other non-allowed URL schemes, CSS ``expression()`` and
  remote images are removed: an ``img`` keeps its ``src`` only for ``cid:`` (inline parts of the
  same mail), so opening a ticket never tells a sender that it was read. Links get
  ``rel="noopener noreferrer nofollow"``.
"""

from __future__ import annotations

import re
from html import unescape

import nh3
from inscriptis import get_text
from inscriptis.css_profiles import CSS_PROFILES
from inscriptis.model.config import ParserConfig

__all__ = ["html_to_text", "sanitize_html"]

_TEXT_CONFIG = ParserConfig(css=CSS_PROFILES["strict"], display_links=False, display_images=False)

# Zero-width and soft-hyphen characters (newsletter preheader padding, word-break hints).
_INVISIBLE = re.compile("[\u00ad\u034f\u180e\u200b\u200c\u200d\u2060\ufeff]")
_MANY_BLANK_LINES = re.compile(r"\n{3,}")

_ALLOWED_TAGS = frozenset(
    {
        "a", "abbr", "b", "blockquote", "br", "caption", "center", "cite", "code", "col",
        "colgroup", "dd", "del", "div", "dl", "dt", "em", "font", "h1", "h2", "h3", "h4", "h5",
        "h6", "hr", "i", "img", "ins", "kbd", "li", "ol", "p", "pre", "q", "s", "small", "span",
        "strike", "strong", "sub", "sup", "table", "tbody", "td", "tfoot", "th", "thead", "tr",
        "tt", "u", "ul",
    }
)  # fmt: skip
# Removed together with their content (nh3 would otherwise keep the inner text).
_DROP_WITH_CONTENT = frozenset(
    {"script", "style", "title", "head", "noscript", "template", "svg", "math", "object", "iframe"}
)
_CELL_ATTRS = {"align", "valign", "colspan", "rowspan", "width"}
_ALLOWED_ATTRIBUTES: dict[str, set[str]] = {
    "*": {"title", "style", "dir", "lang"},
    "a": {"href"},
    "img": {"src", "alt", "width", "height"},
    "td": _CELL_ATTRS,
    "th": _CELL_ATTRS,
    "table": {"width", "align", "border", "cellpadding", "cellspacing"},
    "font": {"color", "size", "face"},
    "ol": {"start", "type"},
    "col": {"span", "width"},
    "colgroup": {"span", "width"},
}
_URL_SCHEMES = frozenset({"http", "https", "mailto", "tel", "cid"})
_STYLE_PROPERTIES = frozenset(
    {
        "color", "background-color", "font-weight", "font-style", "font-size", "font-family",
        "text-decoration", "text-align", "vertical-align", "white-space", "border",
        "border-collapse", "padding", "margin", "width", "height", "line-height",
    }
)  # fmt: skip
# Anything that can run code or load something in a CSS value.
_UNSAFE_CSS = re.compile(r"expression|url\s*\(|javascript:|behavior|-moz-binding|@import|\\", re.IGNORECASE)
_LINK_REL = "noopener noreferrer nofollow"


def html_to_text(html: str) -> str:
    """Render an HTML body as readable plain text (no links, no images, tidy blank lines)."""
    if not html.strip():
        return ""
    try:
        text = get_text(html, _TEXT_CONFIG)
    except Exception:  # noqa: BLE001 - lxml raises many parser errors; a body must never stop processing
        text = unescape(nh3.clean(html, tags=set(), clean_content_tags=set(_DROP_WITH_CONTENT)))
    text = _INVISIBLE.sub("", text).replace("\u00a0", " ")
    text = "\n".join(line.rstrip() for line in text.splitlines())
    return _MANY_BLANK_LINES.sub("\n\n", text).strip()


def _filter_attribute(tag: str, attr: str, value: str) -> str | None:
    if tag == "img" and attr == "src":
        return value if value.strip().lower().startswith("cid:") else None
    if attr == "style" and _UNSAFE_CSS.search(value):
        return None
    return value


def sanitize_html(html: str) -> str:
    """Return ``html`` reduced to safe formatting markup, without scripts or remote content."""
    if not html.strip():
        return ""
    return nh3.clean(
        html,
        tags=set(_ALLOWED_TAGS),
        clean_content_tags=set(_DROP_WITH_CONTENT),
        attributes={tag: set(attrs) for tag, attrs in _ALLOWED_ATTRIBUTES.items()},
        attribute_filter=_filter_attribute,
        url_schemes=set(_URL_SCHEMES),
        link_rel=_LINK_REL,
        strip_comments=True,
        filter_style_properties=set(_STYLE_PROPERTIES),
    )
