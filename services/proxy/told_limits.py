"""The request rate an upstream states in its answers' headers: a told limit needs no
learning (the limiter holds just below it and does not probe above it).

Read, in this order:

- the IETF draft's ``RateLimit-Policy: 100;w=60`` (requests per window of ``w`` seconds);
- OpenAI's ``x-ratelimit-limit-requests`` (requests per minute);
- Anthropic's ``anthropic-ratelimit-requests-limit`` (requests per minute).

Z.ai sends none of these today. Token limits (``...-tokens``) are not read: admission
counts requests.
"""

from __future__ import annotations

from collections.abc import Iterable

_POLICY = b"ratelimit-policy"
_PER_MINUTE = (b"x-ratelimit-limit-requests", b"anthropic-ratelimit-requests-limit")
_NAMES = frozenset({_POLICY, *_PER_MINUTE})


def told_rate(headers: Iterable[tuple[bytes, bytes]]) -> float | None:
    """Requests per second the headers allow, or None when they say nothing usable."""
    found: dict[bytes, bytes] = {}
    for name, value in headers:
        lowered = name.lower()
        if lowered in _NAMES:
            found[lowered] = value
    if not found:
        return None
    if _POLICY in found:
        rate = _policy(found[_POLICY])
        if rate is not None:
            return rate
    for name in _PER_MINUTE:
        if name in found:
            count = _positive(found[name])
            if count is not None:
                return count / 60.0
    return None


def _policy(value: bytes) -> float | None:
    """``q;w=seconds`` (the first policy of a list)."""
    first = value.split(b",", 1)[0]
    quota, *params = (part.strip() for part in first.split(b";"))
    count = _positive(quota)
    window = None
    for param in params:
        key, _, raw = param.partition(b"=")
        if key.strip() == b"w":
            window = _positive(raw)
    if count is None or window is None:
        return None
    return count / window


def _positive(raw: bytes) -> float | None:
    try:
        value = float(raw.strip().decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return None
    return value if 0 < value < float("inf") else None
