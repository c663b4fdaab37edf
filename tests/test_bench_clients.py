"""The benchmark's SMTP clients stuff the dots before they start the clock, and the server still gets the mail
exactly as smtplib would have delivered it."""

from __future__ import annotations

from bench.clients import send_all, send_paced
from bench.corpus import CorpusMail
from tests.support.smtp_sink import SmtpSink

DOTTED = (b"From: a@example.org\r\nTo: b@example.org\r\nSubject: Punkte\r\nMessage-ID: <dots@example.org>\r\n\r\n"
          b".\r\n..zwei\r\n.eins am Anfang\r\nmitten . drin\r\n.")


def _mail(index: int, raw: bytes) -> CorpusMail:
    return CorpusMail(index=index, kind="new", mail_from="a@example.org", rcpt_to=("b@example.org",),
                      message_id=f"<m{index}@example.org>", raw=raw)


def test_lines_that_start_with_a_dot_arrive_unchanged(smtp_sink: SmtpSink) -> None:
    sent = send_all(smtp_sink.port, [_mail(0, DOTTED)], concurrency=1)
    assert [s.code for s in sent] == [250]
    # aiosmtpd un-stuffs; the missing final CRLF is added on the wire, as smtplib does.
    assert smtp_sink.wait_for(1)[0].raw == DOTTED + b"\r\n"


def test_paced_clients_deliver_every_mail_once(smtp_sink: SmtpSink) -> None:
    mails = [_mail(i, DOTTED.replace(b"<dots@", f"<dots{i}@".encode())) for i in range(6)]
    sent = send_paced(smtp_sink.port, mails, rate=200.0, concurrency=3)
    assert sorted(s.code for s in sent) == [250] * 6
    assert sorted(m.raw for m in smtp_sink.wait_for(6)) == sorted(m.raw + b"\r\n" for m in mails)
