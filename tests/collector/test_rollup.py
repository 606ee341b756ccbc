"""Downsampling combines each kind of snapshot field the way its meaning says."""

from __future__ import annotations

import math
from dataclasses import fields
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zai_proxy.collector.percentiles import merge_buckets, quantile
from zai_proxy.collector.rollup import (
    BUCKETS,
    DERIVED,
    GAUGES,
    KEYS,
    LAST,
    MAXIMA,
    OPTIONAL_GAUGES,
    TOTALS,
    bucket_start,
    derive,
    downsample,
)
from zai_proxy.collector.snapshot import ModelFigures, Snapshot

INF = math.inf


@pytest.mark.parametrize(
    ("ts", "seconds", "start"),
    [
        (0.0, 5, 0.0),
        (4.999, 5, 0.0),
        (5.0, 5, 5.0),
        (1795751853.7, 5, 1795751850.0),
        (1795751853.7, 60, 1795751820.0),
        (1795751853.7, 3600, 1795748400.0),
        (-1.0, 5, -5.0),
    ],
)
def test_buckets_start_at_multiples_of_their_length(ts: float, seconds: int, start: float) -> None:
    assert bucket_start(ts, seconds) == start


def test_every_snapshot_field_has_exactly_one_rule() -> None:
    groups = (
        TOTALS,
        DERIVED,
        GAUGES,
        OPTIONAL_GAUGES,
        MAXIMA,
        BUCKETS,
        LAST,
        KEYS,
        ("models", "clients"),
    )
    ruled = [name for group in groups for name in group]
    assert sorted(ruled) == sorted(f.name for f in fields(Snapshot))


def five(ts: float, **values: Any) -> Snapshot:
    """A 5 s snapshot of variant v with the given fields."""
    return Snapshot(ts=ts, seconds=5, variant="v", **values)


def test_totals_are_summed_and_rates_recomputed_from_them() -> None:
    a = five(0, requests_total=10, requests_5xx_total=1, tokens_in_total=100, cost_usd=0.5)
    b = five(5, requests_total=30, requests_5xx_total=3, tokens_in_total=500, cost_usd=0.25)
    out = downsample([a, b], 0, 60)
    assert (out.ts, out.seconds, out.variant) == (0, 60, "v")
    assert out.requests_total == 40
    assert out.cost_usd == 0.75
    # Per second of the 10 s the two points cover, not of the 60 s bucket.
    assert out.requests_per_s == 4.0
    assert out.tokens_in_per_s == 60.0
    assert out.error_ratio == 0.1


def test_the_429_ratio_is_recomputed_from_attempts() -> None:
    # 20 requests, 5 the proxy's own 429s, 10 retries: 25 upstream attempts; 5 upstream 429s.
    a = five(0, requests_total=10, proxy_rate_limited_total=5, upstream_429_frequency_total=2)
    b = five(5, requests_total=10, retries_total=10, upstream_429_concurrency_total=3)
    assert downsample([a, b], 0, 60).upstream_429_ratio == pytest.approx(5 / 25)


def test_percentiles_are_rederived_from_the_summed_buckets() -> None:
    fast = {0.1: 9.0, 1.0: 10.0, INF: 10.0}
    slow = {0.1: 0.0, 1.0: 10.0, INF: 10.0}
    a, b = derive(five(0, latency_buckets=fast)), derive(five(5, latency_buckets=slow))
    out = downsample([a, b], 0, 60)
    assert out.latency_buckets == {0.1: 9.0, 1.0: 20.0, INF: 20.0}
    assert out.latency_p50 == pytest.approx(0.1 + 0.9 * (1 / 11))
    assert out.latency_p99 == pytest.approx(0.1 + 0.9 * (10.8 / 11))
    assert out.ttfb_p50 is None  # no buckets, no percentile


def test_gauges_are_averaged_over_time_and_maxima_kept() -> None:
    a = Snapshot(ts=0, seconds=5, variant="v", in_flight=2, in_flight_max=2, replicas=2)
    b = Snapshot(ts=5, seconds=15, variant="v", in_flight=6, in_flight_max=9, replicas=3)
    out = downsample([a, b], 0, 60)
    assert out.in_flight == (2 * 5 + 6 * 15) / 20
    assert out.in_flight_max == 9
    assert out.replicas == 3


