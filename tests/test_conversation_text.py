"""Clean text on tickets: HTML-only mail becomes text, HTML is stored sanitised, winmail.dat is unpacked."""

from __future__ import annotations

import struct
from email.message import EmailMessage
from email.policy import SMTP

from mail2ticket.text.tnef import TNEF_SIGNATURE
from tests.support.app import App
from tests.support.conversation import configure, ingest, mail


def _base(subject: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "Erika Mustermann <erika@example.org>"
    msg["To"] = "buergerbuero@stadt.example"
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{subject.replace(' ', '-')}@example.org>"
    return msg


def test_html_only_mail_becomes_text_and_sanitised_html(app: App) -> None:
    """An HTML-only mail is stored as readable text, quotes removed in new_text, and scripts stripped from HTML."""
    configure(app)
    msg = _base("Nur HTML")
    msg.set_content(
        "<html><body><p>Guten Tag,</p><p>die <b>Laterne</b> vor Nr. 5 ist kaputt.</p>"
        "<script>alert(1)</script><img src=x onerror=alert(2)>"
        "<div>Am 01.11.2026 um 10:00 schrieb Bürgerbüro:</div>"
        "<blockquote><p>Alte Nachricht</p></blockquote></body></html>",
        subtype="html",
    )
    number = str(ingest(app, msg.as_bytes(policy=SMTP))["ticket"])
    article = app.ticket(number)["articles"][0]
    assert "Laterne" in article["text"] and "<b>" not in article["text"]
    assert "Laterne" in article["new_text"] and "Alte Nachricht" not in article["new_text"]
    assert "<script" not in article["html"] and "onerror" not in article["html"] and "<b>Laterne</b>" in article["html"]


def _tnef(name: str, data: bytes) -> bytes:
    def attr(level: int, attr_id: int, payload: bytes) -> bytes:
        return struct.pack("<BII", level, attr_id, len(payload)) + payload + struct.pack("<H", sum(payload) & 0xFFFF)

    out = struct.pack("<IH", TNEF_SIGNATURE, 0x0001)
    out += attr(1, 0x00089006, b"\x00\x00\x01\x00")
    out += attr(2, 0x00069002, b"\x01\x00\xff\xff\xff\xff" + b"\x00" * 8)
    out += attr(2, 0x00018010, name.encode("cp1252") + b"\x00")
    out += attr(2, 0x0006800F, data)
    return out


def test_winmail_dat_is_stored_as_its_real_attachments(app: App) -> None:
    """A TNEF winmail.dat is replaced by the files inside; a broken one is kept as it is."""
    configure(app)
    msg = _base("Outlook Anhang")
    msg.set_content("Anbei der Antrag.\n")
    msg.add_attachment(_tnef("ANTRAG.PDF", b"%PDF-1.4 antrag"), maintype="application", subtype="ms-tnef",
                       filename="winmail.dat")
    msg.add_attachment(b"not tnef at all", maintype="application", subtype="ms-tnef", filename="winmail.dat")
    number = str(ingest(app, msg.as_bytes(policy=SMTP))["ticket"])
    files = app.ticket(number)["articles"][0]["attachments"]
    assert [(f["filename"], f["content_type"], f["size"]) for f in files] == [
        ("ANTRAG.PDF", "application/pdf", 15), ("winmail.dat", "application/ms-tnef", 15)]


def test_attachments_are_stored_once_with_safe_names(app: App) -> None:
    """The same bytes twice share one stored copy; names lose paths and bidi controls."""
    configure(app)
    msg = _base("Zwei Anhaenge")
    msg.set_content("Siehe Anhang.\n")
    msg.add_attachment(b"same", maintype="application", subtype="octet-stream", filename="../../etc/passwd")
    msg.add_attachment(b"same", maintype="application", subtype="octet-stream", filename="rechnung\u202egpj.exe")
    number = str(ingest(app, msg.as_bytes(policy=SMTP))["ticket"])
    files = app.ticket(number)["articles"][0]["attachments"]
    assert len({f["sha256"] for f in files}) == 1
    assert all("/" not in f["filename"] and "\u202e" not in f["filename"] for f in files)


def test_followup_new_text_drops_the_quoted_history(app: App) -> None:
    """A German Outlook reply keeps the full body but its new_text is only the new part."""
    configure(app)
    number = str(ingest(app, mail(message_id="<q1@example.org>"))["ticket"])
    body = ("Danke, das hilft.\n\n-----Ursprüngliche Nachricht-----\nVon: Bürgerbüro <buergerbuero@stadt.example>\n"
            "Gesendet: Montag, 23. November 2026 10:00\nAn: Erika\nBetreff: Frage\n\nAlte Antwort\n")
    ingest(app, mail(subject="AW: Frage", in_reply_to="<q1@example.org>", body=body))
    article = app.ticket(number)["articles"][-1]
    assert "Alte Antwort" in article["text"] and article["new_text"].strip() == "Danke, das hilft."
