"""The benchmark corpus: realistic German municipal mail, generated deterministically from a seed.

Every benchmark draws from the same stream, so figures are comparable across benchmarks and runs:

| share | kind         | what it looks like                                                            |
|-------|--------------|-------------------------------------------------------------------------------|
| 72 %  | new          | a citizen writes to Bürgerbüro, Bauamt or Ordnungsamt; RFC 2047 subject       |
| 20 %  | reply        | the citizen answers an earlier mail of theirs (In-Reply-To/References, quote) |
| 5 %   | attachment   | as "new", plus a PDF/JPEG of 100 KB - 2 MB (RFC 2231 file name with umlauts)  |
| 2 %   | auto-reply   | an out-of-office answer (Auto-Submitted: auto-replied)                        |
| 1 %   | html         | HTML-only body (no text/plain part)                                           |

Replies reference the Message-ID of a mail sent at least `REPLY_DISTANCE` messages earlier (so with several
concurrent senders the original has usually been processed already). The daemon's acknowledgements get
Message-IDs the corpus cannot know in advance, so replies reference the citizen's own original instead;
both thread the same way (a stored Message-ID of the ticket).
"""

from __future__ import annotations

import base64
import datetime as dt
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, formataddr
from pathlib import Path

DEFAULT_SEED = 20260108
REPLY_DISTANCE = 40
BASE_DATE = dt.datetime(2026, 1, 5, 7, 30, tzinfo=dt.timezone(dt.timedelta(hours=1)))

QUEUES = {
    "buergerbuero": ("buergerbuero@stadt.example", "Bürgerbüro Musterstadt"),
    "bauamt": ("bauamt@stadt.example", "Bauamt Musterstadt"),
    "ordnungsamt": ("ordnungsamt@stadt.example", "Ordnungsamt Musterstadt"),
}

QUEUES_TOML = "".join(
    f'\n[[queue]]\nname = "{name}"\naddress = "{address}"\ndisplay_name = "{display}"\nstaff = ["@stadt.example"]\n'
    for name, (address, display) in QUEUES.items()
)

FIRST = ["Jürgen", "Günther", "Björn", "Sören", "Käthe", "Jörg", "Anna", "Lukas", "Özlem", "Maximilian", "Sophie",
         "Hans-Peter", "Małgorzata", "Renée", "Fatma", "Ümit", "Heike", "Dieter", "Ingrid", "Thomas"]
LAST = ["Müller", "Schäfer", "Weiß", "Groß", "Köhler", "Bäcker", "Schmidt", "Yılmaz", "Hoffmann", "Krüger",
        "Schröder", "Jäger", "Lößl", "Nowak", "Wagner", "Fuchs", "Böhm", "Kühn", "Öztürk", "Zimmermann"]
PROVIDERS = ["web.de", "gmx.de", "t-online.de", "posteo.de", "mailbox.org", "example.org", "freenet.de"]
STREETS = ["Hauptstraße", "Schloßallee", "Am Mühlbach", "Gärtnerweg", "Königsplatz", "Brückenstraße"]

