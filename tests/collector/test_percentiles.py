"""Percentiles from cumulative buckets agree with Prometheus's histogram_quantile."""

from __future__ import annotations

import math
from bisect import bisect_left

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zai_proxy.collector.percentiles import merge_buckets, quantile, thin_buckets

INF = math.inf
# 10 requests up to 0.1 s, 20 more up to 0.5 s, 10 more up to 1 s.
SIMPLE = {0.1: 10.0, 0.5: 30.0, 1.0: 40.0, INF: 40.0}


@pytest.mark.parametrize(
    ("buckets", "q", "expected"),
    [
        # Linear inside the bucket that holds the rank q x 40.
        (SIMPLE, 0.5, 0.1 + 0.4 * (10 / 20)),
        (SIMPLE, 0.95, 0.5 + 0.5 * (8 / 10)),
        (SIMPLE, 1.0, 1.0),
        # The lowest bucket starts at 0.
        (SIMPLE, 0.1, 0.1 * (4 / 10)),
        (SIMPLE, 0.25, 0.1),
        (SIMPLE, 0.0, 0.0),
        # A rank in the +Inf bucket answers the highest finite bound.
        ({0.1: 5.0, 1.0: 8.0, INF: 10.0}, 0.9, 1.0),
        ({0.1: 5.0, 1.0: 8.0, INF: 10.0}, 0.99, 1.0),
        # A lowest bound at or below 0 is the answer in the lowest bucket.
        ({-1.0: 5.0, 0.0: 5.0, 1.0: 10.0, INF: 10.0}, 0.2, -1.0),
        ({0.0: 4.0, 1.0: 8.0, INF: 8.0}, 0.25, 0.0),
        # A count that goes down is lifted to the running maximum: (10, 10, 20, 20).
        ({0.1: 10.0, 0.5: 5.0, 1.0: 20.0, INF: 20.0}, 0.5, 0.1),
        ({0.1: 10.0, 0.5: 5.0, 1.0: 20.0, INF: 20.0}, 0.75, 0.5 + 0.5 * (5 / 10)),
        # A difference of float noise is no difference (else the answer would be ~0.5).
        ({0.1: 10.0, 0.5: 10.000000000001, 1.0: 10.0, INF: 10.0}, 1.0, 0.1),
        # Order of the mapping does not matter.
        ({INF: 40.0, 1.0: 40.0, 0.1: 10.0, 0.5: 30.0}, 0.5, 0.3),
        # Out of range q, as Prometheus: -Inf and +Inf.
        (SIMPLE, -0.1, -INF),
        (SIMPLE, 1.1, INF),
    ],
)
def test_quantile_matches_hand_computed_values(
    buckets: dict[float, float], q: float, expected: float
) -> None:
    assert quantile(buckets, q) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("buckets", "q"),
    [
        ({}, 0.5),  # no buckets
        ({0.1: 0.0, 1.0: 0.0, INF: 0.0}, 0.5),  # no observations
        ({0.1: 1.0, 1.0: 2.0}, 0.5),  # no +Inf bucket
        ({INF: 5.0}, 0.5),  # fewer than two buckets
        (SIMPLE, math.nan),  # q is NaN
        ({0.1: 0.0, 1.0: 5.0, INF: 5.0}, 0.0),  # Prometheus's 0/0 in an empty lowest bucket
    ],
)
def test_quantile_is_none_where_prometheus_answers_nan(
    buckets: dict[float, float], q: float
) -> None:
    assert quantile(buckets, q) is None


def test_merge_sums_counts_bound_by_bound() -> None:
    a = {0.1: 1.0, 1.0: 3.0, INF: 4.0}
    b = {0.1: 2.0, 1.0: 2.0, INF: 5.0}
    assert merge_buckets(a, b) == {0.1: 3.0, 1.0: 5.0, INF: 9.0}
    assert merge_buckets() == {}
    assert merge_buckets(a, {}) == a


