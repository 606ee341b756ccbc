"""The bucket ladders of the proxy's histograms, and the error they allow (ADR 0017).

Request duration and time to first byte share one ladder, so that the two are read on
the same edges: a percentile interpolated inside a bucket ``(a, b]`` is off by less than
``b / a - 1`` of the true value. LLM answers take from 50 ms to 10 minutes, most of them
1-120 s, so the ladder is geometric and finest there:

- up to 50 ms: 1, 2.5, 5, 10, 25 ms (the proxy's own answers, cached or tiny calls);
- 50 ms to 1 s: four bounds per doubling (19% apart);
- 1 s to 128 s: eight bounds per doubling (2^(1/8), 9.1% apart; 9.8% at most once
  rounded to three significant digits);
- 128 s to ~10 min: four per doubling again, up to 609 s.
"""

from __future__ import annotations

import math

# Percentiles inside FINE_RANGE are within this relative error of the truth.
FINE_RANGE = (1.0, 128.0)
FINE_ERROR = 0.098


def significant(value: float, digits: int = 3) -> float:
    """``value`` rounded to ``digits`` significant digits (readable ``le`` labels)."""
    return round(value, digits - 1 - math.floor(math.log10(value)))


def doublings(first: int, last: int, per_doubling: int, step: int = 1) -> list[float]:
    """2^(k / per_doubling) for k in first..last (every ``step``-th), rounded."""
    return [significant(2 ** (k / per_doubling)) for k in range(first, last + 1, step)]


LATENCY_BUCKETS: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    *doublings(-32, 0, 8, step=2),  # 62.5 ms .. 1 s
    *doublings(1, 56, 8),  # 1.09 s .. 128 s
    *doublings(58, 74, 8, step=2),  # 152 s .. 609 s
)