TOPICS: dict[str, list[tuple[str, str]]] = {
    "buergerbuero": [
        ("Termin für neuen Personalausweis", ("ich möchte einen neuen Personalausweis beantragen, weil mein alter "
          "im März abläuft. Gibt es noch freie Termine in der nächsten Woche? Muss ich ein biometrisches Foto mitbringen?")),
        ("Ummeldung nach Umzug in die {street}", ("wir sind zum Monatsanfang in die {street} {no} gezogen. Können wir "
          "die Ummeldung für die ganze Familie (zwei Erwachsene, zwei Kinder) in einem Termin erledigen?")),
        ("Meldebescheinigung für den Arbeitgeber", ("mein Arbeitgeber benötigt eine erweiterte Meldebescheinigung. "
          "Kann ich diese auch schriftlich beantragen und die Gebühr überweisen?")),
        ("Führungszeugnis – Antrag für Ehrenamt", ("für meine ehrenamtliche Tätigkeit im Sportverein brauche ich ein "
          "erweitertes Führungszeugnis. Die Bestätigung des Vereins liegt vor. Ist der Antrag gebührenfrei?")),
        ("Reisepass abholen – Vollmacht", ("mein Reisepass ist fertig, ich bin aber beruflich verhindert. Darf meine "
          "Ehefrau ihn mit einer Vollmacht abholen, und welche Unterlagen braucht sie?")),
    ],
    "bauamt": [
        ("Bauantrag Carport {street} {no}", ("wir planen einen Carport an der Grundstücksgrenze. Ist dafür eine "
          "Baugenehmigung nötig oder reicht eine Bauanzeige? Der Nachbar hat schriftlich zugestimmt.")),
        ("Einsicht in den Bebauungsplan „Südlich der Mühle“", ("ich würde gern den Bebauungsplan einsehen, bevor wir "
          "das Grundstück kaufen. Sind Geschossflächenzahl und Dachneigung dort festgelegt?")),
        ("Sondernutzung für Gerüst vor der Hausnummer {no}", ("für die Fassadensanierung brauchen wir vom 3. bis "
          "28. des Monats ein Gerüst auf dem Gehweg der {street}. Wie beantrage ich die Sondernutzungserlaubnis?")),
        ("Nachbar errichtet Garage ohne Genehmigung?", ("auf dem Nachbargrundstück wird seit zwei Wochen eine Garage "
          "gebaut, direkt an unserer Grenze. Liegt dafür eine Genehmigung vor? Die Abstandsfläche scheint zu klein.")),
        ("Rückfrage zum Aktenzeichen BA-{no}/2025", ("zu unserem Bauantrag fehlt laut Ihrem Schreiben noch der "
          "Entwässerungsplan. Reicht es, ihn als PDF nachzureichen, oder brauchen Sie ihn in Papierform?")),
    ],
    "ordnungsamt": [
        ("Falschparker blockiert Einfahrt {street}", ("seit gestern Abend blockiert ein Fahrzeug ohne Kennzeichen "
          "unsere Einfahrt in der {street} {no}. Wir kommen nicht vom Grundstück. Bitte kümmern Sie sich darum.")),
        ("Lärmbelästigung durch Baustelle am Sonntag", ("auf der Baustelle neben uns wird auch sonntags ab 7 Uhr "
          "gearbeitet. Ist das erlaubt? Die Nachbarschaft ist sehr verärgert.")),
        ("Genehmigung für Straßenfest im Gärtnerweg", ("wir möchten im Juni ein Straßenfest veranstalten "
          "(ca. 80 Gäste, Grill, Musik bis 22 Uhr). Welche Genehmigungen brauchen wir und bis wann?")),
        ("Illegale Müllablagerung am Waldweg", ("am Waldweg hinter dem Sportplatz liegen seit Tagen Sperrmüll, "
          "Reifen und Farbeimer. Bitte lassen Sie das entfernen, bevor Kinder damit spielen.")),
        ("Verlust des Hundes – Fundmeldung?", ("unser Dackel „Bello“ ist seit Dienstag verschwunden. Wurde beim "
          "Ordnungsamt ein Fundhund gemeldet? Er trägt ein rotes Halsband mit Marke Nr. {no}.")),
    ],
}

FILLER = [
    "Vielen Dank im Voraus für Ihre Mühe.",
    "Ich bin tagsüber unter der unten genannten Telefonnummer erreichbar.",
    "Falls Unterlagen fehlen, geben Sie mir bitte kurz Bescheid, ich reiche sie gern nach.",
    "Leider konnte ich auf Ihrer Internetseite keine Antwort auf meine Frage finden.",
    "Über eine schnelle Rückmeldung würde ich mich sehr freuen, da die Sache etwas eilt.",
    "Die Öffnungszeiten am Donnerstag passen mir leider nicht, weil ich im Schichtdienst arbeite.",
]


@dataclass(frozen=True, slots=True)
class CorpusMail:
    index: int
    kind: str  # new | reply | attachment | auto-reply | html
    mail_from: str
    rcpt_to: tuple[str, ...]
    message_id: str
    raw: bytes  # CRLF line endings, as on the wire


@dataclass(frozen=True, slots=True)
class _Original:
    sender: str
    name: str
    queue: str
    subject: str
    message_id: str
    body: str


