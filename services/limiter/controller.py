"""The control law: the limits in force and the evidence of the attempts sent at them in,
the next limits out. Pure: times are passed in; no clock, no I/O, no randomness.

The limiter steps it every tick (a quarter of a second by default) with the counts the
proxies reported for the ticks that ended since the last step. Each limit is judged only
by the attempts sent while it was in force, so a decision never rests on evidence from
another rate, and it is taken as soon as that evidence is enough, not at a window's end.

The request rate:

- *No evidence, no limit.* Before the first frequency-class 429 there is no learned limit:
  while demand fills the rate it doubles every tick (slow start, from ``initial_rate``),
  and nothing caps it but ``max_rate`` (unset: nothing).
- *A cut goes to what the upstream just accepted.* Attempts sent at the rate in force are
  weighed with a sequential test (Wald's SPRT, noise rate ``noise`` against ``over``):
  each 429 moves the evidence toward "over the limit", each accepted attempt away from it,
  so three quick 429s decide as surely as a steady few percent over a hundred attempts, and
  1% background noise never decides. Over the limit, the rate goes to the accepted rate
  (attempts not refused, per second) less the ``margin``, and that accepted rate becomes
  the learned limit in proportion to how many attempts it rests on: a handful of 429s at
  idle move it little and never cut below what was just accepted.
- *Probing.* With demand above the rate and no 429, the rate returns to the learned limit
  at once (it was cut below it on thin evidence) and, from there, probes above it: a
  step of ``probe_gain``, doubling after every clean step (CUBIC's convex search). A clean
  step raises the learned limit to its rate; the first 429 of a probe ends it at once for
  every replica (the store puts back ``probe_base`` when the 429 is reported: a push, not
  the next step). Probes are paid for from a budget of ``probe_budget`` of the accepted
  attempts, so at a steady limit they cost that share of 429s at most.

The concurrency cap (Z.ai 1302) follows the same shape with in-flight counts, which are
exact evidence: a 1302 that came with n attempts in flight (its own included) says the
limit is below n, so the cap goes to n - 1, unless answers came back ok at n or more a
moment ago (then the two sides' counts crossed at the limit: only a few such 1302s in a
row lower it); an answer that came back ok at the cap during a probe says the limit is at
least the cap. Until the first 1302 there is no cap.

A limit the upstream states in its answers' headers (``RateLimit-Policy``, OpenAI's and
Anthropic's per-minute request limits) needs no learning: the rate holds just below it.

Quota (1308/1310) and congestion (1312) 429s feed neither limit: no admission rate brings
a spent quota back, and an overloaded model is not our key's limit.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum

DEFAULT_TICK_SECONDS = 0.25  # RATE_LIMIT_TICK
DEFAULT_INITIAL_RATE = 20.0  # RATE_LIMIT_INITIAL, requests per second
DEFAULT_MIN_RATE = 0.1  # RATE_LIMIT_MIN
DEFAULT_MAX_RATE: float | None = None  # RATE_LIMIT_MAX: no cap without evidence
DEFAULT_MARGIN = 0.02  # RATE_LIMIT_HOLD_MARGIN
DEFAULT_PROBE_GAIN = 0.05  # RATE_LIMIT_PROBE_GAIN, the first probe step above the limit
DEFAULT_PROBE_BUDGET = 0.01  # RATE_LIMIT_PROBE_BUDGET, share of accepted attempts
DEFAULT_MIN_CONCURRENCY = 1  # CONCURRENCY_LIMIT_MIN
DEFAULT_MAX_CONCURRENCY: int | None = None  # CONCURRENCY_LIMIT_MAX: no cap without evidence

# The sequential test: background 429 rate taken as noise, and the rate that means "over".
NOISE_RATIO = 0.01
OVER_RATIO = 0.03
# Wald's thresholds for 5% wrong decisions either way: log((1 - b) / a).
_DECIDE = math.log(19.0)
# Raises need evidence that leans this far toward noise (half way to deciding it).
_CLEAN = -_DECIDE / 2
# Attempts at which a measured accepted rate replaces the learned limit entirely.
EVIDENCE_ATTEMPTS = 6.0
# A probe step runs at least this long (and at least one round trip) before it counts as
# clean: long enough for a 429 to come back and be reported.
PROBE_STEP_SECONDS = 0.5
# Seconds at the hold point before a probe, at least.
PROBE_HOLD_SECONDS = 1.0
# Cuts weighed below this remember the limit before them (see _cut).
MEMORY_WEIGHT = 0.9
# Ticks of ok answers kept for Little's law: two round trips of up to ten seconds.
ANSWER_TICKS = 80
# Little's law's estimate of a full upstream is rounded up past this share of slack (the
# gaps between an answer and the next attempt on its slot).
_LITTLE_SLACK = 0.05
# A 1302 at or under a count answered ok this recently is a crossing (see _step_cap) ...
OK_MEMORY_SECONDS = 5.0
# ... and this many crossings in a row lower the cap anyway.
MAX_CROSSINGS = 3
# A limit the upstream's headers stated holds this long after the last answer that said so.
TOLD_MEMORY_SECONDS = 60.0
# A cut measures what was accepted over at least this many ticks (two seconds).
RECENT_TICKS = 8
# A cut with at least this many attempts in its recent ticks and none accepted pauses.
PAUSE_ATTEMPTS = 3
# A pause shorter than this is not a window that ran out: a resume re-measures nothing.
MIN_WINDOW_PAUSE_SECONDS = 1.0
# A resume re-measures the limit when the cycle before it accepted at least this many.
RESUME_ATTEMPTS = 18
# The trickle a pause sends, as a share of the limit.
PAUSE_SHARE = 0.05
# A probe that climbed to this many times the limit it started from found a higher one:
# its last clean step is kept when a 429 ends it (see _probe).
RISE_EVIDENCE = 1.5
# The first step of a probe runs at most this long (see _probe).
MAX_FIRST_STEP_SECONDS = 3.0
# A rate seen over the limit bounds probes (they bisect below it) for this long.
OVER_MEMORY_SECONDS = 4.0
# A learned horizon is forgotten after this long without a pause.
HORIZON_MEMORY_SECONDS = 120.0
# Probe credit is capped, so a long quiet spell does not buy a run of probes, and so is
# what one probe can be charged.
MAX_PROBE_CREDIT = 2.0
MAX_PROBE_CHARGE = 5
# 429s this long after a probe failed are still its cost.
PROBE_AFTERMATH_SECONDS = 2.0
# Tick starts and "since" are the same clock's seconds; equal means equal within this.
_TIME_EPS = 1e-6
# Steps compare floats that went through a multiplication; equal means equal within this.
_REL_EPS = 1e-9


class Decision(StrEnum):
    """What one step did to a limit."""

    INCREASE = "increase"
    DECREASE = "decrease"
    PROBE = "probe"
    HOLD = "hold"


@dataclass(frozen=True, slots=True)
class Params:
    """Bounds and tuning of the law; validated on construction."""

    tick_seconds: float = DEFAULT_TICK_SECONDS
    initial_rate: float = DEFAULT_INITIAL_RATE
    min_rate: float = DEFAULT_MIN_RATE
    max_rate: float | None = DEFAULT_MAX_RATE
    margin: float = DEFAULT_MARGIN
    probe_gain: float = DEFAULT_PROBE_GAIN
    probe_budget: float = DEFAULT_PROBE_BUDGET
    min_concurrency: int = DEFAULT_MIN_CONCURRENCY
    max_concurrency: int | None = DEFAULT_MAX_CONCURRENCY

    def __post_init__(self) -> None:
        for name in ("tick_seconds", "initial_rate", "min_rate", "margin", "probe_gain",
                     "probe_budget", "max_rate"):  # fmt: skip
            value = getattr(self, name)
            if value is None and name == "max_rate":
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{name} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"{name} must be finite, got {value!r}")
        for name in ("min_concurrency", "max_concurrency"):
            value = getattr(self, name)
            if value is None and name == "max_concurrency":
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an int, got {value!r}")
        _require(self.tick_seconds > 0, "tick_seconds must be > 0")
        _require(self.min_rate > 0, "min_rate must be > 0")
        _require(self.min_rate <= self.initial_rate, "initial_rate must be >= min_rate")
        _require(
            self.max_rate is None or self.initial_rate <= self.max_rate,
            "max_rate must be >= initial_rate",
        )
        _require(0 <= self.margin < 0.5, "margin must be in [0, 0.5)")
        _require(0 < self.probe_gain <= 1, "probe_gain must be in (0, 1]")
        _require(0 <= self.probe_budget <= 0.5, "probe_budget must be in [0, 0.5]")
        _require(self.min_concurrency >= 1, "min_concurrency must be >= 1")
        _require(
            self.max_concurrency is None or self.min_concurrency <= self.max_concurrency,
            "min_concurrency must be <= max_concurrency",
        )

    @property
    def rate_high(self) -> float:
        """The highest rate: max_rate, or none (infinity)."""
        return math.inf if self.max_rate is None else self.max_rate


@dataclass(frozen=True, slots=True)
class Tick:
    """What the proxies reported for one tick.

    ``sent`` and ``throttled`` are counted when attempts leave (``throttled``: attempts that
    waited for the rate or were held back, so demand reached the rate); outcomes when their
    answers come back. ``ok_at`` is the highest in-flight count at which an attempt sent
    under the cap in force was answered ok, ``refused_at`` the lowest at which one was
    answered 1302; ``capped`` counts attempts that waited for a concurrency slot.
    """

    start: float = 0.0  # when the tick began (store clock, epoch seconds)
    sent: int = 0
    throttled: int = 0
    ok: int = 0
    limited: int = 0  # frequency-class 429s
    concurrency_limited: int = 0  # 1302s
    capped: int = 0
    ok_at: int | None = None
    refused_at: int | None = None
    latency_sum: float = 0.0  # seconds, over ok answers
    latency_count: int = 0
    told: float | None = None  # the lowest rate an answer's headers stated (requests/s)


@dataclass(frozen=True, slots=True)
class RateState:
    """The request rate and what it was learned from."""

    rate: float  # what acquire enforces; infinity: no limit
    limit: float | None = None  # the learned limit; None: no evidence yet
    since: float = 0.0  # when the rate was set (the evidence counts from here)
    memory: float | None = None  # the limit before the last cut: where to return when clean
    base: float | None = None  # during a probe: the rate to go back to (the store's push)
    base_limit: float | None = None  # during a probe: the limit that goes with its base
    probe_from: float | None = None  # during a probe: the limit it started from
    step_until: float = 0.0  # during a probe: when its current step may be judged
    over: float | None = None  # a rate recently seen over the limit: probes bisect below it
    over_at: float = 0.0
    credit: float = 1.0  # 429s the probe budget still pays for (negative: in debt)
    charged_until: float = 0.0  # 429s until then are the last probe's, paid from the credit
    charged: int = 0  # 429s charged to the last probe so far (at most MAX_PROBE_CHARGE)
    held_since: float | None = None  # when the rate reached the hold point
    limited_at: float = 0.0  # when the last frequency 429 was seen
    # The sequential test over the attempts sent at this rate, and how many it rests on.
    llr: float = 0.0
    run_sent: int = 0
    run_accepted: int = 0
    run_seconds: float = 0.0
    # What the upstream accepted in the last few ticks, whatever the rate: the shortest
    # horizon a cut measures the limit over.
    # What the upstream accepted since the last resume: a window-based limit's cycle.
    cycle_seconds: float = 0.0
    cycle_accepted: int = 0
    recent: tuple[tuple[int, int], ...] = ()  # (sent, accepted) of the last RECENT_TICKS ticks
    paused: bool = False  # everything was refused: sending a trickle until something passes
    told: float | None = None  # the rate the upstream's headers stated lately: no learning
    told_at: float = 0.0
    paused_at: float = 0.0
    # How long the upstream remembers what it was sent: the longest recent pause (a fixed
    # window that ran out refuses until it ends). Probe steps run at least this long.
    horizon: float = 0.0
    horizon_at: float = 0.0
    returning: bool = False  # the probe is a return to ``memory``, not a search above it


@dataclass(frozen=True, slots=True)
class CapState:
    """The concurrency cap and what it was learned from."""

    cap: int | None = None  # None: no cap
    epoch: int = 0  # changes with every cap, so ok answers from an older cap are told apart
    since: float = 0.0
    base: int | None = None  # during a probe: the cap it started from
    step: int = 1
    credit: float = 1.0
    ok_at: int | None = None  # the highest in-flight count answered ok under this cap
    refused_at: int | None = None
    capped: int = 0
    ok: int = 0
    seconds: float = 0.0
    # The highest in-flight count answered ok lately (under any cap), and when: a 1302 at
    # or under it is the two sides' counts crossing at the limit, not a lower limit.
    ok_best: int | None = None
    ok_best_at: float = 0.0
    crossings: int = 0  # such 1302s since the cap was set
    answers: tuple[int, ...] = ()  # ok answers of the last few ticks


@dataclass(frozen=True, slots=True)
class State:
    """Both limits, plus the round trip measured from ok answers."""

    rate: RateState
    cap: CapState = field(default_factory=CapState)
    round_trip: float | None = None  # seconds, smoothed
    rate_decision: Decision = Decision.HOLD
    cap_decision: Decision = Decision.HOLD


def initial_state(params: Params, now: float) -> State:
    """Before any evidence: slow start from the initial rate, no concurrency cap."""
    return State(rate=RateState(rate=_bounded(params.initial_rate, params), since=now))


def step(state: State, ticks: Iterable[Tick], now: float, params: Params) -> State:
    """One step of both limits with the ticks that ended since the last step (empty ones
    included: a tick without attempts is evidence of its own)."""
    ticks = list(ticks)
    round_trip = _round_trip(state.round_trip, _sum(ticks))
    dwell = max(PROBE_STEP_SECONDS, round_trip or 0.0)
    rate, cap = _restore_rate(state.rate, params), _restore_cap(state.cap, params)
    # Each limit is judged by the ticks that began after it was set.
    cap_ticks = [t for t in ticks if t.start >= cap.since - _TIME_EPS]
    rate, rate_decision = _step_rate(rate, ticks, now, dwell, params)
    cap_seconds = params.tick_seconds * len(cap_ticks)
    cap = _count_answers(cap, ticks)
    cap, cap_decision = _step_cap(cap, _sum(cap_ticks), cap_seconds, now, dwell, round_trip, params)
    return State(rate, cap, round_trip, rate_decision, cap_decision)


# --- the rate ---------------------------------------------------------------------------

# Each accepted attempt and each 429 move the log-likelihood ratio by these.
_LLR_OK = math.log((1 - OVER_RATIO) / (1 - NOISE_RATIO))
_LLR_429 = math.log(OVER_RATIO / NOISE_RATIO)


def _step_rate(
    s: RateState, ticks: Sequence[Tick], now: float, dwell: float, params: Params
) -> tuple[RateState, Decision]:
    s = _weigh(s, ticks, params)
    if s.llr >= _DECIDE:
        return _cut(s, now, params), Decision.DECREASE
    told = _min_float(None, min((t.told for t in ticks if t.told), default=None))
    if told is not None:
        s = replace(s, told=told, told_at=now)
    if s.told is not None and now - s.told_at < TOLD_MEMORY_SECONDS:
        # The upstream says its limit: hold just below it; nothing to learn or probe.
        if s.limit == s.told and s.base is None and not s.paused:
            return s, Decision.HOLD
        held = _set_rate(s, s.told * (1 - params.margin), now, params, limit=s.told)
        decision = Decision.DECREASE if held.rate < s.rate else Decision.INCREASE
        return replace(held, memory=None, held_since=now), decision
    judged = [t for t in ticks if t.start >= s.since - _TIME_EPS]
    if s.paused:
        if not any(t.sent > t.limited for t in judged):
            return s, Decision.HOLD
        # Something passed again: back to the limit, as a probe the first 429 ends (back
        # to the trickle). A window-based limit that ran out measures itself here: what it
        # accepted over the whole cycle, the pause included, is its rate.
        limit, memory = s.limit, s.memory
        if (
            s.cycle_accepted >= RESUME_ATTEMPTS
            and s.cycle_seconds > 0
            and now - s.paused_at >= MIN_WINDOW_PAUSE_SECONDS
        ):
            measured = s.cycle_accepted / s.cycle_seconds
            # The limit before the pause stays as the memory to go back to: right after a
            # storm or an outage, wrong after a window that a probe ran out (then the
            # return runs out the next window too, and ends there).
            memory = _max_float(memory, limit) if limit is not None and measured < limit else None
            limit = measured if limit is None else min(limit, measured)
        target = limit * (1 - params.margin) if limit is not None else params.initial_rate
        resumed = _set_rate(s, target, now, params, limit=limit)
        return (
            replace(
                resumed,
                horizon=max(_horizon(s, now), now - s.paused_at),
                horizon_at=now,
                cycle_seconds=0.0,
                cycle_accepted=0,
                base=s.rate,
                step_until=now + dwell,
                memory=memory,
            ),
            Decision.INCREASE,
        )
    if s.limit is None and s.llr <= 0 and _filled(ticks, s.rate, params):
        # Slow start: demand filled the rate (the tick the last doubling fell in counts
        # too), and nothing was refused: double again, every tick.
        return _set_rate(s, 2 * s.rate, now, params), Decision.INCREASE
    if s.llr > 0 or not any(t.throttled for t in judged):
        # The evidence leans toward "over" without deciding yet, or demand stayed below
        # the rate: nothing to raise on.
        return s, Decision.HOLD
    if s.limit is None:
        return s, Decision.HOLD
    learned = s.limit
    over = s.over if s.over is not None and now - s.over_at < OVER_MEMORY_SECONDS else None
    hold = learned * (1 - params.margin)
    if s.base is not None:
        if now < s.step_until:
            return s, Decision.HOLD
        if s.rate <= learned * (1 + _REL_EPS):
            # A resume that stayed clean: it holds there.
            return replace(s, base=None, held_since=now), Decision.HOLD
        if s.returning:
            # Back where the limit was before it was cut: it holds there, and searching
            # above it waits for the usual evidence and budget.
            limit = s.rate
            settled = _set_rate(s, limit * (1 - params.margin), now, params, limit=limit)
            memory = (
                s.memory if s.memory is not None and s.memory > limit * (1 + _REL_EPS) else None
            )
            return replace(settled, held_since=now, memory=memory), Decision.INCREASE
        # The step stayed clean: the limit is at least its rate. The next step doubles
        # its gain, but never past the middle of what is left below a rate seen over it.
        limit = max(learned, s.rate)
        target = limit * (1 + min(1.0, 2 * (s.rate / learned - 1)))
        if over is not None and limit >= over * (1 - params.margin):
            # A clean step at the rate once seen over the limit: the limit has risen.
            over, s = None, replace(s, over=None)
        if over is not None and over > limit:
            if over <= limit * (1 + params.probe_gain):
                settled = _set_rate(s, limit * (1 - params.margin), now, params, limit=limit)
                return replace(settled, held_since=now, memory=None), Decision.INCREASE
            target = min(target, (limit + over) / 2)
        return _probe(s, limit, target, now, dwell, params), Decision.PROBE
    if s.rate < hold * (1 - _REL_EPS):
        rate = _set_rate(s, min(hold, 2 * s.rate), now, params)
        return replace(rate, held_since=now if rate.rate >= hold else None), Decision.INCREASE
    held_since = s.held_since if s.held_since is not None else now
    if now - held_since < dwell:
        return replace(s, held_since=held_since), Decision.HOLD
    if s.memory is not None and s.memory > learned * (1 + params.probe_gain):
        # Cut below where the limit was on evidence that is now clean: go back at once,
        # as a probe that the first 429 ends (CUBIC's fast return to its last maximum).
        target = min(s.memory, 2 * learned)
        if over is not None and over > learned:
            target = min(target, (learned + over) / 2)
        probe = _probe(s, learned, target, now, dwell, params)
        return replace(probe, returning=True, step_until=now + dwell), Decision.PROBE
    wide = over is not None and over > learned * (1 + 2 * params.probe_gain)
    # A probe from the hold point waits until the evidence there leans clearly to noise:
    # a hold that is itself a little over the limit must be found and cut first.
    if now - held_since < PROBE_HOLD_SECONDS or s.llr > _CLEAN or not (wide or s.credit >= 1):
        return replace(s, held_since=held_since), Decision.HOLD
    target = (
        (learned + over) / 2 if wide and over is not None else learned * (1 + params.probe_gain)
    )
    probe = _probe(s, learned, target, now, dwell, params)
    if probe.rate <= s.rate * (1 + _REL_EPS):
        return replace(s, held_since=held_since), Decision.HOLD  # at max_rate
    return probe, Decision.PROBE


def _filled(ticks: Sequence[Tick], rate: float, params: Params) -> bool:
    """Demand filled the rate: attempts waited for it, and at least half of it was sent."""
    sent = sum(t.sent for t in ticks)
    return any(t.throttled for t in ticks) and sent >= 0.5 * rate * params.tick_seconds * len(ticks)


def _weigh(s: RateState, ticks: Sequence[Tick], params: Params) -> RateState:
    """Add ticks to the evidence: the sequential test takes those sent at this rate, the
    horizons every tick."""
    llr, run_sent, run_accepted, limited_at = s.llr, s.run_sent, s.run_accepted, s.limited_at
    run_seconds = s.run_seconds
    recent = s.recent
    cycle_seconds, cycle_accepted = s.cycle_seconds, s.cycle_accepted
    credit, charged = s.credit, s.charged
    for tick in ticks:
        accepted = max(0, tick.sent - tick.limited)
        if tick.limited:
            limited_at = max(limited_at, tick.start + params.tick_seconds)
        recent = (*recent[-(RECENT_TICKS - 1) :], (tick.sent, accepted))
        cycle_seconds += params.tick_seconds
        cycle_accepted += accepted
        if tick.start < s.since - _TIME_EPS:
            continue
        credit = min(MAX_PROBE_CREDIT, credit + params.probe_budget * accepted)
        if (s.base is not None or tick.start < s.charged_until) and charged < MAX_PROBE_CHARGE:
            # A probe pays for its 429s, at most MAX_PROBE_CHARGE: a storm or a drop that
            # begins meanwhile is not its doing.
            charge = min(tick.limited, MAX_PROBE_CHARGE - charged)
            credit, charged = credit - charge, charged + charge
        if tick.limited and llr <= 0:
            # The first 429 of a run: what the decision will rest on starts here, not
            # with the quiet attempts before it.
            run_sent, run_accepted, run_seconds = 0, 0, 0.0
        llr += tick.limited * _LLR_429 + accepted * _LLR_OK
        run_sent += tick.sent
        run_accepted += accepted
        run_seconds += params.tick_seconds
        if llr <= -_DECIDE:
            llr, run_sent, run_accepted, run_seconds = -_DECIDE, 0, 0, 0.0
    return replace(
        s,
        llr=llr,
        run_sent=run_sent,
        run_accepted=run_accepted,
        run_seconds=run_seconds,
        limited_at=limited_at,
        cycle_seconds=cycle_seconds,
        cycle_accepted=cycle_accepted,
        recent=recent,
        credit=credit,
        charged=charged,
    )


def _probe(
    s: RateState, limit: float, target: float, now: float, dwell: float, params: Params
) -> RateState:
    """A probe step to ``target``: long enough, the first time, to spend what a token bucket
    saved while the rate sat below the limit (margin x time since the last 429, twice over),
    so that saved tokens are not taken for a higher limit."""
    gain = max(target / limit - 1, _REL_EPS)
    first = s.base is None
    saved = 2 * params.margin / gain * max(0.0, now - s.limited_at) if first else 0.0
    probe = _set_rate(s, target, now, params, limit=limit)
    step = max(dwell, _horizon(s, now), min(MAX_FIRST_STEP_SECONDS, saved))
    charged = 0 if first else s.charged
    start = limit if first or s.probe_from is None else s.probe_from
    # A 429 ends the probe at its base: the last clean step when the probe has climbed far
    # (a limit that rose), else where it started, since short clean steps above a token
    # bucket spend its saved tokens and prove little.
    base_limit = limit if limit >= RISE_EVIDENCE * start else start
    return replace(
        probe,
        base=base_limit * (1 - params.margin),
        base_limit=base_limit,
        probe_from=start,
        step_until=now + step,
        charged=charged,
    )


def _horizon(s: RateState, now: float) -> float:
    return s.horizon if now - s.horizon_at < HORIZON_MEMORY_SECONDS else 0.0


def _cut(s: RateState, now: float, params: Params) -> RateState:
    """Over the limit: the learned limit moves toward what the upstream accepted, by the
    weight of the attempts the decision rests on, and the rate goes to its hold point.

    What was accepted is measured over the run since its first 429, at least the last
    RECENT_TICKS ticks: shorter, a token bucket's saved tokens and the ticks' rounding
    would pass for rate. Everything refused measures nothing: that is a pause.
    """
    if s.run_sent >= PAUSE_ATTEMPTS and s.run_accepted == 0:
        return _pause(s, now, params)
    recent_accepted = sum(accepted for _, accepted in s.recent)
    if s.run_seconds >= RECENT_TICKS * params.tick_seconds:
        accepted = s.run_accepted / s.run_seconds
    else:
        accepted = recent_accepted / max(1, len(s.recent)) / params.tick_seconds
    weight = 1 - math.exp(-s.run_sent / EVIDENCE_ATTEMPTS)
    if s.limit is not None and accepted < s.limit:
        limit: float | None = s.limit + weight * (accepted - s.limit)
    elif weight >= 0.5:
        limit = accepted  # enough attempts to measure a limit where none was known
    else:
        limit = s.limit
    over, over_at = (s.rate, now) if math.isfinite(s.rate) else (s.over, s.over_at)
    if limit is None:
        # A handful of 429s and nothing learned: a cut in proportion to the evidence.
        cut = _set_rate(s, max(accepted, s.rate * (1 - weight)), now, params)
        memory = None
    else:
        limit = max(params.min_rate, limit)
        cut = _set_rate(s, limit * (1 - params.margin), now, params, limit=limit)
        # A cut on thin evidence remembers where the limit was, to go back there if the
        # evidence at the new rate is clean; a well-founded one does not.
        thin = weight < MEMORY_WEIGHT and s.limit is not None and s.limit > limit
        memory = _max_float(s.memory, s.limit) if thin else None
    return replace(
        cut,
        credit=max(cut.credit, 0.0),  # the limit moved: the probes' debt is forgiven
        over=over,
        over_at=over_at,
        held_since=now,
        memory=memory,
    )


def _pause(s: RateState, now: float, params: Params) -> RateState:
    """Everything sent lately was refused: a spent window, an outage, a storm of 429s. That
    measures no limit (a limit of zero would be wrong the moment it ends), so the limit and
    the memory stay, and the rate drops to a trickle that finds the end."""
    reference = s.limit if s.limit is not None else s.rate
    trickle = max(params.min_rate, PAUSE_SHARE * reference) if math.isfinite(reference) else 1.0
    paused = _set_rate(s, min(trickle, s.rate), now, params)
    paused_at = s.paused_at if s.paused else now  # refusals during a pause extend it
    return replace(paused, paused=True, paused_at=paused_at, held_since=now, over=None)


def _set_rate(
    s: RateState, rate: float, now: float, params: Params, *, limit: float | None = None
) -> RateState:
    """A new rate in force: the sequential test starts again, a probe (if any) ends."""
    return replace(
        s,
        rate=_bounded(rate, params),
        limit=s.limit if limit is None else limit,
        since=now,
        base=None,
        base_limit=None,
        probe_from=None,
        step_until=0.0,
        llr=0.0,
        run_sent=0,
        run_accepted=0,
        run_seconds=0.0,
        paused=False,
        returning=False,
    )


def _bounded(rate: float, params: Params) -> float:
    return min(max(rate, params.min_rate), params.rate_high)


def _restore_rate(s: RateState, params: Params) -> RateState:
    """Saved state in the current bounds; unusable numbers fall back to the bounds."""
    rate = s.rate if not math.isnan(s.rate) else params.initial_rate
    limit = s.limit if s.limit is not None and math.isfinite(s.limit) else None
    if limit is not None:
        limit = min(max(limit, params.min_rate), params.rate_high)
    return replace(s, rate=_bounded(rate, params), limit=limit)


# --- the concurrency cap ----------------------------------------------------------------


def _count_answers(s: CapState, ticks: Sequence[Tick]) -> CapState:
    """Keep the last ANSWER_TICKS of ok answers, for Little's law (see _step_cap)."""
    answers = s.answers
    for tick in ticks:
        answers = (*answers[-(ANSWER_TICKS - 1) :], tick.ok)
    return replace(s, answers=answers)


