"""Long base64 bodies kept out of the feed parser's line-by-line walk (private helper of ``parse.py``).

The stdlib's feed parser reads a message one line at a time: a 2 MB attachment is 27,000 lines, and such mails
took three quarters of the parse time of the bench corpus. The parser does nothing with a line of base64
characters but append it to the text of the part, preamble or epilogue it is in: such a line holds no colon (it
is no header field, and it ends a header block as any other line of its kind would), no dash (it is no boundary),
no space (it is no "From " line and no continuation). Only the first line of a run can end a header block, and
the token line does that alike. The one place where an empty line means more than a line is a block of
message/delivery-status: a mail with such a part is parsed again whole.

So before the parse each long run of such lines (without its last line break) is swapped for a token line of the
same kind, and after it the token is swapped back in the text that holds it: the tree is the one the stdlib
builds from the whole message. ``tests/test_parse_elide.py`` compares the trees with the stdlib's on the corpora,
on generated mail and on generated structures; ``tests/test_parse_equivalence.py`` compares ``analyse``.
"""

from __future__ import annotations

import email
import os
import re
import string
from dataclasses import dataclass, field
from email.message import EmailMessage, Message
from email.policy import EmailPolicy

MIN_RUN_BYTES = 32 << 10  # shorter runs cost the parser little; mails without one are parsed as they are

_BASE64_CHARS = (string.ascii_letters + string.digits + "+/=").encode()
# base64 characters -> "a", CR and LF kept, anything else -> "#": runs are what lies between two "#".
_CLASSES = bytes(ord("a") if byte in _BASE64_CHARS else byte if byte in b"\r\n" else ord("#") for byte in range(256))
_TOKEN_MARK = "M2Telided"  # base64 characters only, as the lines it stands for
# A token: the mark, the run's number, a nonce per mail. One pattern for every mail keeps re's cache unchurned.
_TOKEN = re.compile(_TOKEN_MARK + "([0-9]+)x([0-9a-f]{12})")


def parse_bytes(raw: bytes, policy: EmailPolicy[EmailMessage]) -> Message:
    """``email.message_from_bytes(raw, policy=policy)``, with the long base64 runs parsed in one piece."""
    skeleton, runs = _elide(raw)
    if runs is None:
        return email.message_from_bytes(raw, policy=policy)
    try:
        msg = email.message_from_bytes(skeleton, policy=policy)
        if _restored(msg, runs):
            return msg
    except Exception:  # noqa: BLE001 - the stdlib's parse of the whole mail decides what a broken mail raises
        pass
    return email.message_from_bytes(raw, policy=policy)


def _elide(raw: bytes) -> tuple[bytes, _Runs | None]:
    """The message with each long run replaced by a token, and the runs; the message itself and None if none."""
    if len(raw) < MIN_RUN_BYTES:
        return raw, None
    # Each stretch between two "#" is looked at once (a search without the leading "#" would start again at
    # every byte of a stretch that is too short), and no copy of it is made.
    stretch = rb"#[^#]{%d,}" % MIN_RUN_BYTES  # compiled once by re's cache
    spans = [span for found in re.finditer(stretch, raw.translate(_CLASSES))
             if (span := _run_in(raw, found.start() + 1, found.end())) is not None]
    if not spans:
        return raw, None
    nonce = os.urandom(6).hex()
    pieces: list[bytes] = []
    runs: list[str] = []
    done = 0
    for number, (start, end) in enumerate(spans):
        pieces += (raw[done:start], f"{_TOKEN_MARK}{number}x{nonce}".encode())
        runs.append(str(memoryview(raw)[start:end], "ascii"))  # decoded from raw itself, not from a slice's copy
        done = end
    pieces.append(raw[done:])
    skeleton = b"".join(pieces)
    # Each token once and in order, and no other text of their shape, or the mail itself holds one: parse it whole.
    if _TOKEN.findall(skeleton.decode("ascii", "replace")) != [(str(n), nonce) for n in range(len(runs))]:
        return raw, None
    return skeleton, _Runs(runs)


def _run_in(raw: bytes, start: int, end: int) -> tuple[int, int] | None:
    """Within raw[start:end] (base64 characters, CR and LF only), the whole lines from the first non-empty line
    start on to the end of the last non-empty whole line; None when that is short.

    The first line may begin before `start` (with other characters), and the last may go on after `end`: both
    are left out. Every position right after a CR or LF is a line start.
    """
    first_break = min((found for found in (raw.find(b"\n", start, end), raw.find(b"\r", start, end)) if found >= 0),
                      default=-1)
    if first_break < 0:
        return None
    run_start = first_break
    while run_start < end and raw[run_start] in b"\r\n":
        run_start += 1
    run_end = end
    if raw[run_end - 1] not in b"\r\n":  # the last line goes on after the run: it ends at the previous break
        run_end = max(raw.rfind(b"\n", run_start, end), raw.rfind(b"\r", run_start, end))
        if run_end < 0:
            return None
    while run_end > run_start and raw[run_end - 1] in b"\r\n":
        run_end -= 1
    if run_end - run_start < MIN_RUN_BYTES:
        return None
    return run_start, run_end


def _restored(msg: Message, runs: _Runs) -> bool:
    """Put each run back where its token ended up: a part's text, or a multipart's preamble or epilogue. False
    (the caller parses the whole mail) where that might not give the stdlib's tree: a token not found once, a
    message/delivery-status part, or a token in a text that also holds other than ASCII (the parser may have
    decoded such a text by its charset, which might have read the run differently)."""
    for part in msg.walk():
        if part.get_content_type() == "message/delivery-status":
            return False
        # The text as parsed, not `get_payload()`, which decodes a text holding 8-bit bytes; `set_payload` of a
        # str without a charset stores it as it is.
        payload = vars(part).get("_payload")
        if isinstance(payload, str) and _TOKEN_MARK in payload:
            if not payload.isascii():
                return False
            part.set_payload(runs.put_back(payload))
        if part.preamble is not None and _TOKEN_MARK in part.preamble:
            part.preamble = runs.put_back(part.preamble)
        if part.epilogue is not None and _TOKEN_MARK in part.epilogue:
            part.epilogue = runs.put_back(part.epilogue)
    return sorted(runs.found) == list(range(len(runs.texts)))


@dataclass
class _Runs:
    """The runs taken out, by number (the skeleton holds no other text of a token's shape)."""

    texts: list[str]
    found: list[int] = field(default_factory=list)

    def put_back(self, text: str) -> str:
        """`text` with its tokens replaced by their runs, in one pass (a mail may hold hundreds of runs)."""
        return _TOKEN.sub(self._run, text)

    def _run(self, token: re.Match[str]) -> str:
        number = int(token.group(1))
        self.found.append(number)
        return self.texts[number]
