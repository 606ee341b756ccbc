"""Told limits: the rate an upstream states in its headers, read as requests per second."""

from __future__ import annotations

import pytest

from zai_proxy.proxy.told_limits import told_rate


@pytest.mark.parametrize(
    ("headers", "rate"),
    [
        ([(b"RateLimit-Policy", b"100;w=60")], 100 / 60),
        ([(b"ratelimit-policy", b"10;w=1, 1000;w=3600")], 10.0),  # the first policy
        ([(b"x-ratelimit-limit-requests", b"120")], 2.0),  # OpenAI: per minute
        ([(b"anthropic-ratelimit-requests-limit", b"50")], 50 / 60),
        # The draft's policy wins over a per-minute count.
        ([(b"x-ratelimit-limit-requests", b"120"), (b"RateLimit-Policy", b"5;w=1")], 5.0),
        ([(b"RateLimit-Policy", b"100"), (b"x-ratelimit-limit-requests", b"60")], 1.0),
        ([(b"x-ratelimit-limit-tokens", b"100000")], None),  # tokens are not requests
        ([(b"x-ratelimit-limit-requests", b"-3")], None),
        ([(b"x-ratelimit-limit-requests", b"many")], None),
        ([(b"RateLimit-Policy", b"100;w=0")], None),
        ([(b"content-type", b"application/json")], None),
        ([], None),
    ],
)
def test_the_rate_an_upstream_states(
    headers: list[tuple[bytes, bytes]], rate: float | None
) -> None:
    assert told_rate(headers) == (pytest.approx(rate) if rate is not None else None)
