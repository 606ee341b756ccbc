"""The control law: its rules as plain calls with numbers in and out, its invariants under
hypothesis, and the discrete-event model of the fleet (bench/limiter_model) on scenarios
whose targets it meets.

Defaults throughout: quarter-second ticks, a 2% margin, 5% first probe step, 1% budget.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.limiter_model import scenarios
from zai_proxy.limiter import controller as law
from zai_proxy.limiter.control import decode_law, encode_law
from zai_proxy.limiter.controller import CapState, Decision, Params, RateState, State, Tick
from zai_proxy.limiter.store import pushed_cap

P = Params()
T = P.tick_seconds


class Clock:
    """Feeds the law one tick at a time, as the control loop does, and keeps time."""

    def __init__(self, state: State | None = None, start: float = 1000.0) -> None:
        self.now = start
        self.index = int(start / T)
        self.state = state or law.initial_state(P, start)

    def run(self, ticks: int, make: object) -> Iterator[State]:
        """Step ``ticks`` ticks, each built by ``make(rate, cap)`` from the limits in force."""
        for _ in range(ticks):
            self.index += 1
            self.now = (self.index + 1) * T + 0.15
            tick = make(self.state.rate.rate, self.state.cap.cap)  # type: ignore[operator]
            tick = replace(tick, start=self.index * T)
            self.state = law.step(self.state, [tick], self.now, P)
            yield self.state

    def settle(self, ticks: int, make: object) -> State:
        for _ in self.run(ticks, make):
            pass
        return self.state


def offered(demand: float, limit: float = math.inf, latency: float = 0.3):
    """Ticks of an upstream with a rate ``limit``, offered ``demand`` requests/s."""

    def make(rate: float, cap: int | None) -> Tick:
        sent = round(min(rate, demand) * T) if math.isfinite(rate) else round(demand * T)
        accepted = min(sent, round(limit * T)) if math.isfinite(limit) else sent
        return Tick(
            sent=sent,
            throttled=sent if demand > rate else 0,
            ok=accepted,
            limited=sent - accepted,
            latency_sum=latency * accepted,
            latency_count=accepted,
        )

    return make


# --- parameters -------------------------------------------------------------------------


def test_defaults_throttle_nothing_without_evidence() -> None:
    assert P.max_rate is None and P.max_concurrency is None
    assert P.rate_high == math.inf
    assert law.initial_state(P, 0.0).cap.cap is None


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"tick_seconds": 0.0}, "tick_seconds"),
        ({"min_rate": 0.0}, "min_rate"),
        ({"initial_rate": 0.05}, "initial_rate"),
        ({"max_rate": 5.0}, "max_rate"),
        ({"margin": 0.5}, "margin"),
        ({"probe_gain": 0.0}, "probe_gain"),
        ({"probe_budget": 0.6}, "probe_budget"),
        ({"min_concurrency": 0}, "min_concurrency"),
        ({"min_concurrency": 5, "max_concurrency": 4}, "min_concurrency"),
        ({"margin": float("nan")}, "finite"),
        ({"max_concurrency": 2.5}, "int"),
    ],
)
def test_inconsistent_parameters_are_refused_with_a_clear_message(
    fields: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        Params(**fields)  # type: ignore[arg-type]


# --- no evidence, no limit --------------------------------------------------------------


def test_slow_start_doubles_every_tick_while_demand_fills_the_rate() -> None:
    clock = Clock()
    rates = [s.rate.rate for s in clock.run(6, offered(10_000))]
    assert rates == [P.initial_rate * 2**k for k in range(1, 7)]
    assert all(s is None for s in [clock.state.rate.limit, clock.state.cap.cap])


def test_slow_start_does_not_grow_past_a_demand_it_already_serves() -> None:
    clock = Clock()
    clock.settle(40, offered(100))
    assert clock.state.rate.rate == 160.0  # the first doubling above 100
    assert clock.state.rate.limit is None


def test_an_upstream_that_never_refuses_is_never_throttled_below_the_demand() -> None:
    state = Clock().settle(80, offered(3400))
    assert state.rate.rate >= 3400 and state.rate.limit is None


def test_max_rate_caps_slow_start_when_set() -> None:
    params = replace(P, max_rate=50.0)
    state = law.initial_state(params, 0.0)
    for k in range(10):
        tick = Tick(start=k * T, sent=20, throttled=20, ok=20)
        state = law.step(state, [tick], (k + 1) * T + 0.15, params)
    assert state.rate.rate == 50.0


# --- cuts ------------------------------------------------------------------------------


def test_a_cut_goes_to_what_the_upstream_accepted_less_the_margin() -> None:
    clock = Clock()
    clock.settle(20, offered(400, limit=25))
    limit = clock.state.rate.limit
    assert limit is not None and limit == pytest.approx(25, rel=0.08)
    assert clock.state.rate.rate <= limit * (1 - P.margin) * 1.001 or clock.state.rate.base


def test_one_percent_of_429s_never_decides_a_cut() -> None:
    state = replace(law.initial_state(P, 0.0), rate=RateState(rate=30.0, limit=30.6))
    now = 0.0
    decisions = []
    for k in range(400):  # 100 s at 30 req/s, one attempt in a hundred refused
        refused = 1 if k % 13 == 0 and k % 3 == 0 else 0  # ~0.9% of 3000 attempts
        tick = Tick(start=k * T, sent=8, ok=8 - refused, limited=refused)
        now = (k + 1) * T + 0.15
        state = law.step(state, [tick], now, P)
        decisions.append(state.rate_decision)
    assert Decision.DECREASE not in decisions


def test_three_quick_429s_at_a_steady_rate_decide_at_once() -> None:
    state = replace(law.initial_state(P, 0.0), rate=RateState(rate=30.0, limit=30.6))
    state = law.step(state, [Tick(start=0.0, sent=8, ok=5, limited=3)], 0.4, P)
    assert state.rate_decision is Decision.DECREASE


def test_a_handful_of_429s_at_idle_cut_in_proportion_to_the_attempts() -> None:
    # Idle at 0.5 req/s for a minute under a learned limit of 30, then one request meets
    # a storm with all its retries: four attempts, all refused.
    state = replace(law.initial_state(P, 0.0), rate=RateState(rate=29.4, limit=30.0))
    now = 0.0
    for k in range(240):
        tick = Tick(start=k * T, sent=1 if k % 8 == 0 else 0, ok=1 if k % 8 == 0 else 0)
        now = (k + 1) * T + 0.15
        state = law.step(state, [tick], now, P)
    storm = Tick(start=240 * T, sent=4, limited=4)
    state = law.step(state, [storm], now + T, P)
    assert state.rate_decision in (Decision.DECREASE, Decision.HOLD)
    # Never below what was just accepted (0.5 req/s), and on four attempts, a partial cut.
    assert state.rate.rate >= 0.5
    assert state.rate.limit is not None and state.rate.limit > 10


def test_everything_refused_pauses_at_a_trickle_and_keeps_the_limit() -> None:
    state = replace(law.initial_state(P, 0.0), rate=RateState(rate=29.4, limit=30.0))
    for k in range(6):
        state = law.step(state, [Tick(start=k * T, sent=8, limited=8)], (k + 1) * T + 0.15, P)
    assert state.rate.paused
    assert state.rate.rate == pytest.approx(0.05 * 30.0)
    assert state.rate.limit == pytest.approx(30.0, rel=0.25)


def test_a_pause_ends_with_the_first_accepted_attempt() -> None:
    state = replace(
        law.initial_state(P, 0.0),
        rate=RateState(rate=1.5, limit=30.0, paused=True, paused_at=0.0, since=0.0),
    )
    state = law.step(state, [Tick(start=1.0, sent=1, ok=1, throttled=1)], 1.4, P)
    assert not state.rate.paused
    assert state.rate.rate == pytest.approx(30.0 * (1 - P.margin))


# --- probes ----------------------------------------------------------------------------


def held(limit: float = 30.0, **fields: object) -> State:
    rate = RateState(rate=limit * (1 - P.margin), limit=limit, held_since=0.0, **fields)  # type: ignore[arg-type]
    return replace(law.initial_state(P, 0.0), rate=rate)


def clean(k: int, rate: float) -> Tick:
    n = round(rate * T)
    return Tick(start=k * T, sent=n, ok=n, throttled=n)


def test_a_clean_hold_with_demand_and_credit_probes_one_gain_above_the_limit() -> None:
    state = held(credit=1.0)
    for k in range(40):
        state = law.step(state, [clean(k, state.rate.rate)], (k + 1) * T + 0.15, P)
        if state.rate_decision is Decision.PROBE:
            break
    assert state.rate.rate == pytest.approx(30.0 * (1 + P.probe_gain))
    assert state.rate.base == pytest.approx(30.0 * (1 - P.margin))


def test_without_credit_no_probe() -> None:
    state = held(credit=0.0)
    for k in range(12):  # 3 s: the credit earned (1% of ~90 attempts) stays under one
        state = law.step(state, [clean(k, state.rate.rate)], (k + 1) * T + 0.15, P)
        assert state.rate_decision is not Decision.PROBE


def test_clean_probe_steps_raise_the_limit_and_double_their_gain() -> None:
    state = replace(
        held(), rate=replace(held().rate, rate=31.5, base=29.4, step_until=0.0, since=0.0)
    )
    state = law.step(state, [clean(1, 31.5)], 1.0, P)
    assert state.rate_decision is Decision.PROBE
    assert state.rate.limit == pytest.approx(31.5)
    assert state.rate.rate == pytest.approx(31.5 * 1.10)


def test_the_push_puts_the_base_back_and_remembers_the_rate_that_was_over() -> None:
    probing = replace(held(), rate=replace(held().rate, rate=31.5, base=29.4, credit=1.5))
    pushed = law.rate_pushed(probing, 10.0)
    assert pushed.rate.rate == 29.4 and pushed.rate.base is None
    assert pushed.rate.over == 31.5 and pushed.rate.since == 10.0


def test_a_push_without_a_probe_changes_nothing() -> None:
    state = held()
    assert law.rate_pushed(state, 10.0) is state


# --- concurrency -------------------------------------------------------------------------


def test_no_cap_until_a_1302_then_one_below_the_count_it_came_at() -> None:
    state = law.initial_state(P, 0.0)
    state = law.step(
        state, [Tick(start=0.0, sent=10, ok=9, concurrency_limited=1, refused_at=9)], 0.4, P
    )
    assert state.cap.cap == 8 and state.cap_decision is Decision.DECREASE


def test_a_1302_under_the_cap_without_an_exact_count_steps_the_cap_down() -> None:
    state = replace(law.initial_state(P, 0.0), cap=CapState(cap=16))
    state = law.step(state, [Tick(start=0.0, concurrency_limited=1)], 0.4, P)
    assert state.cap.cap == 14


@pytest.mark.parametrize(
    ("cap", "base", "refused_at", "floor", "expected"),
    [
        (None, None, 9, 1, 8),  # the first 1302 sets a cap
        (12, None, 9, 1, None),  # under a cap in force: the law's to lower
        (6, None, 9, 1, None),
        (5, 4, 6, 1, 4),  # a probe's base comes back
        (None, None, 1, 2, 2),  # never below the floor
        (8, None, None, 1, None),  # no count: nothing to push
    ],
)
def test_the_store_push_after_a_1302(
    cap: int | None, base: int | None, refused_at: int | None, floor: int, expected: int | None
) -> None:
    assert pushed_cap(cap, base, refused_at, floor) == expected


def test_a_cap_probe_waits_for_an_ok_at_the_probe_count() -> None:
    state = replace(law.initial_state(P, 0.0), cap=CapState(cap=9, base=8, since=0.0))
    waiting = law.step(state, [Tick(start=1.0, ok=4, ok_at=8, capped=3)], 1.5, P)
    assert waiting.cap.cap == 9 and waiting.cap_decision is Decision.HOLD
    raised = law.step(waiting, [Tick(start=2.0, ok=4, ok_at=9, capped=3)], 2.5, P)
    assert raised.cap.cap == 11 and raised.cap.base == 9


def test_little_s_law_counts_answers_over_two_round_trips_not_the_last_second() -> None:
    # Eight slots, answers every 2 s that come back together: the last second saw none.
    state = replace(law.initial_state(P, 0.0), cap=CapState(cap=16), round_trip=2.0)
    for k in range(16):
        ok = 8 if k % 8 == 1 else 0
        tick = Tick(start=k * T, ok=ok, latency_sum=2.0 * ok, latency_count=ok)
        state = law.step(state, [tick], (k + 1) * T + 0.15, P)
    refused = Tick(start=16 * T, concurrency_limited=1)
    state = law.step(state, [refused], 17 * T + 0.15, P)
    # 16 answers in 4 s times 2 s, plus the slack: 9, not the 1 a one-second window gives.
    assert state.cap.cap == 9 and state.cap_decision is Decision.DECREASE


# --- the saved form ----------------------------------------------------------------------


def test_a_state_survives_the_store_with_its_infinities() -> None:
    state = law.step(
        law.initial_state(P, 0.0), [Tick(start=0.0, sent=5, ok=5, throttled=5)], 0.4, P
    )
    state = replace(state, rate=replace(state.rate, rate=math.inf, recent=((5, 4), (3, 3))))
    assert decode_law(encode_law(state)) == state


def test_an_unreadable_saved_state_is_none() -> None:
    assert decode_law("{") is None
    assert decode_law('{"rate": {"rate": 1.0, "unknown": 2}, "cap": {}}') is None


# --- invariants ----------------------------------------------------------------------------

ticks = st.builds(
    lambda sent, ok_share, limited, capped, conc, ok_at: Tick(
        sent=sent,
        throttled=sent // 2,
        ok=round(sent * ok_share),
        limited=min(limited, sent),
        concurrency_limited=conc,
        capped=capped,
        ok_at=ok_at,
        refused_at=ok_at + 1 if conc and ok_at is not None else None,
    ),
    st.integers(0, 60),
    st.floats(0, 1),
    st.integers(0, 60),
    st.integers(0, 5),
    st.integers(0, 3),
    st.one_of(st.none(), st.integers(1, 40)),
)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(ticks, min_size=1, max_size=60),
    st.floats(0.1, 5),
    st.one_of(st.none(), st.floats(10, 500)),
    st.one_of(st.none(), st.integers(2, 40)),
)
def test_whatever_the_evidence_the_limits_stay_in_their_bounds(
    sequence: list[Tick], low: float, high: float | None, cap_high: int | None
) -> None:
    params = Params(
        min_rate=low, initial_rate=max(low, 1.0), max_rate=high, max_concurrency=cap_high
    )
    state = law.initial_state(params, 0.0)
    for k, tick in enumerate(sequence):
        state = law.step(state, [replace(tick, start=k * T)], (k + 1) * T + 0.15, params)
        rate = state.rate.rate
        assert low <= rate <= (high if high is not None else math.inf)
        assert not math.isnan(rate)
        if state.rate.limit is not None:
            assert low <= state.rate.limit
        cap = state.cap.cap
        assert cap is None or params.min_concurrency <= cap <= (cap_high or cap)


@settings(max_examples=60, deadline=None)
@given(st.lists(ticks, min_size=1, max_size=30))
def test_the_law_is_a_function_of_its_inputs(sequence: list[Tick]) -> None:
    def run() -> State:
        state = law.initial_state(P, 0.0)
        for k, tick in enumerate(sequence):
            state = law.step(state, [replace(tick, start=k * T)], (k + 1) * T + 0.15, P)
        return state

    assert run() == run()


def test_stored_state_out_of_new_bounds_is_brought_into_them() -> None:
    saved = replace(
        law.initial_state(P, 0.0), rate=RateState(rate=500.0, limit=400.0), cap=CapState(cap=90)
    )
    tight = Params(max_rate=100.0, max_concurrency=10)
    state = law.step(saved, [Tick(start=0.0)], 0.4, tight)
    assert state.rate.rate <= 100.0 and state.rate.limit is not None and state.rate.limit <= 100.0
    assert state.cap.cap == 10


# --- the model of the fleet ----------------------------------------------------------------
# The discrete-event model (bench/limiter_model) runs the law against simulated upstreams
# with proxies, reports, pushes and retries; docs/limiter.md shows every family. Here: the
# scenarios whose targets the law meets, each as one run with a fixed seed.

MEETS = [
    "rate/bucket-1s x1",
    "rate/bucket-1s x10",
    "concurrency/0.2s x3",
    "concurrency/1s x3",
    "no-limit/2000 req/s offered",
    "storm/a handful at idle",
    "storm/15 s under load",
    "noise/bucket-1s + 1% random",
    "scale/3 <-> 10 replicas",
]


@pytest.mark.parametrize("name", MEETS)
def test_the_model_meets_the_targets(name: str) -> None:
    family, _, title = name.partition("/")
    scenario = next(s for s in scenarios.catalogue() if s.family == family and s.name == title)
    result = scenarios.run(scenario, seed=0)
    missed = {
        f"{p.phase.change}: {check}"
        for p in result.phases
        for check, ok in p.checks.items()
        if not ok
    }
    assert not missed, missed
    if family == "noise":
        assert scenarios.noise_pull(result) <= 0.05


def test_a_told_limit_holds_the_rate_just_below_it_and_is_not_probed() -> None:
    clock = Clock()

    def told(rate: float, cap: int | None) -> Tick:
        sent = round(min(rate, 200) * T) if math.isfinite(rate) else 50
        return Tick(sent=sent, throttled=sent, ok=sent, told=40.0)

    rates = [s.rate.rate for s in clock.run(40, told)]
    assert rates[0] == pytest.approx(40.0 * (1 - P.margin))
    assert set(rates) == {rates[0]}  # ten seconds of demand above it: no probe
    assert clock.state.rate.limit == 40.0
