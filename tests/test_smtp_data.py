"""The block-wise DATA reader ends, un-stuffs and refuses mail exactly like aiosmtpd's line-by-line reader."""

from __future__ import annotations

import asyncio
import random

import pytest

from mail2ticket.ingress.smtp_data import read_data

LINE_LIMIT = 1001


def line_by_line(stream: bytes, size_limit: int | None) -> tuple[bytes | str, bytes]:
    """aiosmtpd 1.4.6's rules, spelled out: (message or the 500/552 code, what follows the terminator)."""
    pos, lines, num, error = 0, [], 0, None
    while True:
        end = stream.find(b"\r\n", pos)
        assert end >= 0, "the generated streams always end with a terminator"
        line, pos = stream[pos:end + 2], end + 2
        if line == b".\r\n":
            break
        num += len(line)
        if error is None and len(line) > LINE_LIMIT:
            error = "500"
        if error is None and size_limit and num > size_limit:
            error = "552"
        lines.append(line)
    if error is not None:
        return error, stream[pos:]
    return b"".join(line[1:] if line[:1] == b"." else line for line in lines), stream[pos:]


async def blockwise(stream: bytes, pieces: list[int], size_limit: int | None) -> tuple[bytes | str, bytes]:
    """The reader's result when the stream arrives in `pieces` (then the rest): each piece is fed only once the
    reader has taken everything before it, so every piece boundary is a boundary between two reads."""
    reader = asyncio.StreamReader(limit=LINE_LIMIT)
    done = False

    async def arrive() -> None:
        pos = 0
        for size in [*pieces, len(stream)]:
            while len(reader._buffer) and not done:  # type: ignore[attr-defined]  # until the reader took it all
                await asyncio.sleep(0)
            reader.feed_data(stream[pos:pos + size])
            pos += size
        reader.feed_eof()

    feeding = asyncio.ensure_future(arrive())
    result = await read_data(reader, line_length_limit=LINE_LIMIT, size_limit=size_limit)
    done = True
    await feeding
    rest = await reader.read()
    return (b"".join(result.parts) if result.error is None else result.error[:3]), rest


def random_stream(rnd: random.Random) -> bytes:
    atoms = [b"Subject: x", b"\r\n", b"\n", b"\r", b".", b"..", b"text", b"\r\n.\n", b"\n.\r\n", b"x" * 700]
    body = b"".join(rnd.choice(atoms) for _ in range(rnd.randint(0, 40)))
    if not body.endswith(b"\r\n") and body:
        body += b"\r\n"
    return body + b".\r\n" + rnd.choice([b"", b"QUIT\r\n", b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n"])


@pytest.mark.parametrize("seed", range(400))
def test_block_reader_matches_the_line_reader(seed: int) -> None:
    rnd = random.Random(seed)
    stream = random_stream(rnd)
    pieces = [rnd.randint(1, 300) for _ in range(rnd.randint(0, 10))]
    size_limit = rnd.choice([None, None, 2000, 50])
    expected = line_by_line(stream, size_limit)
    got = asyncio.run(blockwise(stream, pieces, size_limit))
    if isinstance(expected[0], str) and isinstance(got[0], str):
        assert {expected[0], got[0]} <= {"500", "552"}  # both refused; which code wins when both apply may differ
        assert got[1] == expected[1]
    else:
        assert got == expected


def test_a_large_attachment_is_read_whole_and_split_into_parts() -> None:
    line = b"QUJD" * 19 + b"\r\n"
    body = b"Subject: gross\r\n\r\n" + line * 40_000 + b"..dot\r\n"
    got, rest = asyncio.run(blockwise(body + b".\r\nQUIT\r\n", [65_536] * 3, None))
    assert got == body.replace(b"\r\n..dot", b"\r\n.dot")
    assert rest == b"QUIT\r\n"


@pytest.mark.parametrize("cut", range(1, 8))
def test_a_terminator_split_between_two_reads_after_dot_free_data_ends_the_message(cut: int) -> None:
    """An attachment's base64 has no dot until the terminator: the search for the terminator starts at the first
    dot, also when that dot came in an earlier read than the rest of the terminator, or with a stuffed line."""
    body = b"Subject: x\r\n\r\n" + b"QUJD" * 19 + b"\r\n" + b"QUJD" * 19 + b"\r\n"
    for tail in (b"", b"..\r\n", b"..dot\r\n"):
        stream = body + tail + b".\r\nQUIT\r\n"
        expected = line_by_line(stream, None)
        assert asyncio.run(blockwise(stream, [len(body + tail) - 2 + cut], None)) == expected


def test_a_line_over_the_limit_without_any_crlf_is_refused_not_buffered() -> None:
    stream = b"x" * 5_000_000 + b"\r\n.\r\n"
    got, rest = asyncio.run(blockwise(stream, [100_000] * 10, None))
    assert got == "500" and rest == b""


@pytest.mark.parametrize("filler", [b"z", b"zz\n", b"z\r"])
@pytest.mark.parametrize("length", [LINE_LIMIT - 1, LINE_LIMIT, LINE_LIMIT + 1, 3 * LINE_LIMIT])
@pytest.mark.parametrize("offset", [0, 1, 250, 499, 500, 777])
def test_a_line_at_the_limit_among_short_ones_is_judged_exactly(filler: bytes, length: int, offset: int) -> None:
    """A line of exactly the limit (CRLF included) passes and one byte more is refused, wherever it sits and
    whatever bare CRs and LFs it holds; the lines around it are short, as in an attachment."""
    short = b"y" * 74 + b"\r\n"
    long_line = (filler * length)[: length - 2] + b"\r\n"
    stream = b"x" * offset + b"\r\n" + short * 40 + long_line + short * 40 + b".\r\nQUIT\r\n"
    expected = line_by_line(stream, None)
    assert (expected[0] == "500") == (length > LINE_LIMIT)
    assert asyncio.run(blockwise(stream, [], None)) == expected
