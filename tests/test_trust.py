"""Trust checks: which Authentication-Results count, and what they must say for staff privileges."""

from __future__ import annotations

import pytest

from mail2ticket.config.model import QueueConfig
from mail2ticket.parse import parse
from mail2ticket.pipeline.trust import evaluate_results, is_staff, relay_results

ID = "mx.stadt.example"


def _parsed(*top: str) -> object:
    head = "\r\n".join([*top, "From: Anna <anna@stadt.example>", "To: q@stadt.example", "Subject: x",
                        "Message-ID: <a@stadt.example>"])
    return parse((head + "\r\n\r\nbody\r\n").encode())


@pytest.mark.parametrize(
    ("results", "trusted", "reason"),
    [
        (f"{ID}; dmarc=pass header.from=stadt.example", True, "dmarc_pass"),
        (f"{ID}; dmarc=pass (p=reject) header.from=stadt.example", True, "dmarc_pass"),
        (f"{ID}; dkim=pass header.d=stadt.example; spf=fail", True, "dkim_aligned_pass"),
        (f"{ID}; spf=pass smtp.mailfrom=anna@stadt.example", True, "spf_aligned_pass"),
        (f"{ID}; dkim=pass header.d=evil.example; spf=pass smtp.mailfrom=x@evil.example", False, "no_aligned_pass"),
        (f"{ID}; dmarc=fail header.from=stadt.example; dkim=pass header.d=stadt.example", False, "dmarc_fail"),
        (f"{ID}; dmarc=pass header.from=evil.example", False, "no_aligned_pass"),
        (f"{ID}; none", False, "no_aligned_pass"),
    ],
)
def test_results_need_an_aligned_pass(results: str, trusted: bool, reason: str) -> None:
    """dmarc=pass, or dkim/spf pass aligned with the From domain, authenticates; anything else does not."""
    verdict = evaluate_results(results, "anna@stadt.example")
    assert (verdict.trusted, verdict.reason) == (trusted, reason)


def test_only_the_topmost_trusted_header_counts() -> None:
    """The relay's header on top wins over a forged one below it with the same authserv-id."""
    parsed = _parsed(f"Authentication-Results: {ID}; dmarc=fail", "Received: from x by mx; now",
                     f"Authentication-Results: {ID}; dmarc=pass")
    assert relay_results(parsed, (ID,)) == f"{ID}; dmarc=fail"  # type: ignore[arg-type]


def test_results_inside_the_senders_headers_are_not_read() -> None:
    """An Authentication-Results after the sender's own headers began is never the relay's."""
    head = (f"From: Anna <anna@stadt.example>\r\nAuthentication-Results: {ID}; dmarc=pass\r\n"
            "Subject: x\r\n\r\nbody\r\n")
    assert relay_results(parse(head.encode()), (ID,)) is None


def test_untrusted_authserv_ids_are_skipped() -> None:
    """Headers from other authserv-ids are ignored; without a configured id nothing is trusted."""
    parsed = _parsed("Authentication-Results: other.example; dmarc=pass")
    assert relay_results(parsed, (ID,)) is None  # type: ignore[arg-type]
    assert relay_results(parsed, ()) is None  # type: ignore[arg-type]


def test_staff_by_address_or_domain() -> None:
    """Staff entries are exact addresses or "@domain"; subdomains and look-alikes are not staff."""
    queue = QueueConfig(name="q", address="q@stadt.example", staff=("anna@amt.example", "@stadt.example"))
    assert is_staff(queue, "anna@amt.example") and is_staff(queue, "Bernd@Stadt.example")
    assert not is_staff(queue, "x@evil-stadt.example") and not is_staff(queue, "x@sub.stadt.example")
    assert not is_staff(queue, None)
