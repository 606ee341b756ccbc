"""Outcome classes and ticks: stable names, which classes feed which limit, how a store's
tick reaches the law, and the 429 shares the limiter exports."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from zai_proxy.limiter import controller as law
from zai_proxy.limiter.control import StepResult, tick_of
from zai_proxy.limiter.controller import Decision, Params, Tick
from zai_proxy.limiter.metrics import LimiterMetrics
from zai_proxy.shared.limiter_metrics import WINDOW_429_RATIO, WINDOW_REQUESTS
from zai_proxy.shared.outcomes import Outcome

TICK_SECONDS = 0.25
counts = st.integers(min_value=0, max_value=10_000)
# A store's tick as the proxies report it: any outcome, sent/throttled/capped, extremes.
store_ticks = st.fixed_dictionaries(
    {},
    optional={
        **{outcome.value: counts for outcome in Outcome},
        "sent": counts,
        "throttled": counts,
        "capped": counts,
        "latency_count": counts,
        "ok_at": counts,
        "refused_at": counts,
    },
)


@pytest.mark.parametrize(
    ("outcome", "wire_name"),
    [
        (Outcome.OK, "ok"),
        (Outcome.RATE_FREQUENCY, "rate_frequency"),
        (Outcome.RATE_CONCURRENCY, "rate_concurrency"),
        (Outcome.RATE_QUOTA, "rate_quota"),
        (Outcome.RATE_CONGESTION, "rate_congestion"),
        (Outcome.SERVER_ERROR, "server_error"),
        (Outcome.NETWORK, "network"),
        (Outcome.CLIENT_ERROR, "client_error"),
    ],
)
def test_each_outcome_has_a_stable_wire_name(outcome: Outcome, wire_name: str) -> None:
    assert outcome == wire_name
    assert Outcome(wire_name) is outcome


@pytest.mark.parametrize("outcome", list(Outcome))
def test_only_frequency_429s_feed_the_rate_and_only_1302s_feed_the_cap(outcome: Outcome) -> None:
    tick = tick_of(0, {outcome.value: 3}, TICK_SECONDS)
    # Quota (1308/1310) and congestion (1312) 429s, errors and ok answers feed neither.
    assert tick.limited == (3 if outcome is Outcome.RATE_FREQUENCY else 0)
    assert tick.concurrency_limited == (3 if outcome is Outcome.RATE_CONCURRENCY else 0)
    assert tick.ok == (3 if outcome is Outcome.OK else 0)


def test_a_store_tick_reaches_the_law_with_its_start_counts_and_extremes() -> None:
    # Redis hands counts back as floats.
    stored = {
        "sent": 12.0,
        "throttled": 4.0,
        "capped": 2.0,
        "ok": 9.0,
        "rate_frequency": 1.0,
        "rate_concurrency": 2.0,
        "server_error": 1.0,
        "ok_at": 6.0,
        "refused_at": 7.0,
        "latency_sum": 2.25,
        "latency_count": 9.0,
    }
    assert tick_of(4002, stored, TICK_SECONDS) == Tick(
        start=1000.5,
        sent=12,
        throttled=4,
        ok=9,
        limited=1,
        concurrency_limited=2,
        capped=2,
        ok_at=6,
        refused_at=7,
        latency_sum=2.25,
        latency_count=9,
    )


def test_a_tick_without_counts_is_an_empty_tick_of_its_own() -> None:
    # Ticks without attempts are evidence too (nothing was sent): they reach the law.
    assert tick_of(8, {}, TICK_SECONDS) == Tick(start=2.0)
    assert tick_of(8, {}, TICK_SECONDS).ok_at is None


@given(store_ticks)
def test_every_count_a_proxy_reports_reaches_the_law(stored: dict[str, int]) -> None:
    tick = tick_of(1, stored, TICK_SECONDS)
    for name, field in [
        ("sent", "sent"),
        ("throttled", "throttled"),
        ("capped", "capped"),
        ("ok", "ok"),
        ("rate_frequency", "limited"),
        ("rate_concurrency", "concurrency_limited"),
        ("latency_count", "latency_count"),
    ]:
        assert getattr(tick, field) == stored.get(name, 0)
    assert (tick.ok_at, tick.refused_at) == (stored.get("ok_at"), stored.get("refused_at"))


def _step(counts: dict[str, float]) -> StepResult:
    state = law.initial_state(Params(), 0.0)
    return StepResult("glm", 1, counts, state, Decision.HOLD, 20.0, None)


def _ratios(registry: CollectorRegistry) -> dict[str, float]:
    return {
        name: registry.get_sample_value(WINDOW_429_RATIO, {"pool": "glm", "class": name}) or 0.0
        for name in ("rate_frequency", "rate_concurrency", "rate_quota", "rate_congestion")
    }


@pytest.mark.parametrize(
    ("counts", "ratios"),
    [
        ({}, {}),
        ({"sent": 50, "throttled": 20, "capped": 5}, {}),  # no answers: no shares
        ({"ok": 90, "rate_frequency": 10}, {"rate_frequency": 0.1}),
        ({"ok": 90, "rate_concurrency": 10}, {"rate_concurrency": 0.1}),
        (
            {"ok": 50, "rate_quota": 25, "rate_congestion": 25},
            {"rate_quota": 0.25, "rate_congestion": 0.25},
        ),
        ({"rate_frequency": 1}, {"rate_frequency": 1.0}),
        ({"ok": 3, "server_error": 1}, {}),
        ({"ok": 8, "rate_frequency": 1, "sent": 100}, {"rate_frequency": 1 / 9}),
    ],
)
def test_429_shares_are_of_all_answers_and_zero_without_answers(
    counts: dict[str, float], ratios: dict[str, float]
) -> None:
    registry = CollectorRegistry()
    LimiterMetrics(registry).stepped(_step(counts))
    expected = {name: ratios.get(name, 0.0) for name in _ratios(registry)}
    assert _ratios(registry) == pytest.approx(expected)


def test_the_window_gauges_cover_the_last_second_of_steps() -> None:
    registry = CollectorRegistry()
    metrics = LimiterMetrics(registry)
    for _ in range(6):  # a second and a half at the default tick
        metrics.stepped(_step({"ok": 1, "sent": 2}))

    def shown(outcome: str) -> float | None:
        return registry.get_sample_value(WINDOW_REQUESTS, {"pool": "glm", "outcome": outcome})

    assert (shown("ok"), shown("sent")) == (4, 8)
    # Every class is shown, absent ones as 0, so no stale count outlives its second.
    assert shown("rate_quota") == 0 and shown("capped") == 0


@given(st.lists(store_ticks, min_size=1, max_size=6))
def test_429_shares_are_always_between_zero_and_one(steps: list[dict[str, float]]) -> None:
    registry = CollectorRegistry()
    metrics = LimiterMetrics(registry)
    for counts in steps:
        metrics.stepped(_step(counts))
    ratios = _ratios(registry)
    assert all(0.0 <= ratio <= 1.0 for ratio in ratios.values())
    assert sum(ratios.values()) <= 1.0 + 1e-12
