"""The routing prefilter's parts: case folding and the literals a regex or glob cannot match without."""

from __future__ import annotations

import fnmatch
import re
import string

from hypothesis import HealthCheck, assume, given, settings, strategies as st

from mail2ticket.config.rules import Pattern
from mail2ticket.rules_prefilter import fold, literal_requirements


def test_fold_maps_every_case_insensitive_match_of_an_ascii_character_to_its_lower_case() -> None:
    """Every code point re.IGNORECASE equates with an ASCII character folds to that character (exhaustive)."""
    everything = "".join(chr(c) for c in range(0x110000) if not 0xD800 <= c < 0xE000)
    for c in map(chr, range(128)):
        hits = {m.group() for m in re.compile(re.escape(c), re.IGNORECASE).finditer(everything)}
        assert c in hits
        for hit in hits:
            assert fold(hit) == c.lower(), (c, hit)


def requirements(regex: str | None = None, glob: str | None = None) -> list[set[str]]:
    return [set(r) for r in literal_requirements(Pattern(regex=regex, glob=glob))]


def test_literals_of_typical_rule_patterns() -> None:
    """Runs of ASCII literals are required; an alternation needs one of its branches; optional parts none."""
    assert requirements(r"\bAktenzeichen\s+XY-17\b") == [{"aktenzeichen"}, {"xy-17"}]
    assert requirements(glob="*@Lieferant3.example") == [{"@lieferant3.example"}]
    assert requirements(r"lärm|ruhestörung") == [{"rm", "ruhest"}]
    assert requirements(r"(?:foo)?bar") == [{"bar"}]
    assert requirements(r"a(?:bc){2,}d") == [{"a"}, {"bc"}, {"d"}]
    assert requirements(r"x|[ab]c") == [{"x", "c"}]
    assert requirements(r"x|[ab]") == []  # sre turns this into a class: no literal needed
    assert requirements(r"(?=abc)\w+") == []
    assert requirements(r"(?P<n>ab)(?P=n)") == [{"ab"}]
    assert requirements(r"") == []


regex_pieces = st.sampled_from([
    "a", "b", "s", "k", "i", "K", "S", "I", "ab", "Kunde", "xy-1", "ß", "ü", "ſ", "\u212a", "İ", "ı", ".",
    r"\d", r"\s", r"\b", "^", "$", "[a-c]", "[^x]", r"\w+", "(?:ab|cd)", "(a|b)", "(?:ab)?", "a*", "b+", "c{2,3}",
    "(?:xy){0,2}", "(?>ab)", "a++", "(?=a)", "(?!b)", "(?-i:Ab)", "(?i:k)", ".*?", "(?:s|ſ)", "(?:ik|ki)",
])


@settings(max_examples=400, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(pieces=st.lists(regex_pieces, min_size=1, max_size=6), glob=st.booleans(), data=st.data())
def test_every_match_contains_one_literal_of_every_requirement(pieces: list[str], glob: bool,
                                                               data: st.DataObject) -> None:
    """Whatever text a pattern matches, its folded form contains a literal of each extracted requirement."""
    if glob:
        source = "".join(p for p in pieces if p.isalnum() or p in ("*", "?")) or "a"
        pattern = Pattern(glob=source.replace("+", "*"))
        compiled = re.compile(fnmatch.translate(source.replace("+", "*")), re.IGNORECASE)
    else:
        source = "".join(pieces)
        try:
            compiled = re.compile(source, re.IGNORECASE)
        except re.error:
            assume(False)
            raise
        pattern = Pattern(regex=source)
    text = data.draw(st.from_regex(compiled))
    # Swap in case-insensitive look-alikes hypothesis does not generate by itself.
    swaps = {"s": "ſ", "k": "\u212a", "i": "ı", "I": "İ", "K": "k", "S": "s"}
    mutated = "".join(swaps[c] if c in swaps and data.draw(st.booleans()) else c for c in text)
    for candidate in (text, mutated, text.swapcase()):
        if compiled.search(candidate):
            folded = fold(candidate)
            for req in literal_requirements(pattern):
                assert any(lit in folded for lit in req), (source, candidate, req)


def test_fold_keeps_ascii_text_and_lowercases() -> None:
    assert fold("Hello World") == "hello world"
    assert fold("\u212aunde ſtraße İ") == "kunde straße i"
    assert set(string.ascii_lowercase) == set(fold(string.ascii_letters))
