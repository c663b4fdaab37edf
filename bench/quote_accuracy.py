"""Measure how well ``mail2ticket.text.quotes.new_text`` finds the new text of a reply.

Not a test: a benchmark over the third-party fixtures in ``shared/corpora/reply-quote-fixtures``
(crisp-oss, zapier and mailgun/talon, each with an ``expected.json`` transcribed from the upstream
tests). It prints the accuracy per fixture folder and overall. ``tests/test_text_quotes.py`` loads
this file to share the scoring and asserts a minimum accuracy.

Usage::

    .venv/bin/python bench/quote_accuracy.py [CORPORA_DIR] [--languages de,en|all] [--verbose]

Scoring rules (one case = one fixture with its expectations; a case passes when every
expectation that concerns the *new text* holds):

* exact texts (``first_fragment``, ``first_fragment_trimmed``, ``visible_text``, ``reply`` ...)
  are compared after trimming the whole text and the end of each line (``new_text`` returns
  trimmed text);
* regexes (``first_fragment_matches_regex``) use ``re.search`` without flags, like the upstream
  JavaScript tests (``^`` = start of the text);
* ``reply_contains`` / ``reply_not_contains`` are substring checks;
* talon's HTML replies go through ``html_to_text`` first and are compared without any whitespace;
* talon's ``signature/emails/stripped`` samples: the new text must equal the body without its
  signature;
* upstream-internal expectations (fragment counts, quoted/hidden flags, HTML output, timing) say
  nothing about the new text and are not scored; a case with only those is listed as skipped.
"""

from __future__ import annotations

import argparse
import email
import email.policy
import json
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

from mail2ticket.text.html import html_to_text
from mail2ticket.text.quotes import new_text

FIXTURES = "reply-quote-fixtures"
DEFAULT_CORPORA = Path(__file__).resolve().parents[1].parent / "shared" / "corpora"

Extractor = Callable[[str], str]


@dataclass(frozen=True)
class CaseResult:
    """The outcome of one fixture case."""

    folder: str
    fixture: str
    passed: bool | None  # None = nothing in the case concerns the new text
    detail: str = ""


