"""The newly written part of a reply: quoted history and signatures removed.

Place in the pipeline: the processing stage stores two texts per article, the full text and
``new_text(full_text)``; staff read the latter in the ticket thread, so a follow-up mail does not
repeat the whole history. A pure function over ``str``.

How it works, in three steps:

1. **Cut the history** (our pre-processing, line based, keeps indentation). The first of these
   marks where the quoted history starts, and everything from there on is dropped:
   an Outlook/Exchange separator (``-----Ursprüngliche Nachricht-----``,
   ``-----Original Message-----``, a line of underscores before a header block), a header block
   (``Von: … Gesendet: … An: …``, ``From: … Sent: …``, French/Dutch/… labels), or an attribution
   line (``Am 03.02.2025 um 10:12 schrieb Erika <e@x.de>:``, ``On … wrote:``; also split over up
   to three lines) that is *not* followed by ``>`` lines. An attribution followed by ``>`` lines
   is a bottom-posted or inline reply: the attribution and the quoted lines that open or close
   the mail are removed, while quoted lines *between* new paragraphs are kept, because inline
   answers make no sense without their questions.
2. **Signatures** with the library mail-parser-reply (MIT; knows German and many other
   languages' greetings such as "Mit freundlichen Grüßen", "Viele Grüße", and its reply headers
   act as a second net for step 1). A "signature" whose greeting line is long, or that spans many
   lines, is probably text and is kept. The ``-- `` separator and mobile footers ("Von meinem
   iPhone gesendet", "Sent from my …") are removed by us.
3. **Never lose a mail**: when nothing is left but the body had content (a mail that is only a
   quote, or a false positive at the top), the whole body, stripped, is returned.

Forwarded messages ("---------- Forwarded message ---------", "Weitergeleitete Nachricht") are
*not* cut: when staff forward a citizen's mail, the forwarded part is the content.
Accuracy on the third-party fixtures is measured by ``bench/quote_accuracy.py``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from mailparser_reply.parser import EmailMessage

__all__ = ["new_text"]

_QUOTE_LINE = re.compile(r"^\s*>")
_SEPARATOR_ONLY = re.compile(r"^[\s=_\-*~#.]+$")
_SIGNATURE_DASHES = re.compile(r"^--\s*$")
_FOOTER_START = re.compile(r"^(?:--|_{2,})\s*$")  # signature or mailing-list footer
_ORIGINAL_MESSAGE = re.compile(
    r"^\s*[-_=*]{2,}\s*(?:Original[- ]?Message|Urspr(?:ü|ue)ngliche Nachricht|Original[- ]?Nachricht|"
    r"Originalnachricht|Oprindelig (?:besked|meddelelse)|Message d'origine|Messaggio originale|"
    r"Mensaje original|Mensagem original|Oorspronkelijk bericht|Opprinnelig melding|"
    r"Ursprungligt meddelande|Alkuperäinen viesti|Wiadomość oryginalna|Исходное сообщение|"
    r"Original)\s*[-_=*]{2,}\s*$",
    re.IGNORECASE,
)
_FORWARD_MARKER = re.compile(
    r"^\s*(?:[-_=*]{2,}\s*)?(?:Forwarded message|Weitergeleitete Nachricht|Message transféré|"
    r"Messaggio inoltrato|Mensaje reenviado|Doorgestuurd bericht|Videresendt meddelelse|"
    r"Begin forwarded message:|Anfang der weitergeleiteten Nachricht:|Début du message réexpédié)",
    re.IGNORECASE,
)
_FROM_LABELS = r"From|Von|De|Da|Van|Från|Fra|Od|Lähettäjä|От|Mittente|Absender|Remitente|Message du|Sender"
_OTHER_LABELS = (
    r"Sent|Gesendet|To|An|Date|Datum|Subject|Betreff|Envoyé|Objet|À|A|Inviato|Oggetto|Verzonden|"
    r"Onderwerp|Aan|Cc|Kopie|Skickat|Till|Ämne|Sendt|Til|Emne|Wysłano|Do|Temat|Lähetetty|"
    r"Vastaanottaja|Aihe|Отправлено|Кому|Тема|Дата|Enviado|Para|Assunto|Asunto|Data|Sujet|"
    r"Copie à|Reply-To|Antwort an|Organisation|Organization"
)
_HEADER_PREFIX = r"^\s*(?:>\s*)*\*{0,2}"
_FROM_HEADER = re.compile(_HEADER_PREFIX + rf"(?:{_FROM_LABELS})\*{{0,2}}\s?:", re.IGNORECASE)
_OTHER_HEADER = re.compile(_HEADER_PREFIX + rf"(?:{_OTHER_LABELS})\*{{0,2}}\s?:", re.IGNORECASE)

# An attribution ("Am … schrieb …:") starts with a date, a weekday or a known opening word ...
_ATTRIBUTION_START = re.compile(
    r"^\s*(?:>\s*)*[-*]*\s*(?:\d|On\b|Am\b|Le\b|El\b|Il\b|In data\b|Op\b|Den\b|Em\b|W dniu\b|Dnia\b|"
    r"Dne\b|På\b|Quoting\b|Zitat von\b|[^\W\d_]{2,4}\.?,?\s+\d|[^\W\d_]{2,12}\.?,\s*\d)",
    re.IGNORECASE,
)
# ... and names the writer (a verb or an address) before a final colon (or a "----" tail).
_WROTE = (
    r"wrote|schrieb|écrit|escribió|scritto|schreef|skrev|napisał|написал|napsal|kirjoitti|"
    r"escreveu|írta|yazdı|napisao"
)
_ATTRIBUTION_END = re.compile(
    rf"(?:(?:{_WROTE}|@)[^\n]{{0,120}}(?::|\s-{{2,}})|\b(?:{_WROTE}))\s*$", re.IGNORECASE
)
_MOBILE_FOOTER = re.compile(
    r"^\s*(?:Sent from|Sent with|Sent via|Get Outlook for|Gesendet (?:von|mit|vom|über)|"
    r"Von meine[mr] .{1,60} gesendet|Diese Nachricht wurde von meinem .{1,80} gesendet|"
    r"Envoyé (?:de|depuis|à partir de|avec)|Inviato da|Enviado (?:desde|do)|Verzonden (?:met|vanaf)|"
    r"Skickat från|Sendt fra|Wysłane z|Отправлено с).{0,80}$",
    re.IGNORECASE,
)
_MAX_ATTRIBUTION_CHARS = 400
_MAX_SIGNATURE_LINES = 20
_MAX_GREETING_CHARS = 50
_MAX_LIBRARY_LINE = 300


def new_text(body: str, *, languages: Sequence[str] = ("de", "en")) -> str:
    """Return the newly written part of ``body`` without quoted history and signature.

    Falls back to the whole body (stripped) when nothing new can be told apart.
    """
    lines = body.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    kept, forwarded = _cut_history(lines)
    kept = _drop_signature(kept)
    text = _library_pass("\n".join(kept), languages)
    text = _tidy("\n".join(_drop_signature(text.split("\n"))))
    if forwarded:
        text = f"{text}\n\n{forwarded}".strip()
    return text if text else body.strip()


def _cut_history(lines: list[str]) -> tuple[list[str], str]:
    """Step 1: drop everything from the first history marker; drop opening/closing quotes.

    Returns the kept lines and, when a forward marker comes first, the forwarded part verbatim.
    """
    kept: list[str] = []
    forwarded = ""
    i = 0
    while i < len(lines):
        if _FORWARD_MARKER.match(lines[i]):
            forwarded = _tidy("\n".join(lines[i:]))
            break
        end = _marker_end(lines, i)
        if end is not None:
            nxt = _next_non_blank(lines, end + 1)
            if nxt is not None and _QUOTE_LINE.match(lines[nxt]):
                i = nxt  # attribution of a bottom-posted or inline quote: drop only the attribution
                continue
            break
        kept.append(lines[i])
        i += 1
    return _drop_outer_quotes(kept), forwarded


def _drop_outer_quotes(lines: list[str]) -> list[str]:
    """Drop the quote that closes the mail, and the one that opens it unless replies are inline."""
    runs = _runs(lines)
    if runs and runs[-1][0]:
        runs.pop()
    elif len(runs) >= 2 and runs[-2][0] and _is_signature_block(runs[-1][1]):
        del runs[-2:]  # quoted mail followed only by the quoted sender's signature
    has_text = [any(line.strip() for line in run) for quoted, run in runs if not quoted]
    inline = sum(1 for quoted, _ in runs if quoted) > 1 or (
        len(runs) >= 3 and not runs[0][0] and runs[1][0] and has_text[0]
    )
    if runs and runs[0][0] and not inline:
        runs.pop(0)
    kept = [line for _, run in runs for line in run]
    while kept and (not kept[-1].strip() or _SEPARATOR_ONLY.match(kept[-1])):
        kept.pop()
    return kept


def _runs(lines: list[str]) -> list[tuple[bool, list[str]]]:
    """Split into alternating (quoted?, lines) runs; blank and wrapped lines stay in a quote run."""
    runs: list[tuple[bool, list[str]]] = []
    for n, line in enumerate(lines):
        quoted = bool(_QUOTE_LINE.match(line))
        if not quoted and runs and runs[-1][0]:
            quoted = not line.strip() or _is_wrapped_quote_line(lines, n)
        if runs and runs[-1][0] == quoted:
            runs[-1][1].append(line)
        else:
            runs.append((quoted, [line]))
    return runs


def _is_wrapped_quote_line(lines: list[str], n: int) -> bool:
    """An unquoted line between quoted ones is a quoted line that the sender's client wrapped."""
    if n == 0 or not _QUOTE_LINE.match(lines[n - 1]):
        return False
    nxt = _next_non_blank(lines, n + 1)
    return nxt is not None and bool(_QUOTE_LINE.match(lines[nxt]))


