"""From samples and client records to per-second series, per-phase figures and targets.

Pure: numbers in, numbers out. Times are seconds since the simulator started (its hidden
limit schedule counts from there).

Definitions (docs/limiter.md repeats them):

- *goodput*: requests the upstream accepted per second (the simulator's count);
- *upstream 429 ratio*: the upstream's 429s over its attempts (accepted + 429);
- *steady state*: the last ``steady_fraction`` of a phase;
- *3-s average at second a*: the counts of [a, a + 3) summed, then divided;
- *settle after a drop*: the first second a of the phase from which every 3-s average
  429 ratio is under ``drop_ratio`` (5%) for at least ``drop_hold`` (10 s); later
  excursions (probes) are the steady state's business;
- *settle after a rise*: the first second a of the phase whose 3-s average goodput is at
  least ``rise_share`` (90%) of the new limit.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from .load import Record
from .sampling import Sample

SMOOTH_SECONDS = 3


@dataclass(frozen=True)
class Targets:
    """The issue's targets (rate limits; concurrency limits take 90% and longer settles)."""

    goodput_share: float = 0.95  # steady state: goodput >= 95% of the capacity
    max_429_ratio: float = 0.02  # steady state: <= 2% of upstream attempts answered 429
    drop_ratio: float = 0.05  # after a drop: 429 ratio back under 5% ...
    drop_seconds: float = 5.0  # ... within 5 s
    drop_hold: float = 10.0  # "back under": and staying there this long
    rise_share: float = 0.90  # after a rise: goodput at 90% of the new capacity ...
    rise_seconds: float = 10.0  # ... within 10 s


@dataclass(frozen=True)
class Phase:
    """One step of the hidden limit's schedule."""

    index: int
    start: float
    end: float
    limit: float  # the hidden limit: requests/s, or requests at once
    warmup: bool = False  # the cold start: learning the first limit, not measured
    capacity: float | None = None  # requests/s the upstream can accept; None: the limit

    @property
    def accepts(self) -> float:
        """Requests/s the upstream can accept in this phase."""
        return self.limit if self.capacity is None else self.capacity


@dataclass
class Series:
    """Per-second buckets: bucket k covers [k, k + 1)."""

    seconds: list[int]
    accepted: list[float]
    rejected: list[float]
    limit: list[float | None]
    rate: list[float | None]
    ceiling: list[float | None]

    def attempts(self, k: int) -> float:
        return self.accepted[k] + self.rejected[k]


@dataclass
class PhaseResult:
    """One phase's figures and how they compare with the targets."""

    index: int
    limit: float
    kind: str  # "warm-up", "start", "drop", "rise", "same"
    goodput_share: float  # steady state goodput / hidden limit
    ratio_429: float  # steady state upstream 429 ratio
    attempts: float  # upstream attempts in the steady state
    upstream_429_to_clients: int  # whole phase
    upstream_429_with_retries_left: int  # of those, passed on before the last attempt
    held_back: int  # proxy-made 429s (whole phase)
    client_ok: int
    client_other: int  # other statuses (503, client errors)
    settle: float | None  # seconds after the change; None: never within the phase
    checks: dict[str, bool] = field(default_factory=dict)
    margins: dict[str, float] = field(default_factory=dict)


def phases_of(
    limits: Sequence[float], phase_seconds: float, warmup: float, latency: float | None = None
) -> list[Phase]:
    """The schedule as phases of equal length, after a warm-up at the first limit. With a
    ``latency`` the limits are concurrency limits: the capacity is limit / latency."""

    def capacity(limit: float) -> float | None:
        return None if latency is None else limit / latency

    phases = (
        [Phase(0, 0.0, warmup, limits[0], warmup=True, capacity=capacity(limits[0]))]
        if warmup > 0
        else []
    )
    phases += [
        Phase(
            i + 1,
            warmup + i * phase_seconds,
            warmup + (i + 1) * phase_seconds,
            limit,
            capacity=capacity(limit),
        )
        for i, limit in enumerate(limits)
    ]
    return phases


def schedule_text(phases: Sequence[Phase]) -> str:
    """The simulator's ``--schedule`` for the phases."""
    return ",".join(f"{p.limit:g}@{p.start:g}" for p in phases)


def _interpolate(times: Sequence[float], values: Sequence[float], x: float) -> float:
    """A cumulative counter's value at ``x``, linear between samples, flat outside."""
    if not times:
        return 0.0
    i = bisect.bisect_left(times, x)
    if i == 0:
        return values[0]
    if i >= len(times):
        return values[-1]
    t0, t1 = times[i - 1], times[i]
    share = (x - t0) / (t1 - t0) if t1 > t0 else 1.0
    return values[i - 1] + share * (values[i] - values[i - 1])


def _latest(samples: Sequence[Sample], x: float, attr: str) -> float | None:
    """The last sampled value of ``attr`` at or before ``x``."""
    value = None
    for sample in samples:
        if sample.t > x:
            break
        value = getattr(sample, attr)
    return value


