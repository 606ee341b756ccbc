"""The latency ladder spans 50 ms to 10 minutes and is fine where LLM answers fall."""

from __future__ import annotations

from itertools import pairwise

from zai_proxy.proxy.buckets import FINE_ERROR, FINE_RANGE, LATENCY_BUCKETS


def test_the_ladder_rises_from_a_millisecond_past_ten_minutes() -> None:
    assert list(LATENCY_BUCKETS) == sorted(set(LATENCY_BUCKETS))
    assert LATENCY_BUCKETS[0] <= 0.001
    assert 0.05 in LATENCY_BUCKETS
    assert LATENCY_BUCKETS[-1] >= 600


def test_bounds_between_one_second_and_two_minutes_are_within_the_stated_error() -> None:
    low, high = FINE_RANGE
    inside = [(a, b) for a, b in pairwise(LATENCY_BUCKETS) if low <= a and b <= high]
    assert inside[0][0] == low and inside[-1][1] == high
    assert high >= 120
    assert max(b / a - 1 for a, b in inside) <= FINE_ERROR < 0.1


def test_no_bucket_from_fifty_milliseconds_up_is_wider_than_a_quarter() -> None:
    assert all(b / a <= 1.25 for a, b in pairwise(LATENCY_BUCKETS) if a >= 0.05)