def _is_signature_block(lines: list[str]) -> bool:
    first = _next_non_blank(lines, 0)
    return first is not None and bool(_FOOTER_START.match(lines[first]))


def _marker_end(lines: list[str], i: int) -> int | None:
    """If a history marker starts at line ``i``, the index of its last line, else None."""
    line = lines[i]
    if not line.strip():
        return None
    if _ORIGINAL_MESSAGE.match(line) or (i > 0 and _MOBILE_FOOTER.match(line)):
        return i
    if _FROM_HEADER.match(line) and _header_follows(lines, i):
        return i
    if _SEPARATOR_ONLY.match(line) and len(line.strip()) >= 10:
        nxt = _next_non_blank(lines, i + 1)
        if (
            nxt is not None
            and nxt - i <= 2
            and _FROM_HEADER.match(lines[nxt])
            and _header_follows(lines, nxt)
        ):
            return i
        return None
    for end in range(i, min(i + 3, len(lines))):
        if not lines[end].strip():
            return None
        if _is_attribution(lines, i, end):
            return end
    return None


def _header_follows(lines: list[str], i: int) -> bool:
    """A "From:" line starts a header block when another header follows within three lines."""
    return any(_OTHER_HEADER.match(line) for line in lines[i + 1 : i + 4])


def _is_attribution(lines: list[str], start: int, end: int) -> bool:
    joined = " ".join(line.strip() for line in lines[start : end + 1])
    return (
        len(joined) <= _MAX_ATTRIBUTION_CHARS
        and _ATTRIBUTION_START.match(joined) is not None
        and _ATTRIBUTION_END.search(joined) is not None
    )