def _answer_rate(answers: Sequence[int], round_trip: float, params: Params) -> float:
    """Ok answers per second over the last two round trips (at least a second): a window
    shorter than the round trip sees answers that come back together as a rate."""
    span = max(RECENT_TICKS // 2, math.ceil(2 * round_trip / params.tick_seconds))
    recent = answers[-span:]
    return sum(recent) / (len(recent) * params.tick_seconds)


def _step_cap(
    s: CapState,
    tick: Tick,
    seconds: float,
    now: float,
    dwell: float,
    round_trip: float | None,
    params: Params,
) -> tuple[CapState, Decision]:
    s = replace(
        s,
        seconds=s.seconds + seconds,
        ok_at=_max(s.ok_at, tick.ok_at),
        refused_at=_min(s.refused_at, tick.refused_at),
        capped=s.capped + tick.capped,
        ok=s.ok + tick.ok,
        credit=min(MAX_PROBE_CREDIT, s.credit + params.probe_budget * tick.ok),
    )
    if tick.ok_at is not None and (
        s.ok_best is None or tick.ok_at >= s.ok_best or now - s.ok_best_at > OK_MEMORY_SECONDS
    ):
        s = replace(s, ok_best=tick.ok_at, ok_best_at=now)
    if tick.concurrency_limited:
        cap = _refused_cap(s, s.refused_at, params)
        if round_trip and s.answers:
            # Little's law: refusing, the upstream is full, and what it holds is what it
            # answers per second times how long each takes. Counts of leases overstate
            # it while attempts wait for the rate; this does not.
            answered = _answer_rate(s.answers, round_trip, params)
            full = max(
                params.min_concurrency, math.ceil(answered * round_trip * (1 + _LITTLE_SLACK))
            )
            cap = full if cap is None else min(cap, full) if full < (s.cap or math.inf) else cap
        if cap is None:
            return s, Decision.HOLD
        best = s.ok_best if now - s.ok_best_at <= OK_MEMORY_SECONDS else None
        if s.base is None and best is not None and cap < best:
            # Answered ok with more in flight a moment ago: the upstream frees a slot a
            # little after our lease goes (or before), and the counts crossed at the
            # limit. Only a few such 1302s in a row mean the limit is lower.
            crossings = s.crossings + tick.concurrency_limited
            if crossings < MAX_CROSSINGS:
                return replace(s, crossings=crossings, refused_at=None), Decision.HOLD
        return _set_cap(s, cap, now, params), Decision.DECREASE
    if s.cap is None or not s.capped or now - s.since < dwell:
        return s, Decision.HOLD
    if s.base is not None:
        if s.ok_at is None or s.ok_at < s.cap:
            return s, Decision.HOLD  # the probe's slot has not come back yet
        step_size = 2 * s.step
        raised = _set_cap(s, s.cap + step_size, now, params)
        return replace(raised, base=s.cap, step=step_size), Decision.PROBE
    if s.credit < 1:
        return s, Decision.HOLD
    probe = _set_cap(s, s.cap + 1, now, params)
    if probe.cap == s.cap:
        return s, Decision.HOLD  # at max_concurrency
    return replace(probe, base=s.cap, step=1), Decision.PROBE


def _refused_cap(s: CapState, refused_at: int | None, params: Params) -> int | None:
    """The cap after a 1302: below the in-flight count it came at (an attempt sent without
    waiting knows it exactly), and at least a step below a cap it came under anyway."""
    cap = None if refused_at is None else refused_at - 1
    if s.cap is not None and (cap is None or cap >= s.cap):
        cap = s.base if s.base is not None else s.cap - max(1, s.cap // 8)
    return None if cap is None else max(params.min_concurrency, cap)


def _set_cap(s: CapState, cap: int, now: float, params: Params) -> CapState:
    high = params.max_concurrency
    bounded = max(params.min_concurrency, cap if high is None else min(cap, high))
    return CapState(
        cap=bounded,
        epoch=s.epoch + 1,
        since=now,
        credit=s.credit,
        ok_best=s.ok_best,
        ok_best_at=s.ok_best_at,
        answers=s.answers,
    )


def _restore_cap(s: CapState, params: Params) -> CapState:
    if s.cap is None:
        return s
    high = params.max_concurrency
    cap = max(params.min_concurrency, s.cap if high is None else min(s.cap, high))
    return replace(s, cap=cap)


# --- shared -----------------------------------------------------------------------------


def _sum(ticks: Iterable[Tick]) -> Tick:
    total = Tick()
    for tick in ticks:
        total = _add(total, tick)
    return total


def _add(a: Tick, b: Tick) -> Tick:
    return Tick(
        start=min(a.start, b.start),
        sent=a.sent + b.sent,
        throttled=a.throttled + b.throttled,
        ok=a.ok + b.ok,
        limited=a.limited + b.limited,
        concurrency_limited=a.concurrency_limited + b.concurrency_limited,
        capped=a.capped + b.capped,
        ok_at=_max(a.ok_at, b.ok_at),
        refused_at=_min(a.refused_at, b.refused_at),
        latency_sum=a.latency_sum + b.latency_sum,
        latency_count=a.latency_count + b.latency_count,
        told=_min_float(a.told, b.told),
    )


def _round_trip(previous: float | None, tick: Tick) -> float | None:
    """The smoothed round trip of ok answers (an EWMA over steps, as TCP's SRTT)."""
    if not tick.latency_count:
        return previous
    sample = tick.latency_sum / tick.latency_count
    return sample if previous is None else previous + 0.125 * (sample - previous)


def _min_float(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else min(a, b)


def _max_float(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else max(a, b)


def _max(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else max(a, b)


def _min(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else min(a, b)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def rate_pushed(state: State, now: float) -> State:
    """The law's side of the store's push when a 429 ended a rate probe (``report`` put
    ``probe_base`` back in force): the probe is over, paid for from the budget, and its
    rate is remembered as over the limit."""
    r = state.rate
    if r.base is None:
        return state
    r = replace(
        r,
        rate=r.base,
        limit=r.base_limit if r.base_limit is not None else r.limit,
        since=now,
        memory=None,
        base=None,
        base_limit=None,
        probe_from=None,
        step_until=0.0,
        over=r.rate,
        over_at=now,
        charged_until=now + PROBE_AFTERMATH_SECONDS,
        charged=0,
        held_since=now,
        limited_at=now,
        llr=0.0,
        run_sent=0,
        run_accepted=0,
        run_seconds=0.0,
        returning=False,
    )
    return replace(state, rate=r)


def cap_pushed(state: State, cap: int, epoch: int, now: float) -> State:
    """The law's side of the store's push after a 1302 (``report`` put ``cap`` in force
    under ``epoch``: a probe's base, or one below the count a 1302 came at)."""
    c = state.cap
    credit = max(0.0, c.credit - 1) if c.base is not None else c.credit
    pushed = replace(
        CapState(cap=cap, epoch=epoch, since=now, credit=credit),
        ok_best=c.ok_best,
        ok_best_at=c.ok_best_at,
        answers=c.answers,
    )
    return replace(state, cap=pushed)
