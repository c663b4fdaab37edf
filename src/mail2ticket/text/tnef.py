"""Decode Outlook's TNEF ``winmail.dat`` into the files it carries.

Place in the pipeline: the processing stage calls ``extract_tnef`` on an
``application/ms-tnef`` part (usually named ``winmail.dat``) and stores the returned files as the
article's attachments instead of the opaque blob; on an error it keeps the blob as it is.

Why our own reader: the maintained Python library (tnefparse) is LGPL-3.0, which this EUPL
project does not take as a dependency, and nothing permissive is maintained on PyPI. The format
is documented in [MS-OXTNEF]; this module reads only what it needs for attachments:

* a stream is the signature ``0x223E9F78``, a 16-bit key, then attributes, each
  ``level:u8, id:u32 (type << 16 | tag), length:u32, data, checksum:u16`` (little endian);
* ``attAttachRendData`` (tag 0x9002) opens a new attachment; ``attAttachTitle`` (0x8010) is its
  short name; ``attAttachData`` (0x800F) its bytes; ``attAttachment`` (0x9005) a MAPI property
  list with ``PR_ATTACH_LONG_FILENAME`` (0x3707), ``PR_ATTACH_FILENAME`` (0x3704),
  ``PR_DISPLAY_NAME`` (0x3001) and, when there is no ``attAttachData``, the bytes in
  ``PR_ATTACH_DATA_BIN/OBJ`` (0x3701);
* ``attOemCodepage`` (0x9007) gives the code page of 8-bit strings (default windows-1252).

The message body (RTF) and the message-level properties are ignored. The reader is bounded
(``max_files``, ``max_bytes``) and never raises: it returns what it read plus an error string.
Names are returned as found (possibly empty); pass them through ``filenames.display_filename``.
An attached Outlook message (attach method 5) comes back as the embedded TNEF stream itself
(starting with the signature), so a caller may run ``extract_tnef`` on it again.
"""

from __future__ import annotations

import codecs
import struct
from dataclasses import dataclass

__all__ = ["TNEF_SIGNATURE", "TnefFile", "extract_tnef"]

TNEF_SIGNATURE = 0x223E9F78

_LVL_ATTACHMENT = 0x02
_ATT_ATTACH_DATA = 0x800F
_ATT_ATTACH_TITLE = 0x8010
_ATT_ATTACH_REND_DATA = 0x9002
_ATT_ATTACHMENT = 0x9005
_ATT_OEM_CODEPAGE = 0x9007

_PR_DISPLAY_NAME = 0x3001
_PR_ATTACH_DATA = 0x3701
_PR_ATTACH_FILENAME = 0x3704
_PR_ATTACH_METHOD = 0x3705
_ATTACH_EMBEDDED_MSG = 5
_PR_ATTACH_LONG_FILENAME = 0x3707

_PT_STRING8 = 0x001E
_PT_UNICODE = 0x001F
_PT_BINARY = 0x0102
_PT_OBJECT = 0x000D
_PT_LONG = 0x0003
_MV_FLAG = 0x1000
_VARIABLE_TYPES = frozenset({_PT_STRING8, _PT_UNICODE, _PT_BINARY, _PT_OBJECT})
_FIXED_SIZES = {
    0x0001: 0,  # PT_NULL
    0x0002: 4,  # PT_SHORT, padded
    0x0003: 4,  # PT_LONG
    0x0004: 4,  # PT_FLOAT
    0x0005: 8,  # PT_DOUBLE
    0x0006: 8,  # PT_CURRENCY
    0x0007: 8,  # PT_APPTIME
    0x000A: 4,  # PT_ERROR
    0x000B: 4,  # PT_BOOLEAN, padded
    0x0014: 8,  # PT_I8
    0x0040: 8,  # PT_SYSTIME
    0x0048: 16,  # PT_CLSID
}
_MAX_VALUES = 100_000  # a property claiming more values than this is corrupt


@dataclass(frozen=True)
class TnefFile:
    """One attachment found in a TNEF stream."""

    name: str
    data: bytes


class _TnefError(Exception):
    """The stream is corrupt at a known place."""


@dataclass
class _Attachment:
    title: str = ""
    long_name: str = ""
    filename: str = ""
    display_name: str = ""
    data: bytes | None = None
    prop_data: bytes | None = None
    method: int = 0

    def name(self) -> str:
        return self.long_name or self.filename or self.title or self.display_name

    def content(self) -> bytes | None:
        # An embedded message's attAttachData is a stub; the message is in PR_ATTACH_DATA_OBJ.
        if self.method == _ATTACH_EMBEDDED_MSG and self.prop_data is not None:
            return self.prop_data
        return self.data if self.data is not None else self.prop_data


class _Reader:
    """Bounds-checked little-endian reads over a byte buffer."""

    def __init__(self, data: bytes, pos: int = 0) -> None:
        self.data = data
        self.pos = pos

    def remaining(self) -> int:
        return len(self.data) - self.pos

    def take(self, size: int) -> bytes:
        if size < 0 or size > self.remaining():
            raise _TnefError(f"truncated at offset {self.pos} (wanted {size} bytes)")
        chunk = self.data[self.pos : self.pos + size]
        self.pos += size
        return chunk

    def u8(self) -> int:
        value: int = self.take(1)[0]
        return value

    def u16(self) -> int:
        value: int = struct.unpack("<H", self.take(2))[0]
        return value

    def u32(self) -> int:
        value: int = struct.unpack("<I", self.take(4))[0]
        return value