def test_none_able_gauges_ignore_missing_values() -> None:
    a = five(0, limiter_rate=None, limiter_ceiling=None)
    b = five(5, limiter_rate=10.0, limiter_ceiling=None)
    c = five(10, limiter_rate=20.0, limiter_ceiling=None)
    out = downsample([a, b, c], 0, 60)
    assert out.limiter_rate == 15.0
    assert out.limiter_ceiling is None


def test_quota_keeps_the_last_value_of_each_window() -> None:
    later = five(5, quota_used={"5h": 0.4}, quota_reset_at={"5h": 2000.0})
    earlier = five(0, quota_used={"5h": 0.3, "weekly": 0.1}, quota_reset_at={"5h": 1000.0})
    out = downsample([later, earlier], 0, 60)  # order of the input does not matter
    assert out.quota_used == {"5h": 0.4, "weekly": 0.1}
    assert out.quota_reset_at == {"5h": 2000.0}


def test_models_are_merged_model_by_model() -> None:
    a = five(0, models={"glm-4.6": ModelFigures(requests=1, tokens_in=10, cost_usd=0.1)})
    b = five(
        5,
        models={
            "glm-4.6": ModelFigures(requests=2, tokens_out=5, cost_usd=0.2),
            "glm-4.5": ModelFigures(requests=3),
        },
    )
    out = downsample([a, b], 0, 60)
    assert out.models["glm-4.6"] == ModelFigures(
        requests=3,
        tokens_in=10,
        tokens_out=5,
        cost_usd=pytest.approx(0.3),  # type: ignore[arg-type]
    )
    assert out.models["glm-4.5"] == ModelFigures(requests=3)
    assert a.models["glm-4.6"].requests == 1  # inputs untouched


def test_nothing_or_several_variants_cannot_be_downsampled() -> None:
    with pytest.raises(ValueError, match="nothing"):
        downsample([], 0, 60)
    with pytest.raises(ValueError, match="several variants"):
        downsample([five(0), Snapshot(ts=5, seconds=5, variant="w")], 0, 60)


BOUNDS = (0.1, 0.5, 1.0, 5.0, INF)
counts = st.integers(0, 1000).map(float)


@st.composite
def fine_snapshots(draw: st.DrawFn) -> Snapshot:
    """A 5 s snapshot with random totals, latency buckets and gauges."""
    ts = 5.0 * draw(st.integers(0, 11))
    increments = draw(st.lists(st.integers(0, 20), min_size=len(BOUNDS), max_size=len(BOUNDS)))
    cumulative = [float(sum(increments[: i + 1])) for i in range(len(BOUNDS))]
    return derive(
        Snapshot(
            ts=ts,
            seconds=5,
            variant="v",
            requests_total=draw(counts),
            tokens_in_total=draw(counts),
            in_flight=draw(counts),
            latency_buckets=dict(zip(BOUNDS, cumulative, strict=True)),
        )
    )


@given(st.lists(fine_snapshots(), min_size=1, max_size=12))
def test_a_coarse_snapshot_sums_totals_and_rederives_percentiles(group: list[Snapshot]) -> None:
    out = downsample(group, 0, 60)
    covered = 5 * len(group)
    assert out.requests_total == sum(s.requests_total for s in group)
    assert out.requests_per_s == pytest.approx(out.requests_total / covered)
    assert out.in_flight == pytest.approx(sum(s.in_flight for s in group) / len(group))
    merged = merge_buckets(*(s.latency_buckets for s in group))
    assert out.latency_buckets == merged
    assert out.latency_p99 == quantile(merged, 0.99)


@settings(max_examples=40)
@given(st.lists(fine_snapshots(), min_size=12, max_size=12))
def test_rolling_up_in_two_steps_equals_one_step(group: list[Snapshot]) -> None:
    for i, s in enumerate(group):
        s.ts = 5.0 * i
    minutes = [downsample(group[:6], 0, 30), downsample(group[6:], 30, 30)]
    direct, stepped = downsample(group, 0, 60), downsample(minutes, 0, 60)
    assert stepped.requests_total == direct.requests_total
    assert stepped.latency_buckets == direct.latency_buckets
    assert stepped.latency_p95 == direct.latency_p95
    assert stepped.in_flight == pytest.approx(direct.in_flight)