def test_merge_of_different_layouts_stays_cumulative() -> None:
    # The second histogram has no 0.5 bound: by 0.5 it had certainly counted its 0.1 count.
    merged = merge_buckets({0.1: 1.0, 0.5: 2.0, INF: 3.0}, {0.1: 4.0, 1.0: 6.0, INF: 7.0})
    assert merged == {0.1: 5.0, 0.5: 6.0, 1.0: 8.0, INF: 10.0}


BOUNDS = (0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, INF)
observations = st.lists(st.floats(0, 99.99, allow_nan=False), min_size=1, max_size=60)
quantiles = st.floats(0.001, 1.0)
counts = st.lists(st.integers(0, 50).map(float), min_size=2, max_size=10)


def histogram(values: list[float]) -> dict[float, float]:
    """Cumulative buckets of observations, ``le`` inclusive as in Prometheus."""
    return {bound: float(sum(v <= bound for v in values)) for bound in BOUNDS}


def any_buckets(raw: list[float]) -> dict[float, float]:
    """Buckets with arbitrary (even decreasing) counts over the first len(raw) bounds + Inf."""
    bounds = [*BOUNDS[: len(raw) - 1], INF]
    return dict(zip(bounds, raw, strict=True))


@given(counts, quantiles, quantiles)
def test_quantile_grows_with_q(raw: list[float], q1: float, q2: float) -> None:
    buckets = any_buckets(raw)
    low, high = quantile(buckets, min(q1, q2)), quantile(buckets, max(q1, q2))
    if low is not None and high is not None:
        assert low <= high


@given(counts, quantiles)
def test_quantile_stays_within_the_finite_bounds(raw: list[float], q: float) -> None:
    buckets = any_buckets(raw)
    value = quantile(buckets, q)
    finite = [b for b in buckets if b != INF]
    if value is not None:
        assert 0.0 <= value <= max(finite)


@given(observations, observations, quantiles)
def test_merged_quantile_is_within_one_bucket_of_the_true_one(
    a: list[float], b: list[float], q: float
) -> None:
    merged = merge_buckets(histogram(a), histogram(b))
    assert merged == histogram(a + b)
    estimate = quantile(merged, q)
    union = sorted(a + b)
    exact = union[math.ceil(q * len(union)) - 1]
    # The exact value and the estimate share the bucket that holds the rank.
    i = bisect_left(BOUNDS, exact)
    lower, upper = (BOUNDS[i - 1] if i else 0.0), BOUNDS[i]
    assert estimate is not None
    assert lower <= estimate <= upper
    assert abs(estimate - exact) <= upper - lower


def cumulative(increments: list[int]) -> dict[float, float]:
    """Cumulative buckets at 0.1, 0.2, ... and +Inf of per-bucket increments."""
    bounds = [*(round(0.1 * (i + 1), 1) for i in range(len(increments) - 1)), INF]
    running = 0.0
    out = {}
    for bound, increment in zip(bounds, increments, strict=True):
        running += increment
        out[bound] = running
    return out


@given(
    st.lists(st.tuples(st.sampled_from((0, 0, 0, 1, 3)), st.sampled_from((0, 0, 2))), min_size=2),
    quantiles,
)
def test_thinned_buckets_answer_every_quantile_and_merge_as_the_whole_ones(
    pairs: list[tuple[int, int]], q: float
) -> None:
    # Two histograms of one layout, as the proxies of one version export.
    whole = cumulative([a for a, _ in pairs])
    other = cumulative([b for _, b in pairs])
    thin = thin_buckets(whole)
    assert thin.keys() <= whole.keys()
    assert quantile(thin, q) == quantile(whole, q)
    assert quantile(merge_buckets(thin, thin_buckets(other)), q) == pytest.approx(
        quantile(merge_buckets(whole, other), q)
    )


def test_thinning_drops_the_bounds_inside_runs_of_empty_buckets() -> None:
    buckets = {0.1: 0, 0.2: 0, 0.3: 0, 0.4: 5, 0.5: 5, 0.6: 5, 0.7: 6, INF: 6}
    assert thin_buckets(buckets) == {0.3: 0, 0.4: 5, 0.6: 5, 0.7: 6, INF: 6}