def _ascii(text: str) -> str:
    table = str.maketrans({"ä": "ae", "ö": "oe", "ü": "ue", "ß": "ss", "ł": "l", "ı": "i", "é": "e", "Ä": "Ae",
                           "Ö": "Oe", "Ü": "Ue", "Ł": "L", "ğ": "g", " ": "", "-": ""})
    return text.translate(table).lower()


def _kind(rng: random.Random, index: int) -> str:
    roll = rng.random()
    if roll < 0.20 and index >= REPLY_DISTANCE:
        return "reply"
    if roll < 0.25:
        return "attachment"
    if roll < 0.27:
        return "auto-reply"
    if roll < 0.28:
        return "html"
    return "new"


def _base(rng: random.Random, index: int, subject: str, sender: tuple[str, str], to: str,
          message_id: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = formataddr(sender)
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = format_datetime(BASE_DATE + dt.timedelta(minutes=index * 3, seconds=rng.randrange(60)))
    msg["Message-ID"] = message_id
    msg["MIME-Version"] = "1.0"
    if rng.random() < 0.4:
        msg["User-Agent"] = rng.choice(["Mozilla/5.0 Thunderbird/115.6.0", "Microsoft Outlook 16.0", "Roundcube 1.6"])
    return msg


def _body(rng: random.Random, text: str, name: str) -> str:
    street = rng.choice(STREETS)
    paragraphs = [text.format(street=street, no=rng.randrange(1, 120))]
    paragraphs += rng.sample(FILLER, rng.randrange(1, 4))
    if rng.random() < 0.3:
        paragraphs.append(" ".join(rng.choice(FILLER) for _ in range(rng.randrange(3, 12))))
    signature = f"-- \n{name}\n{street} {rng.randrange(1, 120)}\n{rng.randrange(10000, 99999)} Musterstadt"
    return "Sehr geehrte Damen und Herren,\n\n" + "\n\n".join(paragraphs) + \
        f"\n\nMit freundlichen Grüßen\n{name}\n\n{signature}\n"


_PLACEHOLDER = "M2T-BENCH-ATTACHMENT-PAYLOAD"


def _attachment(rng: random.Random, msg: EmailMessage) -> bytes:
    """Add an attachment part with a placeholder payload; returns the base64 lines to splice in."""
    size = rng.randrange(100_000, 2_000_001)
    if rng.random() < 0.5:
        data = b"%PDF-1.4\n" + rng.randbytes(size - 9)
        maintype, subtype = "application", "pdf"
        filename = rng.choice(["Grundriss_Erdgeschoß.pdf", "Lageplan Flurstück 12.pdf", "Vollmacht_Müller.pdf"])
    else:
        data = b"\xff\xd8\xff\xe0" + rng.randbytes(size - 4)
        maintype, subtype = "image", "jpeg"
        filename = rng.choice(["Foto_Einfahrt.jpg", "Müllablagerung Waldweg.jpg", "Schäden_Gehweg.jpg"])
    # The generator writes payload lines in Python (~50 ms per MB); splicing the encoded bytes in is free.
    part = EmailMessage(policy=SMTP)
    part["Content-Type"] = f"{maintype}/{subtype}"
    part.add_header("Content-Disposition", "attachment", filename=filename)
    part["Content-Transfer-Encoding"] = "base64"
    part.set_payload(_PLACEHOLDER + "\r\n")
    msg.make_mixed()
    msg.set_boundary(f"=_m2t_{rng.getrandbits(48):012x}")
    msg.attach(part)
    return base64.encodebytes(data).replace(b"\n", b"\r\n").rstrip(b"\r\n")


def iter_corpus(n: int, seed: int = DEFAULT_SEED, *, attachments: bool = True) -> Iterator[CorpusMail]:
    """Yield `n` mails; the same `(n, seed)` always yields the same bytes (attachments=False drops the 5 %)."""
    rng = random.Random(seed)
    originals: list[_Original] = []
    for index in range(n):
        kind = _kind(rng, index)
        if (kind == "attachment" and not attachments) or (kind == "reply" and len(originals) <= REPLY_DISTANCE // 2):
            kind = "new"
        domain = rng.choice(PROVIDERS)
        message_id = f"<{rng.getrandbits(64):016x}.{index}@{domain}>"
        if kind == "reply":
            orig = originals[rng.randrange(max(0, len(originals) - 400), len(originals) - REPLY_DISTANCE // 2)]
            msg = _base(rng, index, f"AW: {orig.subject}", (orig.name, orig.sender), QUEUES[orig.queue][0], message_id)
            msg["In-Reply-To"] = orig.message_id
            msg["References"] = orig.message_id
            quoted = "\n".join("> " + line for line in orig.body.splitlines())
            msg.set_content(f"Guten Tag,\n\nanbei die erbetene Ergänzung: {rng.choice(FILLER)}\n\n"
                            f"Viele Grüße\n{orig.name}\n\nAm 05.01.2026 schrieb {orig.name}:\n{quoted}\n")
            yield CorpusMail(index, kind, orig.sender, (QUEUES[orig.queue][0],), message_id, msg.as_bytes(policy=SMTP))
            continue
        queue = rng.choice(list(QUEUES))
        first, last = rng.choice(FIRST), rng.choice(LAST)
        name = f"{first} {last}"
        sender = f"{_ascii(first)}.{_ascii(last)}{index}@{domain}"
        if kind == "auto-reply":
            msg = _base(rng, index, f"Automatische Antwort: Ihre Anfrage an das {QUEUES[queue][1]}", (name, sender),
                        QUEUES[queue][0], message_id)
            msg["Auto-Submitted"] = "auto-replied"
            msg["X-Autoreply"] = "yes"
            msg["In-Reply-To"] = f"<{rng.getrandbits(64):016x}@stadt.example>"
            msg.set_content(f"Vielen Dank für Ihre Nachricht. Ich bin bis zum {rng.randrange(2, 28)}.01. "
                            "nicht im Büro und habe nur eingeschränkt Zugriff auf meine E-Mails.\n\n"
                            f"Mit freundlichen Grüßen\n{name}\n")
            yield CorpusMail(index, kind, sender, (QUEUES[queue][0],), message_id, msg.as_bytes(policy=SMTP))
            continue
        subject_tpl, text = rng.choice(TOPICS[queue])
        subject = subject_tpl.format(street=rng.choice(STREETS), no=rng.randrange(1, 120))
        body = _body(rng, text, name)
        msg = _base(rng, index, subject, (name, sender), QUEUES[queue][0], message_id)
        if kind == "html":
            html = "<html><body>" + "".join(f"<p>{p.replace(chr(10), '<br>')}</p>" for p in body.split("\n\n")) + \
                "</body></html>"
            msg.set_content(html, subtype="html")
        else:
            charset = "iso-8859-1" if rng.random() < 0.15 and all(ord(c) < 256 for c in body) else "utf-8"
            msg.set_content(body, charset=charset)
        payload = _attachment(rng, msg) if kind == "attachment" else None
        raw = msg.as_bytes(policy=SMTP)
        if payload is not None:
            raw = raw.replace(_PLACEHOLDER.encode(), payload, 1)
        originals.append(_Original(sender, name, queue, subject, message_id, body))
        yield CorpusMail(index, kind, sender, (QUEUES[queue][0],), message_id, raw)


def generate(n: int, seed: int = DEFAULT_SEED, *, attachments: bool = True) -> list[CorpusMail]:
    return list(iter_corpus(n, seed, attachments=attachments))


_FROM_LINE = re.compile(rb"^(>*From )", re.MULTILINE)


def mbox_entry(mail: CorpusMail) -> bytes:
    """One mboxrd entry: From_ line, LF line endings, ">From " quoting."""
    body = _FROM_LINE.sub(rb">\1", mail.raw.replace(b"\r\n", b"\n"))
    return b"From " + mail.mail_from.encode() + b" Mon Jan  5 07:30:00 2026\n" + body.rstrip(b"\n") + b"\n\n"


def write_mbox(path: Path, mails: Iterator[CorpusMail] | list[CorpusMail]) -> tuple[int, int]:
    """Write an mbox file; returns (messages, bytes)."""
    count = size = 0
    with path.open("wb") as fh:
        for mail in mails:
            entry = mbox_entry(mail)
            fh.write(entry)
            count += 1
            size += len(entry)
    return count, size


def mix(mails: list[CorpusMail]) -> dict[str, int]:
    out: dict[str, int] = {}
    for mail in mails:
        out[mail.kind] = out.get(mail.kind, 0) + 1
    return out