def _next_non_blank(lines: list[str], i: int) -> int | None:
    while i < len(lines):
        if lines[i].strip():
            return i
        i += 1
    return None


def _drop_signature(lines: list[str]) -> list[str]:
    """Cut at a "-- " separator and drop mobile footers at the end."""
    for n, line in enumerate(lines):
        if n > 0 and _SIGNATURE_DASHES.match(line):
            lines = lines[:n]
            break
    while lines and (not lines[-1].strip() or _MOBILE_FOOTER.match(lines[-1])):
        lines = lines[:-1]
    return lines


def _library_pass(text: str, languages: Sequence[str]) -> str:
    """Step 2: let mail-parser-reply split off further headers and the signature.

    Its header regexes take quadratic time on long lines, and a header or greeting is never
    long, so lines over ``_MAX_LIBRARY_LINE`` characters are swapped for placeholders first.
    """
    if not text.strip():
        return text
    lines = text.split("\n")
    long_lines = {
        f"\u27e6{n}\u27e7": line.strip() for n, line in enumerate(lines) if len(line) > _MAX_LIBRARY_LINE
    }
    masked = "\n".join(
        f"\u27e6{n}\u27e7" if len(line) > _MAX_LIBRARY_LINE else line for n, line in enumerate(lines)
    )
    message = EmailMessage(text=masked, languages=list(languages), keep_hyphen_lists=True).read()
    if not message.replies:
        return text
    reply = message.replies[0]
    signature = reply.signatures or ""
    plausible = _plausible_signature(signature) and not any(key in signature for key in long_lines)
    result = reply.body if plausible else reply.full_body
    result = "\n".join(long_lines.get(line, line) for line in result.split("\n"))
    return _restore_indentation(text, result) if result.strip() else text


def _plausible_signature(signature: str) -> bool:
    """A greeting that opens a long line or a long block is probably text, not a signature."""
    if not signature:
        return True
    sig_lines = [line for line in signature.split("\n") if line.strip()]
    greeting = sig_lines[0].lstrip("> ").strip() if sig_lines else ""
    return len(sig_lines) <= _MAX_SIGNATURE_LINES and len(greeting) <= _MAX_GREETING_CHARS


def _restore_indentation(original: str, result: str) -> str:
    """The library strips every line; give back the original lines when it only cut a tail."""
    orig_lines = original.split("\n")
    stripped = [line.strip() for line in orig_lines]
    res_lines = result.split("\n")
    first = next((n for n, line in enumerate(stripped) if line), 0)
    if stripped[first : first + len(res_lines)] == res_lines:
        return "\n".join(orig_lines[first : first + len(res_lines)])
    return result


def _tidy(text: str) -> str:
    lines = [line.rstrip() for line in text.split("\n")]
    while lines and (not lines[-1].strip() or _SEPARATOR_ONLY.match(lines[-1])):
        lines.pop()
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip("\n").rstrip()
