"""The pure rate controller: a state and one window of outcomes in, the next state out.

No clock, no I/O, no randomness: the limiter's leader calls `step` once per window (default
5 s) with the outcomes the proxies reported, and writes the new rate back to the store.
Rates are requests per second. r is the share of a window's attempts that were answered
with a frequency-class 429 (Z.ai 1303/1305, or a 429 without a known code).

The contract (the limiter issue):

- r > 5%, a bad window: the ceiling moves by EWMA (`ceiling_alpha`) toward the rate the
  upstream accepted, rate x (1 - r), floored at the minimum; the rate drops to the hold
  point, ceiling x (1 - `hold_margin`); the clean count resets.
- r < 1% with demand at or above the rate, a clean window: below the hold point the rate
  climbs toward it in steps; at the hold point, after `probe_interval` clean windows, it
  probes to ceiling x (1 + margin); a probe that stays clean raises the ceiling.
- 1% to 5%: hold. Windows whose demand stays below the rate raise nothing.
- The rate stays within [`min_rate`, `max_rate`] and starts at `initial_rate`.

Rules added to make the targets reachable (goodput >= 95% of the hidden limit with <= 2%
429s in steady state; < 5% 429s within two windows of a halving; 90% of a raised limit
within twelve windows), each with its reason:

1. *Measured rate.* The "rate" in rate x (1 - r) is the rate the window actually ran at,
   min(rate, attempts / window): when demand stayed under the admitted rate, the admitted
   rate would credit the upstream with requests nobody sent. A window with more attempts
   than its rate allows ran its first moments at the previous, higher rate (a step takes
   effect a moment after its window ends); its refusals belong to that rate, so the accepted
   rate is counted directly, attempts not refused per second, at most the rate. Charging
   their share to the lower rate cut too deep, to ~75% of the limit (bench/limiter_sim).
2. *Cap.* After a bad window the rate never exceeds that window's accepted rate x (1 -
   margin). The EWMA moves the ceiling only 30% of the way, so after the hidden limit
   halves the hold point would still sit ~70% above it and the next window would again be
   answered ~40% 429s. The smoothed ceiling stays as the memory of where the limit was:
   the rate climbs back toward it and finds out whether the drop was real.
3. *Trials.* Every raise (slow start, climb, probe) is a trial that the next informative
   window judges. A clean trial goes on with a growing step, margin x growth^k (at most
   `max_probe_step`), and a clean probe sets the ceiling to its rate, so a raised limit is
   found in a logarithmic number of windows. A trial that lands in the hold band ends:
   the ceiling becomes that window's accepted rate and the rate its hold point. Holding at
   the trial's rate would answer up to 5% 429s for good (a probe to ceiling x 1.02 of a
   well-learned ceiling lands at ~2%), and going back to the old rate would throw away
   what the trial measured (and, below a stale ceiling, retry the same climb forever).
4. *Hold streak.* `probe_interval` hold-band windows in a row at a settled rate count as
   a failed trial: the band is there to absorb noise, but a limit that dropped a few
   percent would otherwise keep ~3% of attempts answered 429 indefinitely.
5. *Overshoot.* When a bad window judged a trial, or its accepted rate lies above the
   ceiling (which only a trial can cause), the ceiling takes the accepted rate outright
   instead of by EWMA: the upstream was offered more than its limit on purpose and
   accepted exactly its limit, a measurement rather than a noisy surprise. Moving 30% of
   the way would leave the rate at ~75% of a limit just measured, and climbing the rest by
   probing costs several windows (simulated: a limit that rises 8x is reached at 90% in 10
   windows instead of 14); below a stale ceiling, a climb that failed would climb into the
   same limit again after each EWMA step, a bad window each time (bench/limiter_sim). A
   bad window at a settled rate is a surprise: there the EWMA stays.
6. *Slow start.* With no ceiling learned yet (None), clean windows multiply the rate by
   `slow_start_factor`, and the first window with r >= 1% sets the ceiling to its accepted
   rate outright (there is nothing to average with, and nothing to hold to).
7. *Restore.* State read back from the store is clamped into the current bounds first, so
   a changed minimum or maximum takes effect on the next window.

The cluster-wide concurrency cap follows the same rules with concurrency-class 429s (Z.ai
1302) as r, the window's peak in-flight count as the load (saturated when it reached the
cap), and raises of at least one slot. Quota 429s (1308/1310) feed neither limit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from enum import StrEnum

from zai_proxy.limiter.outcomes import Window

DEFAULT_INITIAL_RATE = 5.0  # RATE_LIMIT_INITIAL, requests per second
DEFAULT_MIN_RATE = 0.1  # RATE_LIMIT_MIN
DEFAULT_MAX_RATE = 100.0  # RATE_LIMIT_MAX
DEFAULT_CEILING_ALPHA = 0.3  # RATE_LIMIT_CEILING_ALPHA
DEFAULT_HOLD_MARGIN = 0.02  # RATE_LIMIT_HOLD_MARGIN
DEFAULT_PROBE_INTERVAL = 3  # RATE_LIMIT_PROBE_INTERVAL, clean windows before a probe
DEFAULT_WINDOW_SECONDS = 5.0  # RATE_LIMIT_WINDOW_SECONDS
DEFAULT_CLEAN_RATIO = 0.01  # below: a clean window
DEFAULT_BAD_RATIO = 0.05  # above: a bad window
DEFAULT_SLOW_START_FACTOR = 2.0
DEFAULT_PROBE_GROWTH = 2.0  # each clean trial doubles the next step: 2%, 4%, 8%, ...
DEFAULT_MAX_PROBE_STEP = 1.0  # a trial at most doubles the rate
DEFAULT_MIN_CONCURRENCY = 1  # CONCURRENCY_LIMIT_MIN
DEFAULT_MAX_CONCURRENCY = 256  # CONCURRENCY_LIMIT_MAX, also the start: no cap until a 1302

# Steps compare floats that went through a multiplication; equal means equal within this.
_REL_EPS = 1e-9
# growth ** streak is capped here so that a long streak cannot overflow a float.
_MAX_STREAK_EXPONENT = 32


class Decision(StrEnum):
    """What one controller step did to a limit."""

    INCREASE = "increase"
    DECREASE = "decrease"
    PROBE = "probe"
    HOLD = "hold"


@dataclass(frozen=True, slots=True)
class RateLimitParams:
    """Bounds and tuning of the controller; validated on construction."""

    initial_rate: float = DEFAULT_INITIAL_RATE
    min_rate: float = DEFAULT_MIN_RATE
    max_rate: float = DEFAULT_MAX_RATE
    ceiling_alpha: float = DEFAULT_CEILING_ALPHA
    hold_margin: float = DEFAULT_HOLD_MARGIN
    probe_interval: int = DEFAULT_PROBE_INTERVAL
    window_seconds: float = DEFAULT_WINDOW_SECONDS
    clean_ratio: float = DEFAULT_CLEAN_RATIO
    bad_ratio: float = DEFAULT_BAD_RATIO
    slow_start_factor: float = DEFAULT_SLOW_START_FACTOR
    probe_growth: float = DEFAULT_PROBE_GROWTH
    max_probe_step: float = DEFAULT_MAX_PROBE_STEP
    min_concurrency: int = DEFAULT_MIN_CONCURRENCY
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY

    def __post_init__(self) -> None:
        for name in (
            "initial_rate", "min_rate", "max_rate", "ceiling_alpha", "hold_margin",
            "window_seconds", "clean_ratio", "bad_ratio", "slow_start_factor",
            "probe_growth", "max_probe_step",
        ):  # fmt: skip
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{name} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"{name} must be finite, got {value!r}")
        for name in ("probe_interval", "min_concurrency", "max_concurrency"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an int, got {value!r}")
        _require(self.min_rate > 0, "min_rate must be > 0")
        _require(
            self.min_rate <= self.initial_rate <= self.max_rate,
            "rates must satisfy min_rate <= initial_rate <= max_rate",
        )
        _require(0 < self.ceiling_alpha <= 1, "ceiling_alpha must be in (0, 1]")
        _require(0 <= self.hold_margin < 1, "hold_margin must be in [0, 1)")
        _require(self.probe_interval >= 1, "probe_interval must be >= 1")
        _require(self.window_seconds > 0, "window_seconds must be > 0")
        _require(
            0 < self.clean_ratio <= self.bad_ratio < 1,
            "ratios must satisfy 0 < clean_ratio <= bad_ratio < 1",
        )
        _require(self.slow_start_factor > 1, "slow_start_factor must be > 1")
        _require(1 <= self.probe_growth <= 10, "probe_growth must be in [1, 10]")
        _require(0 < self.max_probe_step <= 10, "max_probe_step must be in (0, 10]")
        _require(self.min_concurrency >= 1, "min_concurrency must be >= 1")
        _require(
            self.min_concurrency <= self.max_concurrency,
            "min_concurrency must be <= max_concurrency",
        )


@dataclass(frozen=True, slots=True)
class ControllerState:
    """Everything the controller remembers between windows (persisted by the limiter)."""

    rate: float
    concurrency: float
    ceiling: float | None = None  # None: no ceiling learned yet (slow start)
    clean_windows: int = 0  # clean windows with demand in a row, at a settled rate
    hold_windows: int = 0  # hold-band windows in a row, at a settled rate
    probing: bool = False  # the rate is a trial raise that the next informative window judges
    probe_streak: int = 0  # clean trials in a row; sizes the next step
    concurrency_ceiling: float | None = None
    concurrency_clean_windows: int = 0
    concurrency_hold_windows: int = 0
    concurrency_probing: bool = False
    concurrency_probe_streak: int = 0
    last_decision: Decision = Decision.HOLD
    concurrency_decision: Decision = Decision.HOLD

    @property
    def concurrency_limit(self) -> int:
        """The in-flight cap that admission enforces: whole requests, at least one."""
        return max(1, math.floor(self.concurrency))


def initial_state(params: RateLimitParams) -> ControllerState:
    """The state before any window: the initial rate, no cap on concurrency, nothing learned."""
    return ControllerState(rate=params.initial_rate, concurrency=float(params.max_concurrency))


def step(
    state: ControllerState, window: Window, params: RateLimitParams
) -> tuple[ControllerState, Decision]:
    """Step both limits by one window; return the new state and what happened to the rate."""
    attempts = window.attempts
    rate_bounds = _Bounds(params.min_rate, params.max_rate, min_step=0.0)
    rate = _restore(
        _Limit(
            state.rate, state.ceiling, state.clean_windows, state.hold_windows,
            state.probing, state.probe_streak,
        ),
        rate_bounds,
    )  # fmt: skip
    rate_signal = _Signal(
        ratio=window.frequency_ratio,
        load=attempts / params.window_seconds,
        saturated=attempts > 0
        and window.demand >= _requests_at(rate.value * params.window_seconds),
        one=1 / params.window_seconds,
    )
    rate, rate_decision = _step_limit(rate, rate_signal, rate_bounds, params)

    concurrency_bounds = _Bounds(
        float(params.min_concurrency), float(params.max_concurrency), min_step=1.0
    )
    concurrency = _restore(
        _Limit(
            state.concurrency, state.concurrency_ceiling, state.concurrency_clean_windows,
            state.concurrency_hold_windows, state.concurrency_probing,
            state.concurrency_probe_streak,
        ),
        concurrency_bounds,
    )  # fmt: skip
    if window.peak_concurrency is None:
        # Without the peak in-flight count a 1302 ratio says nothing about where the cap is.
        concurrency_decision = Decision.HOLD
    else:
        concurrency_signal = _Signal(
            ratio=window.concurrency_ratio,
            load=float(window.peak_concurrency),
            saturated=attempts > 0 and window.peak_concurrency >= _requests_at(concurrency.value),
            one=1.0,
        )
        concurrency, concurrency_decision = _step_limit(
            concurrency, concurrency_signal, concurrency_bounds, params
        )

    new_state = ControllerState(
        rate=rate.value,
        ceiling=rate.ceiling,
        clean_windows=rate.clean_windows,
        hold_windows=rate.hold_windows,
        probing=rate.probing,
        probe_streak=rate.probe_streak,
        concurrency=concurrency.value,
        concurrency_ceiling=concurrency.ceiling,
        concurrency_clean_windows=concurrency.clean_windows,
        concurrency_hold_windows=concurrency.hold_windows,
        concurrency_probing=concurrency.probing,
        concurrency_probe_streak=concurrency.probe_streak,
        last_decision=rate_decision,
        concurrency_decision=concurrency_decision,
    )
    return new_state, rate_decision


@dataclass(frozen=True, slots=True)
class _Limit:
    """One learned limit (the rate or the concurrency cap) in working form."""

    value: float
    ceiling: float | None
    clean_windows: int = 0
    hold_windows: int = 0
    probing: bool = False
    probe_streak: int = 0


@dataclass(frozen=True, slots=True)
class _Signal:
    """What one window says about one limit."""

    ratio: float  # share of attempts refused by this limit's 429 class
    load: float  # what the window actually exercised, in the limit's unit
    saturated: bool  # demand reached the limit, so a clean window carries information
    one: float  # one request in the load's unit (counts are whole requests)


@dataclass(frozen=True, slots=True)
class _Bounds:
    """Where one limit may go, and its smallest raise."""

    low: float
    high: float
    min_step: float


def _step_limit(
    limit: _Limit, signal: _Signal, bounds: _Bounds, params: RateLimitParams
) -> tuple[_Limit, Decision]:
    if signal.ratio > params.bad_ratio or (
        signal.ratio >= params.clean_ratio and limit.ceiling is None
    ):
        return _decrease(limit, signal, bounds, params), Decision.DECREASE
    if signal.ratio >= params.clean_ratio:
        if limit.probing:
            return _settle_at_accepted(limit, signal, bounds, params), Decision.HOLD
        hold_windows = limit.hold_windows + 1
        if hold_windows >= params.probe_interval:
            return _settle_at_accepted(limit, signal, bounds, params), Decision.DECREASE
        return replace(limit, clean_windows=0, hold_windows=hold_windows), Decision.HOLD

    limit = replace(limit, hold_windows=0)
    if not signal.saturated:
        return limit, Decision.HOLD
    if limit.probing:
        return _continue_trial(limit, bounds, params)
    limit = replace(limit, clean_windows=limit.clean_windows + 1)
    below_hold = limit.ceiling is None or limit.value < _hold_point(limit.ceiling, params) * (
        1 - _REL_EPS
    )
    if below_hold or limit.clean_windows >= params.probe_interval:
        return _start_trial(limit, 0, bounds, params)
    return limit, Decision.HOLD


def _decrease(limit: _Limit, signal: _Signal, bounds: _Bounds, params: RateLimitParams) -> _Limit:
    accepted = _accepted(limit, signal)
    if limit.ceiling is None or accepted > limit.ceiling or limit.probing:
        ceiling = accepted
    else:
        ceiling = limit.ceiling + params.ceiling_alpha * (accepted - limit.ceiling)
    ceiling = _clamp(ceiling, bounds)
    return _Limit(
        value=_clamp(min(ceiling, accepted) * (1 - params.hold_margin), bounds),
        ceiling=ceiling,
    )


def _settle_at_accepted(
    limit: _Limit, signal: _Signal, bounds: _Bounds, params: RateLimitParams
) -> _Limit:
    ceiling = _clamp(_accepted(limit, signal), bounds)
    return _Limit(value=_clamp(_hold_point(ceiling, params), bounds), ceiling=ceiling)


def _continue_trial(
    limit: _Limit, bounds: _Bounds, params: RateLimitParams
) -> tuple[_Limit, Decision]:
    ceiling = limit.ceiling
    if ceiling is not None:
        if limit.value > ceiling:
            # The upstream took the probe's rate without complaint: the limit is at least that.
            limit = replace(limit, ceiling=limit.value)
        elif limit.value >= _hold_point(ceiling, params) * (1 - _REL_EPS):
            # A climb reached the hold point; probing above it waits for the probe interval.
            return _settled(limit), Decision.HOLD
    return _start_trial(limit, limit.probe_streak + 1, bounds, params)


def _start_trial(
    limit: _Limit, streak: int, bounds: _Bounds, params: RateLimitParams
) -> tuple[_Limit, Decision]:
    exponent = min(streak, _MAX_STREAK_EXPONENT)
    step_size = min(params.hold_margin * params.probe_growth**exponent, params.max_probe_step)
    value = limit.value
    if limit.ceiling is None:
        target, decision = value * params.slow_start_factor, Decision.INCREASE
    else:
        hold = _hold_point(limit.ceiling, params)
        if value < hold * (1 - _REL_EPS):
            raised = max(value * (1 + step_size), value + bounds.min_step)
            target, decision = min(hold, raised), Decision.INCREASE
        else:
            target = max(limit.ceiling * (1 + step_size), value + bounds.min_step)
            decision = Decision.PROBE
    target = min(target, bounds.high)
    if target <= value * (1 + _REL_EPS):
        # Nowhere to go (at the maximum, or a zero margin): stay, and count it as settled.
        return _settled(limit), Decision.HOLD
    trial = _Limit(value=target, ceiling=limit.ceiling, probing=True, probe_streak=streak)
    return trial, decision


def _settled(limit: _Limit) -> _Limit:
    return _Limit(value=limit.value, ceiling=limit.ceiling)


def _accepted(limit: _Limit, signal: _Signal) -> float:
    """What the upstream accepted: the rate the window ran at, less the refused share.

    A window with more attempts than its rate allows (beyond one request of rounding) ran in
    part at an earlier, higher rate: its first moments, before the step that cut the rate
    took effect. Its refusals belong to that rate, and charging their share to the lower
    one would cut twice; so the accepted rate is counted as it is, attempts not refused per
    second, at most the rate.
    """
    if signal.load > limit.value + signal.one:
        return max(0.0, min(limit.value, signal.load * (1 - signal.ratio)))
    return max(0.0, min(limit.value, signal.load) * (1 - signal.ratio))


def _hold_point(ceiling: float, params: RateLimitParams) -> float:
    return ceiling * (1 - params.hold_margin)


def _clamp(value: float, bounds: _Bounds) -> float:
    return min(max(value, bounds.low), bounds.high)


def _restore(limit: _Limit, bounds: _Bounds) -> _Limit:
    """Bring stored state into the current bounds; unusable numbers fall back to the bounds."""
    value = _clamp(limit.value, bounds) if math.isfinite(limit.value) else bounds.low
    ceiling = limit.ceiling
    if ceiling is not None:
        ceiling = _clamp(ceiling, bounds) if math.isfinite(ceiling) else None
    return _Limit(
        value=value,
        ceiling=ceiling,
        clean_windows=max(0, limit.clean_windows),
        hold_windows=max(0, limit.hold_windows),
        probing=limit.probing,
        probe_streak=max(0, limit.probe_streak),
    )


def _requests_at(level: float) -> int:
    """Whole requests that count as reaching `level`: counts are integers and levels rarely
    are, so anything within one request counts, but never fewer than one request."""
    return max(1, math.floor(level))


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)
