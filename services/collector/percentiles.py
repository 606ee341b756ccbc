"""Quantiles from cumulative histogram buckets, computed the way Prometheus computes them.

``quantile`` follows ``histogram_quantile`` for classic buckets (``bucketQuantile`` in
prometheus/prometheus ``promql/quantile.go``): linear interpolation inside the bucket that
holds the rank; the lowest bucket starts at 0 (unless its bound is <= 0, then that bound is
the answer); a rank in the +Inf bucket answers the highest finite bound; counts that differ
by a relative 1e-12 are treated as equal, and a count that goes down from one bound to the
next is lifted to the running maximum. Where Prometheus answers NaN (no +Inf bucket, fewer
than two buckets, no observations, q is NaN, or 0/0 for q = 0 over an empty lowest
bucket), this module answers None; q < 0 answers -inf and q > 1 answers +inf, as there.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Mapping

# Relative difference below which two neighbouring counts are one (Prometheus's value).
PRECISION_TOLERANCE = 1e-12


def quantile(buckets: Mapping[float, float], q: float) -> float | None:
    """The q-quantile of cumulative buckets (upper bound → count), or None without one."""
    if math.isnan(q):
        return None
    if q < 0:
        return -math.inf
    if q > 1:
        return math.inf
    if not buckets:
        return None
    bounds = sorted(buckets)
    if not math.isinf(bounds[-1]) or bounds[-1] < 0 or len(bounds) < 2:
        return None
    counts = _monotonic(_without_precision_errors([buckets[b] for b in bounds]))
    observations = counts[-1]
    if observations == 0:
        return None

    rank = q * observations
    # The first bucket (the +Inf one excluded) whose count reaches the rank.
    b = next((i for i in range(len(counts) - 1) if counts[i] >= rank), len(counts) - 1)
    if b == len(counts) - 1:
        return bounds[-2]
    if b == 0 and bounds[0] <= 0:
        return bounds[0]
    start, end, count = 0.0, bounds[b], counts[b]
    if b > 0:
        start = bounds[b - 1]
        count -= counts[b - 1]
        rank -= counts[b - 1]
    if count == 0:
        return None  # q = 0 over an empty lowest bucket: Prometheus's 0/0
    return start + (end - start) * (rank / count)


def merge_buckets(*bucket_maps: Mapping[float, float]) -> dict[float, float]:
    """Cumulative buckets of several histograms summed by upper bound.

    Maps with the same bounds are summed bound by bound. A map that lacks a bound the others
    have contributes its count at its next lower bound (what it certainly held by then), so
    the sum stays cumulative even across differing layouts.
    """
    bounds = sorted({bound for buckets in bucket_maps for bound in buckets})
    merged = dict.fromkeys(bounds, 0.0)
    for buckets in bucket_maps:
        if not buckets:
            continue
        own = sorted(buckets)
        for bound in bounds:
            i = bisect_right(own, bound)
            if i:
                merged[bound] += buckets[own[i - 1]]
    return merged


def thin_buckets(buckets: Mapping[float, float]) -> dict[float, float]:
    """The buckets without the bounds that change no quantile and no merge.

    A bound whose count equals both its neighbours' (the count below the lowest bound is
    0) lies inside a run of empty buckets: no rank falls in either bucket beside it, and
    ``merge_buckets`` gives it back the count of the next lower bound, which is its own.
    Only the quantile at q = 0 of a histogram whose lowest buckets are empty can change
    (Prometheus's 0/0 becomes the lowest kept bound's start, 0).
    """
    bounds = sorted(buckets)
    kept: dict[float, float] = {}
    for i, bound in enumerate(bounds):
        below = buckets[bounds[i - 1]] if i else 0.0
        above = buckets[bounds[i + 1]] if i + 1 < len(bounds) else None
        if not (math.isfinite(bound) and below == buckets[bound] == above):
            kept[bound] = buckets[bound]
    return kept


def _without_precision_errors(counts: list[float]) -> list[float]:
    fixed = counts[:]
    previous = fixed[0]
    for i in range(1, len(fixed)):
        current = fixed[i]
        delta = abs(current - previous)
        if delta == 0:
            continue
        if current != 0 and delta / current <= PRECISION_TOLERANCE:
            fixed[i] = previous
        else:
            previous = current
    return fixed


def _monotonic(counts: list[float]) -> list[float]:
    envelope: list[float] = []
    highest = -math.inf
    for count in counts:
        highest = max(highest, count)
        envelope.append(highest)
    return envelope