def extract_tnef(
    data: bytes, *, max_files: int = 100, max_bytes: int = 50_000_000
) -> tuple[list[TnefFile], str | None]:
    """Return the attachments in a TNEF stream and an error string (None when all went well).

    Stops with an error after ``max_files`` files or ``max_bytes`` bytes of file data; what was
    read before any error is returned.
    """
    files: list[TnefFile] = []
    total = 0
    attachments: list[_Attachment] = []
    error: str | None = None
    try:
        _read_stream(data, attachments)
    except _TnefError as exc:
        error = str(exc)
    except Exception as exc:  # noqa: BLE001 - a corrupt attachment must never stop processing
        error = f"unexpected {type(exc).__name__}: {exc}"
    for attachment in attachments:
        content = attachment.content()
        if content is None:
            continue
        if len(files) >= max_files:
            error = error or f"more than {max_files} attachments; the rest were skipped"
            break
        if total + len(content) > max_bytes:
            error = error or f"attachments exceed {max_bytes} bytes; the rest were skipped"
            break
        total += len(content)
        files.append(TnefFile(name=attachment.name(), data=content))
    return files, error


def _read_stream(data: bytes, attachments: list[_Attachment]) -> None:
    reader = _Reader(data)
    if reader.remaining() < 6 or reader.u32() != TNEF_SIGNATURE:
        raise _TnefError("not a TNEF stream (bad signature)")
    reader.u16()  # legacy key
    codepage = "cp1252"
    while reader.remaining() > 0:
        if reader.remaining() < 9:
            raise _TnefError(f"trailing garbage at offset {reader.pos}")
        level = reader.u8()
        attr_id = reader.u32()
        length = reader.u32()
        start = reader.pos
        value = reader.take(length)
        checksum = reader.u16()
        if checksum != sum(value) & 0xFFFF:
            raise _TnefError(f"bad checksum for attribute 0x{attr_id:08x} at offset {start}")
        tag = attr_id & 0xFFFF
        if tag == _ATT_OEM_CODEPAGE and length >= 4:
            codepage = _codec_for(struct.unpack("<I", value[:4])[0])
        elif tag == _ATT_ATTACH_REND_DATA:
            attachments.append(_Attachment())
        elif level == _LVL_ATTACHMENT and attachments:
            _apply(attachments[-1], tag, value, codepage)


def _apply(attachment: _Attachment, tag: int, value: bytes, codepage: str) -> None:
    if tag == _ATT_ATTACH_TITLE:
        attachment.title = _decode8(value, codepage)
    elif tag == _ATT_ATTACH_DATA:
        attachment.data = value
    elif tag == _ATT_ATTACHMENT:
        for prop_id, prop_type, prop_value in _read_props(value, codepage):
            if prop_id == _PR_ATTACH_LONG_FILENAME and isinstance(prop_value, str):
                attachment.long_name = prop_value
            elif prop_id == _PR_ATTACH_FILENAME and isinstance(prop_value, str):
                attachment.filename = prop_value
            elif prop_id == _PR_DISPLAY_NAME and isinstance(prop_value, str):
                attachment.display_name = prop_value
            elif prop_id == _PR_ATTACH_METHOD and isinstance(prop_value, int):
                attachment.method = prop_value
            elif prop_id == _PR_ATTACH_DATA and isinstance(prop_value, bytes):
                # PT_OBJECT values start with the 16-byte interface id of the object.
                attachment.prop_data = prop_value[16:] if prop_type == _PT_OBJECT else prop_value


_PropValue = str | bytes | int | None


def _read_props(data: bytes, codepage: str) -> list[tuple[int, int, _PropValue]]:
    """Parse a MAPI property list; returns (id, type, first value) for each property.

    Only strings, binaries and PT_LONG values are decoded; other values are skipped.
    """
    reader = _Reader(data)
    count = reader.u32()
    props: list[tuple[int, int, _PropValue]] = []
    for _ in range(min(count, _MAX_VALUES)):
        if reader.remaining() <= 0:
            break
        prop_type = reader.u16()
        prop_id = reader.u16()
        if prop_id >= 0x8000:  # named property: GUID, kind, then id or UTF-16 name
            reader.take(16)
            if reader.u32() == 0:
                reader.u32()
            else:
                reader.take(_padded(reader.u32()))
        base_type = prop_type & ~_MV_FLAG
        multi = bool(prop_type & _MV_FLAG)
        first: _PropValue = None
        if base_type in _VARIABLE_TYPES:
            for n in range(_value_count(reader)):
                raw = reader.take(_padded(size := reader.u32()))[:size]
                if n == 0:
                    first = _decode_value(base_type, raw, codepage)
        elif base_type in _FIXED_SIZES:
            values = _value_count(reader) if multi else 1
            raw = reader.take(_FIXED_SIZES[base_type] * values)
            if base_type == _PT_LONG and not multi:
                first = int.from_bytes(raw[:4], "little")
        else:
            raise _TnefError(f"unknown MAPI property type 0x{prop_type:04x}")
        props.append((prop_id, base_type, first))
    return props


def _value_count(reader: _Reader) -> int:
    count = reader.u32()
    if count > _MAX_VALUES:
        raise _TnefError(f"implausible value count {count}")
    return count


def _decode_value(base_type: int, raw: bytes, codepage: str) -> str | bytes:
    if base_type == _PT_UNICODE:
        return raw.decode("utf-16-le", errors="replace").rstrip("\x00")
    if base_type == _PT_STRING8:
        return _decode8(raw, codepage)
    return raw


def _decode8(raw: bytes, codepage: str) -> str:
    return raw.split(b"\x00", 1)[0].decode(codepage, errors="replace")


def _padded(size: int) -> int:
    return (size + 3) & ~3


def _codec_for(codepage: int) -> str:
    name = "utf-8" if codepage == 65001 else f"cp{codepage}"
    try:
        codecs.lookup(name)
    except LookupError:
        return "cp1252"
    return name
