"""Header objects built once per message (private helper of ``parse.py``).

Place in the pipeline: **parse** -> classify, inside the parse worker. ``policy.default`` builds a fresh header
object (a full RFC 5322 parse) on every ``msg.get(...)``: ``get_content_type``, ``get_param``, ``get_filename``,
``get_payload(decode=True)``, the feed parser itself, classify and flufl.bounce ask for the same Content-Type,
Content-Transfer-Encoding and From fields over and over. :class:`MemoPolicy` is ``policy.default`` with one change:
the header object for a (name, value) pair is built once per message and then handed out again. Header objects are
immutable (a ``str`` with read-only properties over their parse tree), so a reused object cannot be told from a
fresh one; the stdlib never folds or mutates the objects it fetches.

:meth:`MemoPolicy.header_text` is ``str(policy.default.header_factory(name, value))`` with shortcuts for the
common plain values (Received, Subject, Message-ID, Date, ...) whose text follows from the stdlib's parser code
without building a parse tree; ``tests/test_parse_equivalence.py`` checks it against the plain factory for every
header of the corpora.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from email._header_value_parser import AddressList
from email.headerregistry import (
    AddressHeader,
    BaseHeader,
    DateHeader,
    HeaderRegistry,
    MessageIDHeader,
    MIMEVersionHeader,
    UniqueDateHeader,
    UniqueUnstructuredHeader,
    UnstructuredHeader,
)
from email.message import EmailMessage
from email.policy import EmailPolicy
from email.policy import default as default_policy
from email.utils import format_datetime, parsedate_to_datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from typing_extensions import Self

    _Base = EmailPolicy[EmailMessage]
else:
    _Base = EmailPolicy

__all__ = ["MemoPolicy", "new_policy", "unfold"]

# Bounds on what one message may keep alive: a parse tree takes tens of bytes per character of its value, and a
# hostile message can carry a thousand parts with long headers each. Beyond them headers are simply parsed again.
MAX_ENTRIES = 512
MAX_VALUE_CHARS = 8192
MAX_TOTAL_CHARS = 1 << 16

_LINESEP = re.compile(r"\n|\r")  # email.policy.linesep_splitter


def unfold(value: str) -> str:
    """A raw header value without its line breaks, as ``header_fetch_parse`` hands it to the header class."""
    return "".join(_LINESEP.split(value)) if "\n" in value or "\r" in value else value


class _ClassCachingRegistry(HeaderRegistry):
    """``policy.default``'s header registry, minus the new class it creates with ``type()`` for every header."""

    def __init__(self, base: HeaderRegistry) -> None:
        self.registry = base.registry  # the same dict: a map_to_type() on policy.default applies here too
        self.base_class = base.base_class
        self.default_class = base.default_class
        self._classes: dict[tuple[type, type], type[BaseHeader]] = {}

    def __getitem__(self, name: str) -> type[BaseHeader]:
        cls = self.registry.get(name.lower(), self.default_class)
        key = (cls, self.base_class)
        made = self._classes.get(key)
        if made is None:
            made = self._classes[key] = type("_" + cls.__name__, (cls, self.base_class), {})
        return made


@dataclass(slots=True)
class _Memo:
    entries: dict[tuple[str, str], BaseHeader] = field(default_factory=dict)
    chars: int = 0