def _norm(text: str) -> str:
    """Trim the text and the end of each line, unify line endings."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return "\n".join(line.rstrip() for line in lines).strip()


def _first_difference(want: str, got: str) -> str:
    pairs = enumerate(zip(want, got, strict=False))
    at = next((i for i, (a, b) in pairs if a != b), min(len(want), len(got)))
    start = max(0, at - 20)
    return f"at {at}: want {want[start : at + 40]!r}, got {got[start : at + 40]!r}"


def _no_ws(text: str) -> str:
    return re.sub(r"\s+", "", text)


def _read_text(path: Path) -> str:
    return path.read_bytes().decode("utf-8", errors="replace")


def _first_plain_part(path: Path) -> str:
    msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    for part in msg.walk():
        if part.get_content_type() == "text/plain" and not part.is_multipart():
            content = part.get_content()
            return content if isinstance(content, str) else ""
    return ""


def _check_expectations(case: dict[str, object], got: str) -> tuple[bool | None, str]:
    """Check every new-text expectation of a crisp/zapier case against ``got``."""
    failures: list[str] = []
    checked = False
    exact_keys = (
        "first_fragment",
        "first_fragment_trimmed",
        "visible_text",
        "visible_text_trimmed",
        "reply",
        "reply_stripped",
        "reply_text_of_first_text_plain_part",
    )
    for key in exact_keys:
        if key in case:
            checked = True
            want = str(case[key])
            if _norm(got) != _norm(want):
                failures.append(f"{key}: {_first_difference(_norm(want), _norm(got))}")
    for pattern in _str_list(case.get("first_fragment_matches_regex")):
        checked = True
        if not re.search(pattern, got):
            failures.append(f"regex {pattern!r} not found in {got[:60]!r}")
    for needle in _str_list(case.get("reply_contains")):
        checked = True
        if needle not in got:
            failures.append(f"missing {needle!r}")
    for needle in _str_list(case.get("reply_not_contains")):
        checked = True
        if needle in got:
            failures.append(f"still contains {needle!r}")
    if not checked:
        return None, "no new-text expectation"
    return not failures, "; ".join(failures)


def _str_list(value: object) -> list[str]:
    if isinstance(value, list):
        return [str(v) for v in value]
    return []


def _load(folder: Path) -> list[dict[str, object]]:
    data = json.loads((folder / "expected.json").read_text(encoding="utf-8"))
    cases = data["cases"]
    assert isinstance(cases, list)
    return cases


def _plain_folder(folder: Path, extract: Extractor) -> Iterator[CaseResult]:
    """crisp and zapier: plain-text bodies with expectations on the first fragment."""
    for case in _load(folder):
        fixture = str(case["fixture"])
        path = folder / fixture
        if not path.is_file():
            yield CaseResult(folder.name, fixture, False, "fixture file missing")
            continue
        got = extract(_read_text(path))
        passed, detail = _check_expectations(case, got)
        yield CaseResult(folder.name, fixture, passed, detail)


def _talon_folder(folder: Path, extract: Extractor) -> Iterator[CaseResult]:
    """mailgun/talon: full .eml replies, HTML replies and signature samples."""
    for case in _load(folder):
        fixture = str(case["fixture"])
        path = folder / fixture
        if "reply_text_of_first_text_plain_part" in case:
            got = extract(_first_plain_part(path))
            passed, detail = _check_expectations(case, got)
            yield CaseResult(folder.name, fixture, passed, detail)
        elif "reply_as_text_ignoring_all_whitespace" in case:
            got = extract(html_to_text(_read_text(path)))
            want = str(case["reply_as_text_ignoring_all_whitespace"])
            ok = _no_ws(got) == _no_ws(want)
            yield CaseResult(folder.name, fixture, ok, "" if ok else f"got {_no_ws(got)[:60]!r}")
        elif fixture == "reply-quotations-share-block.eml":
            got = extract(_first_plain_part(path))
            ok = bool(got.strip()) and "From" not in got
            yield CaseResult(folder.name, fixture, ok, "" if ok else f"got {got[:80]!r}")
        elif fixture == "signature/emails/stripped/*":
            yield from _talon_signatures(folder, path.parent, extract)
        else:
            yield CaseResult(folder.name, fixture, None, "HTML output / unlabelled samples")


def _talon_signatures(folder: Path, stripped: Path, extract: Extractor) -> Iterator[CaseResult]:
    for body_path in sorted(stripped.glob("*_body")):
        name = body_path.name.removesuffix("_body")
        body = _read_text(body_path)
        sig_path = stripped / f"{name}_signature"
        signature = _read_text(sig_path) if sig_path.is_file() else ""
        want = body[: len(body) - len(signature)] if signature and body.endswith(signature) else body
        got = extract(body)
        ok = _norm(got) == _norm(want)
        detail = "" if ok else f"want ...{_norm(want)[-40:]!r}, got ...{_norm(got)[-40:]!r}"
        yield CaseResult(folder.name, f"signature/emails/stripped/{name}", ok, detail)


def evaluate(corpora: Path, extract: Extractor | None = None) -> list[CaseResult]:
    """Run ``extract`` (default: ``new_text``) over every fixture folder and return all outcomes."""
    fn: Extractor = extract if extract is not None else new_text
    root = corpora / FIXTURES
    results: list[CaseResult] = []
    for folder in sorted(p for p in root.iterdir() if (p / "expected.json").is_file()):
        if folder.name == "mailgun-talon":
            results.extend(_talon_folder(folder, fn))
        else:
            results.extend(_plain_folder(folder, fn))
    return results


def summarize(results: Sequence[CaseResult]) -> dict[str, tuple[int, int]]:
    """Passed and scored case counts per folder, plus the key ``"overall"``."""
    summary: dict[str, tuple[int, int]] = {}
    for r in results:
        if r.passed is None:
            continue
        for key in (r.folder, "overall"):
            passed, total = summary.get(key, (0, 0))
            summary[key] = (passed + int(r.passed), total + 1)
    return summary


def accuracy(results: Sequence[CaseResult]) -> float:
    """Overall share of scored cases that passed (0.0 when nothing was scored)."""
    passed, total = summarize(results).get("overall", (0, 0))
    return passed / total if total else 0.0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpora", nargs="?", type=Path, default=DEFAULT_CORPORA)
    parser.add_argument("--languages", default="de,en", help="comma list, or 'all'")
    parser.add_argument("-v", "--verbose", action="store_true", help="list failed and skipped cases")
    args = parser.parse_args(argv)
    if not (args.corpora / FIXTURES).is_dir():
        print(f"no {FIXTURES} under {args.corpora}", file=sys.stderr)
        return 2
    if args.languages == "all":
        from mailparser_reply.constants import MAIL_LANGUAGES

        languages: tuple[str, ...] = tuple(MAIL_LANGUAGES)
    else:
        languages = tuple(x.strip() for x in args.languages.split(",") if x.strip())

    def extract(body: str) -> str:
        return new_text(body, languages=languages)

    results = evaluate(args.corpora, extract)
    summary = summarize(results)
    print(f"languages: {','.join(languages)}")
    for key, (passed, total) in summary.items():
        if key != "overall":
            print(f"{key:32} {passed:3}/{total:3}  {passed / total:6.1%}")
    passed, total = summary.get("overall", (0, 0))
    print(f"{'overall':32} {passed:3}/{total:3}  {passed / total if total else 0:6.1%}")
    skipped = sum(1 for r in results if r.passed is None)
    print(f"(not scored: {skipped} cases whose expectations concern fragment counts or HTML output)")
    if args.verbose:
        for r in results:
            if not r.passed:
                state = "SKIP" if r.passed is None else "FAIL"
                print(f"{state} {r.folder}/{r.fixture}: {r.detail}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
