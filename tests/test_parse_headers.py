"""The header values rules and `check-rule` see: decoded, whatever way the sender folded them.

Mailers fold long header fields over several lines (Outlook folds a To with an encoded display name before the
address). A rule on `header:to` or `header:content-type` must see the same text either way.
"""

from __future__ import annotations

from mail2ticket.parse import Limits, parse, parse_reference

FOLDED = (b"From: =?utf-8?q?J=C3=BCrgen_M=C3=BCller?=\r\n <j.mueller@example.org>\r\n"
          b"To: =?utf-8?q?B=C3=BCrgerb=C3=BCro?=\r\n <buergerbuero@stadt.example>\r\n"
          b"Subject: Antrag\r\nMessage-ID: <folded@example.org>\r\nMIME-Version: 1.0\r\n"
          b"Content-Type: text/plain;\r\n charset=\"utf-8\"\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
          b"Guten Tag\r\n")
UNFOLDED = (b"From: =?utf-8?q?J=C3=BCrgen_M=C3=BCller?= <j.mueller@example.org>\r\n"
            b"To: =?utf-8?q?B=C3=BCrgerb=C3=BCro?= <buergerbuero@stadt.example>\r\n"
            b"Subject: Antrag\r\nMessage-ID: <folded@example.org>\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: text/plain; charset=\"utf-8\"\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
            b"Guten Tag\r\n")


def test_folded_address_and_content_type_fields_decode_like_unfolded_ones() -> None:
    for parser in (parse, parse_reference):
        folded, unfolded = parser(FOLDED, Limits()), parser(UNFOLDED, Limits())
        assert folded.header("to") == unfolded.header("to") == ("Bürgerbüro <buergerbuero@stadt.example>",)
        assert folded.header("from") == ("Jürgen Müller <j.mueller@example.org>",)
        assert folded.header("content-type") == unfolded.header("content-type") == ('text/plain; charset="utf-8"',)
        assert not [d for d in folded.defects if d.startswith("HeaderError")]
        assert (folded.from_name, folded.to) == ("Jürgen Müller", ("buergerbuero@stadt.example",))