class MemoPolicy(_Base):
    """``policy.default`` that builds each header object once per message (one instance per message: `new_policy`)."""

    _memo: _Memo

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        object.__setattr__(self, "_memo", _Memo())

    def clone(self, **kw: Any) -> Self:
        copy = super().clone(**kw)
        object.__setattr__(copy, "_memo", _Memo())  # a clone may carry another header_factory
        return copy

    def __getstate__(self) -> dict[str, Any]:
        # deepcopy (flufl's sanitised copy, the generator) and pickle take this: the copy starts with an empty memo.
        return {**self.__dict__, "_memo": _Memo()}

    def header(self, name: str, value: str) -> BaseHeader:
        """``self.header_factory(name, value)``, built at most once per message for the same name and value."""
        key = (name, value)
        memo = self._memo
        found = memo.entries.get(key)
        if found is not None:
            return found
        made: BaseHeader = self.header_factory(name, value)
        size = len(value)
        if size <= MAX_VALUE_CHARS and memo.chars + size <= MAX_TOTAL_CHARS and len(memo.entries) < MAX_ENTRIES:
            memo.entries[key] = made
            memo.chars += size
        return made

    def header_fetch_parse(self, name: str, value: str) -> Any:
        """``EmailPolicy.header_fetch_parse`` (what ``msg[name]`` and ``msg.get`` return), memoised."""
        if hasattr(value, "name"):
            return value
        return self.header(name, unfold(value))

    def address_list(self, name: str, value: str) -> AddressList | None:
        """The parse tree of address header (name, value): ``get_address_list(value)``, which parses until nothing is
        left over; None for other headers or when the header class fails on the value."""
        if type(value) is not str:
            return None
        try:
            header = self.header(name, value)
        except Exception:  # noqa: BLE001 - the caller parses the text itself and meets the same failure there
            return None
        if not isinstance(header, AddressHeader) or type(header).value_parser is not AddressHeader.value_parser:
            return None
        tree = getattr(header, "_parse_tree", None)  # AddressHeader.parse keeps value_parser(value) here
        return tree if isinstance(tree, AddressList) else None

    def header_text(self, name: str, value: str) -> str:
        """``str(policy.default.header_factory(name, value))``; raises what that raises.

        For ASCII values of the header classes in `_SHORTCUTS` the text is worked out without a parse tree, where
        the stdlib's own code shows what it will be (see each function there); anything else takes the header class.
        """
        if type(value) is str and value.isascii():
            shortcut = self._shortcut(name)
            if shortcut is not None and (text := shortcut(value)) is not None:
                return text
        return str(self.header(name, value))

    def _shortcut(self, name: str) -> Callable[[str], str | None] | None:
        factory = self.header_factory
        if not isinstance(factory, HeaderRegistry) or factory.base_class is not BaseHeader:
            return None
        return _SHORTCUTS.get(factory.registry.get(name.lower(), factory.default_class))


# A header object's text is its parse result, with surrogate-escaped 8-bit bytes sanitised: none in ASCII values.
# Each function returns that text for an ASCII value, or None when only the header class can tell.


def _unstructured_text(value: str) -> str | None:
    """``get_unstructured`` tokens concatenate back to their input, except encoded words, which need ``=?``."""
    return value if "=?" not in value else None


_DOT_ATOM_TEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
_PLAIN_MSG_ID = re.compile(f"<{_DOT_ATOM_TEXT}@{_DOT_ATOM_TEXT}>")
_PLAIN_MIME_VERSION = re.compile(r"[0-9]{1,9}\.[0-9]{1,9}")  # int() refuses very long digit strings


def _message_id_text(value: str) -> str | None:
    """``get_msg_id`` on ``<dot-atom-text@dot-atom-text>`` and nothing else: "<", the atext runs and dots, "@", the
    same again, ">" as tokens, nothing left over (no defect text dropped), no CFWS."""
    return value if _PLAIN_MSG_ID.fullmatch(value) else None


def _mime_version_text(value: str) -> str | None:
    """``parse_mime_version`` on ``digits.digits`` (short enough for ``int``): the digit runs and the dot as tokens."""
    return value if _PLAIN_MIME_VERSION.fullmatch(value) else None


def _date_text(value: str) -> str:
    """``DateHeader.parse``: the value when empty or not a date (ValueError), else the date formatted anew;
    other exceptions propagate as they do there."""
    if not value:
        return value
    try:
        moment = parsedate_to_datetime(value)
    except ValueError:
        return value
    return format_datetime(moment)


_SHORTCUTS: dict[type, Callable[[str], str | None]] = {
    UnstructuredHeader: _unstructured_text,
    UniqueUnstructuredHeader: _unstructured_text,
    MessageIDHeader: _message_id_text,
    MIMEVersionHeader: _mime_version_text,
    DateHeader: _date_text,
    UniqueDateHeader: _date_text,
}


def _default_registry() -> HeaderRegistry:
    factory = default_policy.header_factory
    assert isinstance(factory, HeaderRegistry)
    return factory


_REGISTRY = _ClassCachingRegistry(_default_registry())


def new_policy() -> MemoPolicy:
    """A policy for parsing one message: ``policy.default`` plus a fresh header memo."""
    return MemoPolicy(header_factory=_REGISTRY)