def per_second(samples: Sequence[Sample], duration: float) -> Series:
    """Cumulative samples (t relative to the simulator's start) as per-second buckets."""
    times = [s.t for s in samples]
    accepted = [float(s.accepted) for s in samples]
    rejected = [float(sum(s.rejected.values())) for s in samples]
    seconds = list(range(math.floor(duration)))
    series = Series(seconds, [], [], [], [], [])
    for k in seconds:
        series.accepted.append(
            _interpolate(times, accepted, k + 1) - _interpolate(times, accepted, k)
        )
        series.rejected.append(
            _interpolate(times, rejected, k + 1) - _interpolate(times, rejected, k)
        )
        series.limit.append(_latest(samples, k + 0.5, "limit"))
        series.rate.append(_latest(samples, k + 0.5, "rate"))
        series.ceiling.append(_latest(samples, k + 0.5, "ceiling"))
    return series


def _sums(series: Series, start: int, end: int) -> tuple[float, float]:
    ok = sum(series.accepted[start:end])
    bad = sum(series.rejected[start:end])
    return ok, bad


def smoothed_ratio(series: Series, a: int) -> float:
    """The 429 ratio of [a, a + 3)."""
    ok, bad = _sums(series, a, a + SMOOTH_SECONDS)
    return bad / (ok + bad) if ok + bad else 0.0


def smoothed_goodput(series: Series, a: int) -> float:
    """Accepted requests per second over [a, a + 3)."""
    ok, _ = _sums(series, a, a + SMOOTH_SECONDS)
    return ok / SMOOTH_SECONDS


def settle_after_drop(series: Series, phase: Phase, targets: Targets) -> float | None:
    """Seconds from the change until the 3-s 429 ratio is under 5% and stays so for 10 s."""
    start, end = math.ceil(phase.start), math.floor(phase.end) - SMOOTH_SECONDS
    hold = math.ceil(targets.drop_hold)
    for a in range(start, end + 1):
        span = range(a, min(a + hold, end + 1))
        if all(smoothed_ratio(series, b) < targets.drop_ratio for b in span):
            return a - phase.start
    return None


def settle_after_rise(series: Series, phase: Phase, targets: Targets) -> float | None:
    """Seconds from the change until a 3-s average goodput reaches 90% of the new limit."""
    start, end = math.ceil(phase.start), math.floor(phase.end) - SMOOTH_SECONDS
    for a in range(start, end + 1):
        if smoothed_goodput(series, a) >= targets.rise_share * phase.accepts:
            return a - phase.start
    return None


def analyse_phase(
    series: Series,
    records: Sequence[Record],
    phase: Phase,
    previous: Phase | None,
    targets: Targets,
    steady_fraction: float,
    max_attempts: int,
) -> PhaseResult:
    """One phase's figures and checks."""
    steady_start = math.ceil(phase.end - steady_fraction * (phase.end - phase.start))
    ok, bad = _sums(series, steady_start, math.floor(phase.end))
    span = math.floor(phase.end) - steady_start
    goodput_share = ok / span / phase.accepts if span > 0 else 0.0
    ratio = bad / (ok + bad) if ok + bad else 0.0

    in_phase = [r for r in records if phase.start <= r.done < phase.end]
    upstream = [r for r in in_phase if r.source == "upstream"]
    early = [r for r in upstream if 0 <= r.attempts < max_attempts]
    if phase.warmup:
        kind = "warm-up"
        settle = settle_after_rise(series, phase, targets)
    elif previous is None:
        kind = "start"
        settle = settle_after_rise(series, phase, targets)
    elif phase.limit < previous.limit:
        kind = "drop"
        settle = settle_after_drop(series, phase, targets)
    elif phase.limit > previous.limit:
        kind = "rise"
        settle = settle_after_rise(series, phase, targets)
    else:
        kind, settle = "same", None

    result = PhaseResult(
        index=phase.index,
        limit=phase.limit,
        kind=kind,
        goodput_share=goodput_share,
        ratio_429=ratio,
        attempts=ok + bad,
        upstream_429_to_clients=len(upstream),
        upstream_429_with_retries_left=len(early),
        held_back=sum(1 for r in in_phase if r.source == "proxy"),
        client_ok=sum(1 for r in in_phase if r.source == "ok"),
        client_other=sum(1 for r in in_phase if r.source == "error"),
        settle=settle,
    )
    if phase.warmup:
        return result
    result.checks["goodput"] = goodput_share >= targets.goodput_share
    result.margins["goodput"] = goodput_share - targets.goodput_share
    result.checks["429_ratio"] = ratio <= targets.max_429_ratio
    result.margins["429_ratio"] = targets.max_429_ratio - ratio
    result.checks["no_early_429"] = not early
    if kind == "drop":
        limit_s = targets.drop_seconds
    elif kind == "rise":
        limit_s = targets.rise_seconds
    else:
        limit_s = None
    if limit_s is not None:
        result.checks["settle"] = settle is not None and settle <= limit_s
        result.margins["settle"] = limit_s - (settle if settle is not None else math.inf)
    return result


@dataclass
class Decision:
    """Steps the limiter took in one sampling second, by what they did."""

    t: float
    decision: str
    rate: float | None
    ceiling: float | None


def decisions_of(samples: Sequence[Sample]) -> list[Decision]:
    """The decreases, increases and probes of every second (the leader's counters moved)."""
    out: list[Decision] = []
    previous: dict[str, float] = {}
    for sample in samples:
        for direction, count in sample.decisions.items():
            if direction != "hold" and count > previous.get(direction, count):
                out.append(Decision(sample.t, direction, sample.rate, sample.ceiling))
        previous = dict(sample.decisions) or previous
    return out
