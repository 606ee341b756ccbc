"""Client entries: weight, class and budgets from the key's options, and the claim a
request makes (a header may lower its class, never raise it)."""

from __future__ import annotations

import pytest

from zai_proxy.limiter.store import Budgets, Claim
from zai_proxy.proxy.auth import ClientKeys, parse_file, parse_inline
from zai_proxy.proxy.clients import PRIORITY_HEADER, budget_exceeded
from zai_proxy.shared.keyfiles import Entry, read_keys

ENTRIES = (
    "ide:ide-key-000001 weight=2,"
    "ci:ci-key-0000002 class=batch rpm=60 concurrent=4 tokens_per_day=2000000,"
    "plain:plain-key-03"
)


def test_options_follow_the_key_inline_and_in_a_file() -> None:
    inline = parse_inline(ENTRIES)
    assert inline["ide"] == Entry("ide-key-000001", {"weight": "2"})
    assert inline["ci"].options == {
        "class": "batch",
        "rpm": "60",
        "concurrent": "4",
        "tokens_per_day": "2000000",
    }
    assert inline["plain"] == Entry("plain-key-03")
    text = "ide ide-key-000001 weight=2  # the team's IDEs\nci ci-key-0000002 class=batch\n"
    assert parse_file(text, "keys.txt") == {
        "ide": Entry("ide-key-000001", {"weight": "2"}),
        "ci": Entry("ci-key-0000002", {"class": "batch"}),
    }


def test_each_client_gets_its_policy_and_each_request_its_claim() -> None:
    keys = ClientKeys(parse_inline(ENTRIES))
    assert keys.claim("ide", []) == Claim("ide", weight=2.0)
    budgets = Budgets(rpm=60, concurrent=4, tokens_per_day=2_000_000)
    assert keys.claim("ci", []) == Claim("ci", rank=1, budgets=budgets)
    # With client keys every client is a flow of its own, options or not.
    assert keys.claim("plain", []) == Claim("plain")


def test_a_request_may_lower_its_class_but_never_raise_it() -> None:
    keys = ClientKeys(parse_inline(ENTRIES))
    lower = [(PRIORITY_HEADER, b"Batch ")]
    raise_ = [(PRIORITY_HEADER, b"interactive")]
    assert keys.claim("ide", lower) == Claim("ide", weight=2.0, rank=1)
    assert keys.claim("ci", raise_) == keys.claim("ci", [])
    assert keys.claim("ide", [(PRIORITY_HEADER, b"urgent")]) == keys.claim("ide", [])


def test_without_client_keys_only_a_lowered_request_claims() -> None:
    keys = ClientKeys({})
    assert keys.claim("anonymous", []) is None  # the limiter's path without clients
    assert keys.claim("anonymous", [(PRIORITY_HEADER, b"batch")]) == Claim("anonymous", rank=1)


@pytest.mark.parametrize(
    ("entry", "says"),
    [
        ("a:abcdefgh1 weight=0", "weight must be a number > 0"),
        ("a:abcdefgh1 weight=lots", "weight must be a number > 0"),
        ("a:abcdefgh1 class=urgent", "class must be one of interactive, batch"),
        ("a:abcdefgh1 rpm=1.5", "rpm must be a whole number >= 1"),
        ("a:abcdefgh1 concurrent=0", "concurrent must be a whole number >= 1"),
        ("a:abcdefgh1 colour=red", "'colour' is not an option"),
        ("a:abcdefgh1 rpm=1 rpm=2", "option 'rpm' is given twice"),
        ("a:weight=2", "expected 'alias key'"),
    ],
)
def test_a_bad_option_is_named_with_its_alias_never_the_key(entry: str, says: str) -> None:
    with pytest.raises(ValueError) as error:
        ClientKeys(parse_inline(entry))
    assert says in str(error.value)
    assert "(a)" in str(error.value)
    assert "abcdefgh1" not in str(error.value)


def test_upstream_keys_take_no_options() -> None:
    with pytest.raises(ValueError, match="nothing after it"):
        read_keys("main:abcdefgh1 weight=2", None, "ZAI_API_KEYS")


def test_a_budget_refusal_says_which_budget_and_when_to_come_back() -> None:
    refusal = budget_exceeded("ci", "rpm", 12.4)
    assert refusal.status == 429
    assert refusal.retry_after == 12.4
    assert "requests per minute" in refusal.message
    assert (b"x-ratelimit-source", b"proxy") in refusal.headers()
