"""Outcome classes and windows: stable names, counting, ratios, merging, validation."""

from __future__ import annotations

from dataclasses import asdict

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zai_proxy.limiter.outcomes import Outcome, Window

counts = st.integers(min_value=0, max_value=10_000)
windows = st.builds(
    Window,
    ok=counts,
    rate_frequency=counts,
    rate_concurrency=counts,
    rate_quota=counts,
    rate_congestion=counts,
    server_error=counts,
    network=counts,
    client_error=counts,
    demand=counts,
    peak_concurrency=st.none() | counts,
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
def test_each_outcome_has_a_stable_wire_name_that_is_also_a_window_field(
    outcome: Outcome, wire_name: str
) -> None:
    assert outcome == wire_name
    assert Window(**{wire_name: 3}).count(outcome) == 3


def test_attempts_count_every_outcome_but_not_demand_or_peak() -> None:
    window = Window(
        ok=10,
        rate_frequency=1,
        rate_concurrency=2,
        rate_quota=3,
        rate_congestion=4,
        server_error=5,
        network=6,
        client_error=7,
        demand=100,
        peak_concurrency=50,
    )
    assert window.attempts == 38
    assert window.rate_limited == 10


@pytest.mark.parametrize(
    ("window", "frequency", "concurrency", "rate_limited"),
    [
        (Window(), 0.0, 0.0, 0.0),
        (Window(demand=50), 0.0, 0.0, 0.0),
        (Window(ok=90, rate_frequency=10), 0.1, 0.0, 0.1),
        (Window(ok=90, rate_concurrency=10), 0.0, 0.1, 0.1),
        (Window(ok=50, rate_quota=25, rate_congestion=25), 0.0, 0.0, 0.5),
        (Window(rate_frequency=1), 1.0, 0.0, 1.0),
        (Window(ok=3, server_error=1), 0.0, 0.0, 0.0),
    ],
)
def test_ratios_are_shares_of_all_attempts_and_zero_without_attempts(
    window: Window, frequency: float, concurrency: float, rate_limited: float
) -> None:
    assert window.frequency_ratio == pytest.approx(frequency)
    assert window.concurrency_ratio == pytest.approx(concurrency)
    assert window.rate_limited_ratio == pytest.approx(rate_limited)


def test_from_counts_reads_a_decoded_store_hash() -> None:
    counts: dict[str, int | str] = {"ok": 7, "rate_frequency": "2", "demand": 12}
    window = Window.from_counts(counts)
    assert window == Window(ok=7, rate_frequency=2, demand=12)
    assert window.peak_concurrency is None


def test_from_counts_reads_a_raw_redis_hash_of_bytes() -> None:
    raw = {b"ok": b"7", b"rate_concurrency": b"1", b"peak_concurrency": b"4"}
    assert Window.from_counts(raw) == Window(ok=7, rate_concurrency=1, peak_concurrency=4)


def test_from_counts_accepts_outcome_keys_and_ignores_unknown_ones() -> None:
    window = Window.from_counts({Outcome.NETWORK: 3, "rate_from_the_future": 9})
    assert window == Window(network=3)


@pytest.mark.parametrize(
    "fields",
    [
        {"ok": -1},
        {"demand": -5},
        {"peak_concurrency": -1},
        {"ok": 1.5},
        {"rate_frequency": True},
        {"network": "3"},
        {"demand": None},
    ],
)
def test_a_window_refuses_counts_that_are_not_non_negative_ints(fields: dict) -> None:
    with pytest.raises(ValueError, match="non-negative int"):
        Window(**fields)


def test_adding_windows_sums_counts_and_keeps_the_highest_peak() -> None:
    first = Window(ok=5, rate_frequency=1, demand=8, peak_concurrency=3)
    second = Window(ok=2, network=1, demand=4, peak_concurrency=7)
    assert first + second == Window(
        ok=7, rate_frequency=1, network=1, demand=12, peak_concurrency=7
    )
    assert first + Window(ok=1) == Window(ok=6, rate_frequency=1, demand=8, peak_concurrency=3)
    assert (Window() + Window()).peak_concurrency is None


@given(windows)
def test_from_counts_round_trips_every_field(window: Window) -> None:
    stored = {key: value for key, value in asdict(window).items() if value is not None}
    assert Window.from_counts(stored) == window


@given(windows)
def test_ratios_are_always_between_zero_and_one(window: Window) -> None:
    for ratio in (window.frequency_ratio, window.concurrency_ratio, window.rate_limited_ratio):
        assert 0.0 <= ratio <= 1.0
    assert window.frequency_ratio + window.concurrency_ratio <= window.rate_limited_ratio + 1e-12


@given(windows, windows)
def test_merging_windows_adds_attempts(first: Window, second: Window) -> None:
    merged = first + second
    assert merged.attempts == first.attempts + second.attempts
    assert merged.demand == first.demand + second.demand
