"""The rate controller: its rules as tables, its invariants under hypothesis, and a simulation.

Defaults throughout: 5 s windows, margin 2%, alpha 0.3, a probe after 3 clean windows. A
window at rate R carries R x 5 attempts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zai_proxy.limiter.controller import (
    DEFAULT_CEILING_ALPHA,
    DEFAULT_HOLD_MARGIN,
    DEFAULT_INITIAL_RATE,
    DEFAULT_MAX_CONCURRENCY,
    DEFAULT_MAX_RATE,
    DEFAULT_MIN_RATE,
    DEFAULT_PROBE_INTERVAL,
    DEFAULT_WINDOW_SECONDS,
    ControllerState,
    Decision,
    RateLimitParams,
    initial_state,
    step,
)
from zai_proxy.limiter.outcomes import Window

PARAMS = RateLimitParams()
W = PARAMS.window_seconds
# A well-learned steady state: ceiling 20 rps, rate at its hold point.
SETTLED = ControllerState(rate=19.6, concurrency=float(DEFAULT_MAX_CONCURRENCY), ceiling=20.0)


def at_rate(
    rate: float, *, frequency: int = 0, demand: float | None = None, **counts: int
) -> Window:
    """A window that ran at `rate` (attempts = rate x window), `frequency` of them refused."""
    attempts = round(rate * W)
    return Window(
        ok=attempts - frequency - sum(counts.values()),
        rate_frequency=frequency,
        demand=round(2 * attempts if demand is None else demand),
        **counts,
    )


def run(
    state: ControllerState, windows: Sequence[Window]
) -> list[tuple[ControllerState, Decision]]:
    """Every state and decision along a sequence of windows."""
    trail = []
    for window in windows:
        state, decision = step(state, window, PARAMS)
        trail.append((state, decision))
    return trail


# --- parameters -------------------------------------------------------------------------


def test_defaults_are_the_documented_ones() -> None:
    assert (PARAMS.initial_rate, PARAMS.min_rate, PARAMS.max_rate) == (
        DEFAULT_INITIAL_RATE,
        DEFAULT_MIN_RATE,
        DEFAULT_MAX_RATE,
    )
    assert PARAMS.ceiling_alpha == DEFAULT_CEILING_ALPHA == 0.3
    assert PARAMS.hold_margin == DEFAULT_HOLD_MARGIN == 0.02
    assert PARAMS.probe_interval == DEFAULT_PROBE_INTERVAL
    assert PARAMS.window_seconds == DEFAULT_WINDOW_SECONDS == 5.0


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"min_rate": 0.0}, "min_rate must be > 0"),
        ({"min_rate": -1.0}, "min_rate must be > 0"),
        ({"initial_rate": 0.05}, "min_rate <= initial_rate <= max_rate"),
        ({"initial_rate": 500.0}, "min_rate <= initial_rate <= max_rate"),
        ({"max_rate": 1.0}, "min_rate <= initial_rate <= max_rate"),
        ({"ceiling_alpha": 0.0}, "ceiling_alpha"),
        ({"ceiling_alpha": 1.5}, "ceiling_alpha"),
        ({"hold_margin": 1.0}, "hold_margin"),
        ({"hold_margin": -0.1}, "hold_margin"),
        ({"probe_interval": 0}, "probe_interval"),
        ({"probe_interval": 2.5}, "probe_interval must be an int"),
        ({"window_seconds": 0.0}, "window_seconds"),
        ({"clean_ratio": 0.0}, "clean_ratio"),
        ({"clean_ratio": 0.1, "bad_ratio": 0.05}, "clean_ratio <= bad_ratio"),
        ({"bad_ratio": 1.0}, "bad_ratio < 1"),
        ({"slow_start_factor": 1.0}, "slow_start_factor"),
        ({"probe_growth": 0.5}, "probe_growth"),
        ({"max_probe_step": 0.0}, "max_probe_step"),
        ({"min_concurrency": 0}, "min_concurrency must be >= 1"),
        ({"min_concurrency": 10, "max_concurrency": 5}, "min_concurrency must be <="),
        ({"max_rate": float("inf")}, "must be finite"),
        ({"initial_rate": float("nan")}, "must be finite"),
        ({"ceiling_alpha": "0.3"}, "must be a number"),
        ({"hold_margin": True}, "must be a number"),
    ],
)
def test_invalid_parameters_are_refused_with_value_error(fields: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RateLimitParams(**fields)


def test_the_controller_starts_at_the_initial_rate_with_nothing_learned() -> None:
    state = initial_state(RateLimitParams(initial_rate=7.0, max_concurrency=32))
    assert state.rate == 7.0
    assert state.ceiling is None
    assert state.concurrency_limit == 32
    assert state.concurrency_ceiling is None
    assert not state.probing


# --- one step: the contract ---------------------------------------------------------------


def test_a_bad_window_moves_the_ceiling_by_ewma_toward_the_accepted_rate() -> None:
    # 49 of 98 attempts refused: the upstream accepted 9.8 rps.
    state, decision = step(SETTLED, at_rate(19.6, frequency=49), PARAMS)
    assert decision is Decision.DECREASE
    assert state.ceiling == pytest.approx(20.0 + 0.3 * (9.8 - 20.0))
    assert state.clean_windows == 0
    assert not state.probing


def test_after_a_bad_window_the_rate_never_exceeds_the_accepted_rate_less_the_margin() -> None:
    state, _ = step(SETTLED, at_rate(19.6, frequency=49), PARAMS)
    # The EWMA ceiling's hold point (16.6) would still be 70% above what was accepted.
    assert state.rate == pytest.approx(9.8 * 0.98)


def test_a_bad_window_without_the_cap_drops_the_rate_to_the_hold_point() -> None:
    # Only 6% refused: the accepted rate (18.4) lies above the new ceiling (19.5).
    state, _ = step(SETTLED, at_rate(19.6, frequency=6), PARAMS)
    accepted = 19.6 * (92 / 98)
    ceiling = 20.0 + 0.3 * (accepted - 20.0)
    assert state.ceiling == pytest.approx(ceiling)
    assert state.rate == pytest.approx(min(ceiling, accepted) * 0.98)


@pytest.mark.parametrize(
    ("bad_share", "gentle_share"),
    [(0.9, 0.11), (0.5, 0.06), (0.3, 0.1)],
)
def test_back_off_is_proportional_to_the_share_refused(
    bad_share: float, gentle_share: float
) -> None:
    attempts = round(19.6 * W)
    after_bad, _ = step(SETTLED, at_rate(19.6, frequency=round(attempts * bad_share)), PARAMS)
    after_gentle, _ = step(SETTLED, at_rate(19.6, frequency=round(attempts * gentle_share)), PARAMS)
    cut_bad = SETTLED.rate - after_bad.rate
    cut_gentle = SETTLED.rate - after_gentle.rate
    assert cut_bad > 2 * cut_gentle > 0
    assert after_bad.ceiling is not None and after_gentle.ceiling is not None
    assert after_bad.ceiling < after_gentle.ceiling


def test_a_ninety_percent_window_cuts_the_rate_to_about_a_tenth() -> None:
    state, _ = step(SETTLED, at_rate(19.6, frequency=88), PARAMS)
    assert state.rate == pytest.approx(19.6 * (10 / 98) * 0.98)


@pytest.mark.parametrize("refused", [1, 2, 3, 4])  # 1% to 4% of 98 attempts
def test_the_hold_band_keeps_rate_and_ceiling(refused: int) -> None:
    state, decision = step(SETTLED, at_rate(19.6, frequency=refused), PARAMS)
    assert decision is Decision.HOLD
    assert (state.rate, state.ceiling) == (SETTLED.rate, SETTLED.ceiling)
    assert state.clean_windows == 0


def test_the_ceiling_is_floored_at_the_minimum_rate() -> None:
    state = SETTLED
    for _ in range(30):
        state, decision = step(state, Window(rate_frequency=round(state.rate * W) + 1), PARAMS)
        assert decision is Decision.DECREASE
    assert state.rate == PARAMS.min_rate
    assert state.ceiling == PARAMS.min_rate


def test_the_rate_never_passes_the_maximum() -> None:
    params = RateLimitParams(initial_rate=5.0, max_rate=30.0)
    state = initial_state(params)
    rates = []
    for _ in range(6):
        state, _ = step(state, Window(ok=round(state.rate * W), demand=1_000), params)
        rates.append(state.rate)
    assert rates == [10.0, 20.0, 30.0, 30.0, 30.0, 30.0]


def test_a_window_whose_demand_stays_below_the_rate_raises_nothing() -> None:
    quiet = Window(ok=40, demand=40)  # 8 rps asked for, 19.6 allowed
    state = SETTLED
    for _ in range(10):
        state, decision = step(state, quiet, PARAMS)
        assert decision is Decision.HOLD
    assert (state.rate, state.ceiling) == (SETTLED.rate, SETTLED.ceiling)


def test_demand_within_one_request_of_the_rate_counts_as_at_the_rate() -> None:
    three_clean = [Window(ok=98, demand=98)] * 3
    assert run(SETTLED, three_clean)[-1][1] is Decision.PROBE
    assert run(SETTLED, [Window(ok=97, demand=97)] * 3)[-1][1] is Decision.HOLD


def test_a_window_without_attempts_is_no_evidence() -> None:
    state, decision = step(SETTLED, Window(demand=1_000), PARAMS)
    assert decision is Decision.HOLD
    assert state == replace(SETTLED, last_decision=Decision.HOLD)


# --- probing --------------------------------------------------------------------------------


def test_a_probe_comes_after_the_probe_interval_of_clean_windows() -> None:
    trail = run(SETTLED, [at_rate(19.6)] * 3)
    assert [decision for _, decision in trail] == [Decision.HOLD, Decision.HOLD, Decision.PROBE]
    assert [state.clean_windows for state, _ in trail[:2]] == [1, 2]
    probe = trail[-1][0]
    assert probe.rate == pytest.approx(20.0 * 1.02)
    assert probe.probing


@pytest.mark.parametrize("interval", [1, 2, 5])
def test_the_probe_interval_is_a_setting(interval: int) -> None:
    params = RateLimitParams(probe_interval=interval)
    state = SETTLED
    decisions = []
    for _ in range(interval):
        state, decision = step(state, at_rate(19.6), params)
        decisions.append(decision)
    assert decisions == [Decision.HOLD] * (interval - 1) + [Decision.PROBE]


def test_a_probe_that_stays_clean_raises_the_ceiling_and_the_next_step_grows() -> None:
    probe, _ = run(SETTLED, [at_rate(19.6)] * 3)[-1]
    trail = run(probe, [at_rate(probe.rate)])
    second, decision = trail[-1]
    assert decision is Decision.PROBE
    assert second.ceiling == pytest.approx(20.4)
    assert second.rate == pytest.approx(20.4 * 1.04)
    third, _ = step(second, at_rate(second.rate), PARAMS)
    assert third.ceiling == pytest.approx(20.4 * 1.04)
    assert third.rate == pytest.approx(20.4 * 1.04 * 1.08)


def test_consecutive_clean_probes_double_their_step_up_to_doubling_the_rate() -> None:
    params = RateLimitParams(max_rate=1_000.0)
    state = SETTLED
    for _ in range(3):
        state, _ = step(state, at_rate(state.rate), params)
    steps = []
    for _ in range(7):
        before = state.rate
        state, _ = step(state, at_rate(state.rate), params)
        steps.append(round(state.rate / before - 1, 6))
    assert steps == [0.04, 0.08, 0.16, 0.32, 0.64, 1.0, 1.0]


def test_clean_probes_stop_at_the_maximum_rate() -> None:
    state = SETTLED
    for _ in range(12):
        state, decision = step(state, at_rate(state.rate), PARAMS)
    assert state.rate == state.ceiling == PARAMS.max_rate
    assert decision is Decision.HOLD


def test_a_probe_that_lands_in_the_hold_band_settles_at_the_accepted_rate() -> None:
    probe, _ = run(SETTLED, [at_rate(19.6)] * 3)[-1]  # 20.4 rps, 102 attempts
    state, decision = step(probe, at_rate(probe.rate, frequency=2), PARAMS)
    assert decision is Decision.HOLD
    assert state.ceiling == pytest.approx(20.0)  # 100 accepted in 5 s
    assert state.rate == pytest.approx(19.6)
    assert not state.probing
    assert state.clean_windows == 0


def test_a_probe_that_overshoots_takes_the_accepted_rate_as_its_ceiling() -> None:
    # Probing at 30 rps above a ceiling of 25 learned from the previous clean probe.
    probing = ControllerState(
        rate=30.0, concurrency=256.0, ceiling=25.0, probing=True, probe_streak=3
    )
    state, decision = step(probing, at_rate(30.0, frequency=10), PARAMS)  # 140 accepted
    assert decision is Decision.DECREASE
    assert state.ceiling == pytest.approx(28.0)
    assert state.rate == pytest.approx(28.0 * 0.98)


def test_a_probe_whose_window_lacks_demand_stays_pending() -> None:
    probe, _ = run(SETTLED, [at_rate(19.6)] * 3)[-1]
    state, decision = step(probe, Window(ok=20, demand=20), PARAMS)
    assert decision is Decision.HOLD
    assert state.probing and state.rate == probe.rate


def test_a_hold_band_streak_at_a_settled_rate_settles_at_the_accepted_rate() -> None:
    # The limit dropped 3%: each window is refused ~2%, inside the band.
    trail = run(SETTLED, [at_rate(19.6, frequency=2)] * 3)
    assert [decision for _, decision in trail] == [Decision.HOLD, Decision.HOLD, Decision.DECREASE]
    state = trail[-1][0]
    assert state.ceiling == pytest.approx(19.2)
    assert state.rate == pytest.approx(19.2 * 0.98)


def test_a_clean_window_breaks_a_hold_band_streak() -> None:
    windows = [at_rate(19.6, frequency=2)] * 2 + [at_rate(19.6)] + [at_rate(19.6, frequency=2)]
    assert all(decision is Decision.HOLD for _, decision in run(SETTLED, windows))


def test_after_a_capped_decrease_the_rate_climbs_back_toward_the_hold_point() -> None:
    # A transient: the upstream accepted only 9.8 rps once, then nothing is refused.
    state, _ = step(SETTLED, at_rate(19.6, frequency=49), PARAMS)
    assert state.ceiling is not None
    hold_point = state.ceiling * 0.98
    rates = [state.rate]
    for _ in range(8):
        state, decision = step(state, at_rate(state.rate), PARAMS)
        rates.append(state.rate)
        if decision is Decision.HOLD:
            break
    assert rates == sorted(rates)
    assert rates[-1] == pytest.approx(hold_point)
    assert len(rates) <= 8


def test_a_failed_climb_below_a_stale_ceiling_replaces_the_ceiling() -> None:
    state, _ = step(SETTLED, at_rate(19.6, frequency=49), PARAMS)  # ceiling 16.9, rate 9.6
    climb, decision = step(state, at_rate(state.rate), PARAMS)
    assert decision is Decision.INCREASE
    # The limit really is ~10: the climb is answered 3% 429s.
    settled, decision = step(climb, at_rate(climb.rate, frequency=2), PARAMS)
    assert decision is Decision.HOLD
    attempts = round(climb.rate * W)
    accepted = min(climb.rate, attempts / W) * (attempts - 2) / attempts
    assert settled.ceiling == pytest.approx(accepted)
    assert settled.rate == pytest.approx(accepted * 0.98)


@pytest.mark.parametrize(
    ("state", "window", "ceiling"),
    [
        pytest.param(
            # Climbing from 9.6 below a stale ceiling of 16.9; the upstream takes only 8.
            replace(SETTLED, rate=9.8, ceiling=16.9, probing=True),
            Window(ok=40, rate_frequency=9, demand=100),
            8.0,
            id="a failed climb below the ceiling",
        ),
        pytest.param(
            # Probing at 20.4 above a ceiling of 20; the limit halved meanwhile.
            replace(SETTLED, rate=20.4, probing=True),
            Window(ok=51, rate_frequency=51, demand=200),
            10.2,
            id="a failed probe below the old ceiling",
        ),
        pytest.param(
            replace(SETTLED, rate=30.0, ceiling=25.0, probing=True, probe_streak=3),
            Window(ok=140, rate_frequency=10, demand=300),
            28.0,
            id="a failed probe above the old ceiling",
        ),
        pytest.param(
            # Not a trial, but accepting more than the ceiling only a trial could explain.
            replace(SETTLED, ceiling=18.0),
            Window(ok=92, rate_frequency=6, demand=200),
            18.4,
            id="accepted above the ceiling at a settled rate",
        ),
    ],
)
def test_a_bad_window_that_judges_a_trial_sets_the_ceiling_to_the_accepted_rate_outright(
    state: ControllerState, window: Window, ceiling: float
) -> None:
    after, decision = step(state, window, PARAMS)
    assert decision is Decision.DECREASE
    assert after.ceiling == pytest.approx(ceiling)
    assert after.rate == pytest.approx(ceiling * 0.98)
    assert not after.probing and after.probe_streak == 0
    # The same window at a settled rate below the ceiling would move it by EWMA only.
    if state.ceiling is not None and ceiling < state.ceiling:
        settled, _ = step(replace(state, probing=False, probe_streak=0), window, PARAMS)
        assert settled.ceiling == pytest.approx(state.ceiling + 0.3 * (ceiling - state.ceiling))


def test_a_failed_concurrency_trial_sets_the_concurrency_ceiling_outright() -> None:
    trial = replace(SETTLED, concurrency=12.0, concurrency_ceiling=10.0, concurrency_probing=True)
    window = Window(ok=50, rate_concurrency=50, demand=1_000, peak_concurrency=12)
    state, _ = step(trial, window, PARAMS)
    assert state.concurrency_decision is Decision.DECREASE
    assert state.concurrency_ceiling == pytest.approx(6.0)  # not 10 + 0.3 x (6 - 10)
    assert state.concurrency == pytest.approx(6.0 * 0.98)
    assert not state.concurrency_probing


@pytest.mark.parametrize(
    ("attempts", "refused", "accepted"),
    [
        # 30 rps ran under a rate of 19.6: the 90 refusals belong to the earlier, higher
        # rate. 60 accepted in 5 s is 12 rps; charged to 19.6 as a share it would be 7.8.
        (150, 90, 12.0),
        (120, 60, 12.0),
        # More attempts accepted than the rate allows: the rate is as far as it goes.
        (150, 50, 19.6),
        # Within one request of the rate (99 <= 98 + 1) the window ran at the rate.
        (99, 10, 19.6 * 89 / 99),
    ],
)
def test_a_window_above_its_rate_counts_the_attempts_not_refused_as_the_accepted_rate(
    attempts: int, refused: int, accepted: float
) -> None:
    window = Window(ok=attempts - refused, rate_frequency=refused, demand=2 * attempts)
    state, decision = step(SETTLED, window, PARAMS)
    assert decision is Decision.DECREASE
    ceiling = 20.0 + 0.3 * (accepted - 20.0)
    assert state.ceiling == pytest.approx(ceiling)
    assert state.rate == pytest.approx(min(ceiling, accepted) * 0.98)


@settings(max_examples=200, deadline=None)
@given(st.integers(100, 1_000), st.data())
def test_a_bad_window_above_its_rate_never_cuts_below_the_attempts_not_refused(
    attempts: int, data: st.DataObject
) -> None:
    # SETTLED allows 98 attempts in a window; from 100 on, part ran at an earlier rate.
    refused = data.draw(st.integers(attempts // 20 + 1, attempts))
    window = Window(ok=attempts - refused, rate_frequency=refused, demand=2 * attempts)
    state, _ = step(SETTLED, window, PARAMS)
    accepted = min(SETTLED.rate, (attempts - refused) / W)
    assert state.rate == pytest.approx(max(PARAMS.min_rate, accepted * 0.98))


# --- which outcomes feed what -------------------------------------------------------------


@pytest.mark.parametrize(
    "outcome",
    [
        "rate_quota",
        "rate_congestion",
        "server_error",
        "network",
        "client_error",
        "rate_concurrency",
    ],
)
def test_only_frequency_429s_feed_the_rate(outcome: str) -> None:
    state, decision = step(SETTLED, at_rate(19.6, **{outcome: 49}), PARAMS)
    assert decision is not Decision.DECREASE
    assert state.rate >= SETTLED.rate
    assert state.ceiling == SETTLED.ceiling


def test_the_accepted_rate_is_measured_from_attempts_when_demand_stays_below_the_rate() -> None:
    # 10 rps asked for under a 19.6 rps rate; 10 of 50 refused: 8 rps accepted, not 15.7.
    state, _ = step(SETTLED, Window(ok=40, rate_frequency=10, demand=50), PARAMS)
    assert state.ceiling == pytest.approx(20.0 + 0.3 * (8.0 - 20.0))
    assert state.rate == pytest.approx(8.0 * 0.98)


# --- slow start and restoring ---------------------------------------------------------------


def test_without_a_ceiling_clean_windows_double_the_rate() -> None:
    state = initial_state(PARAMS)
    trail = run(state, [Window(ok=round(r * W), demand=1_000) for r in (5, 10, 20)])
    assert [s.rate for s, _ in trail] == [10.0, 20.0, 40.0]
    assert all(decision is Decision.INCREASE for _, decision in trail)
    assert trail[-1][0].ceiling is None


def test_the_first_window_with_429s_sets_the_ceiling_outright() -> None:
    state = initial_state(PARAMS)  # 5 rps, no ceiling
    # Even a hold-band share: without a ceiling there is nothing to hold to.
    state, decision = step(state, Window(ok=24, rate_frequency=1, demand=100), PARAMS)
    assert decision is Decision.DECREASE
    assert state.ceiling == pytest.approx(24 / W)
    assert state.rate == pytest.approx(24 / W * 0.98)


def test_stored_state_outside_new_bounds_is_brought_inside() -> None:
    stored = replace(SETTLED, rate=500.0, ceiling=900.0, concurrency=10_000.0)
    state, _ = step(stored, Window(), PARAMS)
    assert state.rate == PARAMS.max_rate
    assert state.ceiling == PARAMS.max_rate
    assert state.concurrency == PARAMS.max_concurrency


def test_unusable_stored_numbers_fall_back_inside_the_bounds() -> None:
    stored = replace(SETTLED, rate=float("nan"), ceiling=float("inf"), clean_windows=-4)
    state, _ = step(stored, at_rate(1.0), PARAMS)
    assert PARAMS.min_rate <= state.rate <= PARAMS.max_rate
    assert state.ceiling is None or PARAMS.min_rate <= state.ceiling <= PARAMS.max_rate
    assert state.clean_windows >= 0


# --- the concurrency cap --------------------------------------------------------------------


def test_concurrency_429s_set_a_cap_from_the_peak_in_flight() -> None:
    window = Window(ok=90, rate_concurrency=10, demand=1_000, peak_concurrency=12)
    state, rate_decision = step(SETTLED, window, PARAMS)
    assert state.concurrency_decision is Decision.DECREASE
    assert state.concurrency_ceiling == pytest.approx(12 * 0.9)
    assert state.concurrency == pytest.approx(12 * 0.9 * 0.98)
    assert state.concurrency_limit == 10
    assert rate_decision is not Decision.DECREASE


def test_without_a_peak_the_concurrency_cap_is_left_alone() -> None:
    window = Window(ok=50, rate_concurrency=50, demand=1_000)
    state, _ = step(SETTLED, window, PARAMS)
    assert state.concurrency == SETTLED.concurrency
    assert state.concurrency_decision is Decision.HOLD


def test_a_concurrency_probe_raises_the_cap_by_at_least_one_slot() -> None:
    capped = replace(SETTLED, concurrency=9.8, concurrency_ceiling=10.0)
    clean = Window(ok=98, demand=98, peak_concurrency=9)
    trail = run(capped, [clean] * 3)
    probe = trail[-1][0]
    assert probe.concurrency_decision is Decision.PROBE
    assert probe.concurrency_limit == 10
    assert probe.concurrency == pytest.approx(10.8)


def test_a_peak_below_the_cap_raises_nothing() -> None:
    capped = replace(SETTLED, concurrency=9.8, concurrency_ceiling=10.0)
    trail = run(capped, [Window(ok=98, demand=98, peak_concurrency=5)] * 10)
    assert all(state.concurrency == 9.8 for state, _ in trail)


def test_quota_429s_feed_neither_limit() -> None:
    window = Window(ok=10, rate_quota=88, demand=1_000, peak_concurrency=300)
    state, decision = step(SETTLED, window, PARAMS)
    assert decision is not Decision.DECREASE
    assert state.concurrency_decision is not Decision.DECREASE
    assert state.rate >= SETTLED.rate
    assert state.concurrency == SETTLED.concurrency


# --- invariants under any input --------------------------------------------------------------

counts = st.integers(min_value=0, max_value=3_000)
windows = st.builds(
    Window,
    ok=counts,
    rate_frequency=counts | st.just(0),
    rate_concurrency=counts | st.just(0),
    rate_quota=st.integers(0, 50),
    rate_congestion=st.integers(0, 50),
    server_error=st.integers(0, 50),
    network=st.integers(0, 50),
    client_error=st.integers(0, 50),
    demand=st.integers(0, 10_000),
    peak_concurrency=st.none() | st.integers(0, 600),
)


@st.composite
def params_strategy(draw: st.DrawFn) -> RateLimitParams:
    min_rate = draw(st.floats(0.01, 50.0))
    max_rate = min_rate * draw(st.floats(1.0, 1_000.0))
    min_concurrency = draw(st.integers(1, 50))
    return RateLimitParams(
        min_rate=min_rate,
        max_rate=max_rate,
        initial_rate=draw(st.floats(min_rate, max_rate)),
        ceiling_alpha=draw(st.floats(0.01, 1.0)),
        hold_margin=draw(st.floats(0.0, 0.5)),
        probe_interval=draw(st.integers(1, 6)),
        window_seconds=draw(st.floats(0.5, 60.0)),
        probe_growth=draw(st.floats(1.0, 4.0)),
        max_probe_step=draw(st.floats(0.01, 3.0)),
        min_concurrency=min_concurrency,
        max_concurrency=min_concurrency + draw(st.integers(0, 500)),
    )


def assert_within_bounds(state: ControllerState, params: RateLimitParams) -> None:
    assert params.min_rate <= state.rate <= params.max_rate
    assert state.ceiling is None or params.min_rate <= state.ceiling <= params.max_rate
    assert params.min_concurrency <= state.concurrency <= params.max_concurrency
    ceiling = state.concurrency_ceiling
    assert ceiling is None or params.min_concurrency <= ceiling <= params.max_concurrency
    assert state.concurrency_limit >= 1
    assert state.clean_windows >= 0 and state.hold_windows >= 0 and state.probe_streak >= 0


@settings(max_examples=200, deadline=None)
@given(params_strategy(), st.lists(windows, max_size=40))
def test_every_state_stays_within_bounds_under_any_windows(
    params: RateLimitParams, sequence: list[Window]
) -> None:
    state = initial_state(params)
    for window in sequence:
        state, decision = step(state, window, params)
        assert decision in Decision
        assert state.last_decision is decision
        assert_within_bounds(state, params)


@settings(max_examples=200, deadline=None)
@given(st.lists(windows, max_size=25), windows, st.integers(1, 3_000))
def test_a_worse_window_never_leaves_a_higher_rate_than_a_better_one(
    history: list[Window], window: Window, moved: int
) -> None:
    state = initial_state(PARAMS)
    for earlier in history:
        state, _ = step(state, earlier, PARAMS)
    moved = min(moved, window.ok)
    worse = replace(window, ok=window.ok - moved, rate_frequency=window.rate_frequency + moved)
    after_better, _ = step(state, window, PARAMS)
    after_worse, _ = step(state, worse, PARAMS)
    assert after_worse.rate <= after_better.rate


@settings(max_examples=100, deadline=None)
@given(st.lists(windows, max_size=25), windows, st.integers(1, 3_000))
def test_a_worse_window_never_leaves_a_higher_concurrency_cap(
    history: list[Window], window: Window, moved: int
) -> None:
    state = initial_state(PARAMS)
    for earlier in history:
        state, _ = step(state, earlier, PARAMS)
    moved = min(moved, window.ok)
    worse = replace(window, ok=window.ok - moved, rate_concurrency=window.rate_concurrency + moved)
    after_better, _ = step(state, window, PARAMS)
    after_worse, _ = step(state, worse, PARAMS)
    assert after_worse.concurrency <= after_better.concurrency


@settings(max_examples=100, deadline=None)
@given(st.lists(windows, max_size=25), st.integers(0, 3_000), st.data())
def test_a_window_without_demand_at_the_rate_never_raises_the_rate_or_ceiling(
    history: list[Window], ok: int, data: st.DataObject
) -> None:
    state = initial_state(PARAMS)
    for earlier in history:
        state, _ = step(state, earlier, PARAMS)
    demand = data.draw(st.integers(0, max(0, int(state.rate * W) - 1)))
    after, decision = step(state, Window(ok=ok, demand=demand), PARAMS)
    assert after.rate <= state.rate
    assert decision in (Decision.HOLD, Decision.DECREASE)
    if state.ceiling is not None:
        assert after.ceiling is not None and after.ceiling <= state.ceiling


# --- simulation: a hidden limit, offered load, outcomes, steps ---------------------------------


@dataclass(frozen=True, slots=True)
class Tick:
    """One simulated window: the hidden limit, the rate admitted, and what came back."""

    limit: float
    rate: float
    attempts: int
    refused: int

    @property
    def goodput(self) -> float:
        return (self.attempts - self.refused) / W

    @property
    def refused_ratio(self) -> float:
        return self.refused / self.attempts if self.attempts else 0.0


def simulate(limits: Sequence[float], params: RateLimitParams = PARAMS) -> list[Tick]:
    """Drive the controller against an upstream that accepts `limits[i]` rps in window i.

    Clients offer twice the highest limit, so the limiter is always the bottleneck; the
    upstream refuses (429, frequency class) whatever exceeds its limit in a window.
    """
    offered = round(2 * max(limits) * params.window_seconds)
    state = initial_state(params)
    ticks = []
    for limit in limits:
        attempts = min(round(state.rate * params.window_seconds), offered)
        accepted = min(attempts, round(limit * params.window_seconds))
        ticks.append(Tick(limit, state.rate, attempts, attempts - accepted))
        window = Window(ok=accepted, rate_frequency=attempts - accepted, demand=offered)
        state, _ = step(state, window, params)
    return ticks


def windows_until_goodput(ticks: Sequence[Tick], start: int, share: float) -> int:
    """Windows from `start` until goodput stays at or above `share` of the limit for good."""
    short = [i for i in range(start, len(ticks)) if ticks[i].goodput < share * ticks[i].limit]
    return short[-1] - start + 1 if short else 0


def refused_share(ticks: Sequence[Tick]) -> float:
    return sum(t.refused for t in ticks) / sum(t.attempts for t in ticks)


@pytest.mark.parametrize("limit", [12.5, 40.0, 90.0])
def test_simulated_rate_converges_to_a_hidden_limit_from_the_initial_rate(limit: float) -> None:
    ticks = simulate([limit] * 200)
    assert windows_until_goodput(ticks, 0, 0.95) <= 6
    steady = ticks[10:]
    assert refused_share(steady) <= 0.02
    assert sum(t.goodput for t in steady) / len(steady) >= 0.95 * limit


@pytest.mark.parametrize("phase", range(DEFAULT_PROBE_INTERVAL + 1))
@pytest.mark.parametrize("limit", [12.5, 40.0, 90.0])
def test_simulated_halving_is_under_five_percent_429s_within_two_windows(
    limit: float, phase: int
) -> None:
    start = 30 + phase
    ticks = simulate([limit] * start + [limit / 2] * 60)
    # Window `start` ran at the old rate; the next one is already under 5%.
    assert all(t.refused_ratio < 0.05 for t in ticks[start + 1 :])
    assert windows_until_goodput(ticks, start, 0.95) <= 2
    assert refused_share(ticks[start + 10 :]) <= 0.02


def test_simulated_halving_in_the_middle_of_a_window_settles_within_two_windows() -> None:
    # The window in which the limit halves averages the two limits.
    ticks = simulate([40.0] * 30 + [30.0] + [20.0] * 60)
    assert all(t.refused_ratio < 0.05 for t in ticks[32:])


@pytest.mark.parametrize("phase", range(DEFAULT_PROBE_INTERVAL + 1))
@pytest.mark.parametrize("factor", [1.25, 1.5, 2.0, 3.0, 4.5])
def test_simulated_rise_reaches_ninety_percent_of_the_new_limit_within_twelve_windows(
    factor: float, phase: int
) -> None:
    start = 30 + phase
    ticks = simulate([20.0] * start + [20.0 * factor] * 60)
    assert windows_until_goodput(ticks, start, 0.90) <= 12
    assert refused_share(ticks[start + 20 :]) <= 0.02


def test_simulated_concurrency_cap_converges_to_a_hidden_concurrency_limit() -> None:
    hidden, wanted = 12, 40
    state = initial_state(PARAMS)
    refused = attempts = 0
    for index in range(120):
        in_flight = min(state.concurrency_limit, wanted)
        over = max(0, in_flight - hidden)
        # Each of 100 attempts finds the upstream full in proportion to the excess.
        window = Window(
            ok=100 - round(100 * over / in_flight),
            rate_concurrency=round(100 * over / in_flight),
            demand=10_000,
            peak_concurrency=in_flight,
        )
        if index >= 20:
            refused += window.rate_concurrency
            attempts += window.attempts
        state, _ = step(state, window, PARAMS)
        if index >= 20:
            assert hidden - 2 <= state.concurrency_limit <= hidden + 1
    assert refused / attempts <= 0.03
