"""The scenario families of the limiter issue, and the targets each phase is judged by.

A scenario is a hidden limit on a schedule, an offered load and a fleet. Phases are 30 s
(the issue's longest), steady state is the last half of each; the first phase is a cold
start, then the limit halves, then triples. Goodput is what the upstream accepted, as a
share of what it could accept (the limit, or concurrency / mean latency); 429s are the
upstream's, over its attempts.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from zai_proxy.limiter.controller import Params

from . import upstreams as u
from .fleet import Fleet, FleetConfig, Second

PHASE = 30.0


@dataclass(frozen=True)
class Phase:
    """One stretch of constant hidden limit."""

    start: float
    end: float
    change: str  # "cold", "same", "drop", "rise", "moving", "storm", "none"


@dataclass(frozen=True)
class Scenario:
    """A named run of the model."""

    family: str
    name: str
    build: Callable[[int], tuple[FleetConfig, u.Upstream]]
    phases: tuple[Phase, ...]
    goodput_target: float = 0.95
    settle_rounds: float = 0.0  # round trips allowed to settle (concurrency: five)
    latency: float = 0.0  # mean latency, for settle_rounds


@dataclass
class PhaseResult:
    """How one phase went against its targets."""

    phase: Phase
    goodput: float  # steady goodput / capacity
    refused: float  # steady upstream 429 ratio
    settle: float | None  # seconds to settle after the change (None: never)
    checks: dict[str, bool] = field(default_factory=dict)


@dataclass
class Result:
    """A scenario's run, judged."""

    scenario: Scenario
    seed: int
    seconds: list[Second]
    phases: list[PhaseResult]
    to_client: int

    @property
    def passed(self) -> bool:
        return all(all(p.checks.values()) for p in self.phases)


def _halve_triple(base: float, phase: float = PHASE) -> u.Schedule:
    return u.steps((0, base), (2 * phase, base / 2), (3 * phase, 1.5 * base))


def _standard(phase: float) -> tuple[Phase, ...]:
    return (
        Phase(0, phase, "cold"),
        Phase(phase, 2 * phase, "same"),
        Phase(2 * phase, 3 * phase, "drop"),
        Phase(3 * phase, 4 * phase, "rise"),
    )


def concurrency_phase(latency: float) -> float:
    """30 s, or twelve round trips when that is longer: a phase must hold enough round
    trips for a concurrency limit to have a steady state at all."""
    return max(PHASE, 12 * latency)


STANDARD = (
    Phase(0, PHASE, "cold"),
    Phase(PHASE, 2 * PHASE, "same"),
    Phase(2 * PHASE, 3 * PHASE, "drop"),
    Phase(3 * PHASE, 4 * PHASE, "rise"),
)


STEADY = (
    Phase(0, PHASE, "cold"),
    Phase(PHASE, 2 * PHASE, "same"),
    Phase(2 * PHASE, 3 * PHASE, "same"),
    Phase(3 * PHASE, 4 * PHASE, "same"),
)


def _uniform(low: float, high: float) -> Callable[[random.Random], float]:
    return lambda rng: rng.uniform(low, high)


Build = Callable[[int], tuple[FleetConfig, u.Upstream]]


def _rate(
    upstream: Callable[[u.Schedule, random.Random], u.Upstream],
    base: float = 30.0,
    replicas: int = 3,
    noise: float = 0.0,
) -> Build:
    def build(seed: int) -> tuple[FleetConfig, u.Upstream]:
        rng = random.Random(seed ^ 0x5EED)
        hidden = upstream(_halve_triple(base), rng)
        if noise:
            hidden = u.Noisy(hidden, noise, rng)
        config = FleetConfig(
            offered=lambda t: 3 * base,
            latency=_uniform(0.1, 0.5),
            replicas=lambda t: replicas,
            duration=4 * PHASE,
            seed=seed,
        )
        return config, hidden

    return build


def _concurrency(
    latency: float, replicas: int = 3, base: int = 8
) -> Callable[[int], tuple[FleetConfig, u.Upstream]]:
    phase = concurrency_phase(latency)

    def build(seed: int) -> tuple[FleetConfig, u.Upstream]:
        hidden = u.Concurrency(_halve_triple(base, phase))
        config = FleetConfig(
            offered=lambda t: max(2.0, 3 * 1.5 * base / latency),
            latency=_uniform(0.5 * latency, 1.5 * latency),
            replicas=lambda t: replicas,
            duration=4 * phase,
            seed=seed,
        )
        return config, hidden

    return build


def _both(seed: int) -> tuple[FleetConfig, u.Upstream]:
    rng = random.Random(seed)
    # Both limits bind in turn: 20 req/s against 8 slots at 0.5 s (16 req/s), moving.
    rate = u.TokenBucket(_moving(rng, 20.0), burst=1.0)
    slots = u.Concurrency(_moving(rng, 8.0))
    config = FleetConfig(
        offered=lambda t: 60.0,
        latency=_uniform(0.25, 0.75),
        duration=4 * PHASE,
        seed=seed,
    )
    return config, u.Both(rate, slots)


def _moving(rng: random.Random, base: float) -> u.Schedule:
    """A limit that moves every 10 s, between half and twice ``base``."""
    changes = [(0.0, base)] + [
        (10.0 * k, base * 2 ** rng.uniform(-1, 1)) for k in range(1, int(4 * PHASE / 10))
    ]
    return u.steps(*changes)


MOVING = tuple(Phase(10.0 * k, 10.0 * (k + 1), "moving") for k in range(3, int(4 * PHASE / 10)))


def _no_limit(seed: int) -> tuple[FleetConfig, u.Upstream]:
    config = FleetConfig(
        offered=lambda t: 2000.0, latency=_uniform(0.001, 0.003), duration=10.0, seed=seed
    )
    return config, u.Unlimited()


def _storm(idle: bool) -> Callable[[int], tuple[FleetConfig, u.Upstream]]:
    def build(seed: int) -> tuple[FleetConfig, u.Upstream]:
        hidden = u.TokenBucket(u.steps((0, 30.0)), burst=1.0)
        if idle:
            # At idle a single request meets the storm with all its retries (4 attempts).
            upstream = u.Storm(hidden, 2 * PHASE - 1.0, 2 * PHASE + 2.0)
            offered = lambda t: 0.5 if PHASE <= t < 2 * PHASE + 3.0 else 60.0  # noqa: E731
        else:
            upstream = u.Storm(hidden, 2 * PHASE - 15.0, 2 * PHASE)
            offered = lambda t: 60.0  # noqa: E731
        config = FleetConfig(
            offered=offered, latency=_uniform(0.1, 0.5), duration=3 * PHASE, seed=seed
        )
        return config, upstream

    return build


def _joining(seed: int) -> tuple[FleetConfig, u.Upstream]:
    config, upstream = _rate(lambda s, rng: u.TokenBucket(s, 1.0))(seed)

    def replicas(t: float) -> int:
        return 10 if int(t // 7) % 2 else 3  # replicas join and leave every 7 s

    config.replicas = replicas
    return config, upstream


def catalogue() -> list[Scenario]:
    """Every scenario family, with the variants the issue names."""
    out: list[Scenario] = []
    rate_limits: list[tuple[str, Callable[[u.Schedule, random.Random], u.Upstream]]] = [
        ("bucket-0s", lambda s, rng: u.TokenBucket(s, 0.0)),
        ("bucket-1s", lambda s, rng: u.TokenBucket(s, 1.0)),
        ("bucket-5s", lambda s, rng: u.TokenBucket(s, 5.0)),
        ("fixed-1s", lambda s, rng: u.FixedWindow(s, 1.0, rng.uniform(0, 1))),
        ("fixed-10s", lambda s, rng: u.FixedWindow(s, 10.0, rng.uniform(0, 10))),
        ("sliding-1s", lambda s, rng: u.SlidingWindow(s, 1.0)),
        ("sliding-10s", lambda s, rng: u.SlidingWindow(s, 10.0)),
    ]
    for replicas in (1, 3, 10):
        for name, upstream in rate_limits:
            out.append(
                Scenario(
                    "rate", f"{name} x{replicas}", _rate(upstream, replicas=replicas), STANDARD
                )
            )
    for latency in (0.2, 1.0, 3.0, 10.0):
        for replicas in (1, 3, 10):
            out.append(
                Scenario(
                    "concurrency",
                    f"{latency:g}s x{replicas}",
                    _concurrency(latency, replicas),
                    _standard(concurrency_phase(latency)),
                    goodput_target=0.90,
                    settle_rounds=5,
                    latency=latency,
                )
            )
    out.append(Scenario("both", "moving every 10 s", _both, MOVING, goodput_target=0.90))
    out.append(
        Scenario(
            "noise",
            "bucket-1s + 1% random",
            _rate(lambda s, rng: u.TokenBucket(u.steps((0, 30.0)), 1.0), noise=0.01),
            STEADY,
        )
    )
    out.append(Scenario("no-limit", "2000 req/s offered", _no_limit, (Phase(0, 10, "none"),)))
    out.append(
        Scenario(
            "storm", "a handful at idle", _storm(True), (Phase(2 * PHASE, 3 * PHASE, "storm"),)
        )
    )
    out.append(
        Scenario("storm", "15 s under load", _storm(False), (Phase(2 * PHASE, 3 * PHASE, "storm"),))
    )
    out.append(Scenario("scale", "3 <-> 10 replicas", _joining, STANDARD))
    return out


# --- judging --------------------------------------------------------------------------


def _ratio(seconds: Sequence[Second], a: int, b: int) -> float:
    attempts = sum(s.attempts for s in seconds[a:b])
    return sum(s.refused for s in seconds[a:b]) / attempts if attempts else 0.0


def _smoothed_ratio(seconds: Sequence[Second], k: int, end: int) -> float:
    """The 429 ratio from second k over 3 s, or as long as it takes to hold 40 attempts
    (one 429 among the 12 attempts of 3 s at 4 req/s is no trend)."""
    b = k + 3
    while b < end and sum(s.attempts for s in seconds[k:b]) < 40:
        b += 1
    return _ratio(seconds, k, b)


def _goodput(seconds: Sequence[Second], a: int, b: int) -> float:
    capacity = sum(min(s.capacity, s.offered) for s in seconds[a:b])
    return sum(s.accepted for s in seconds[a:b]) / capacity if capacity else 1.0


def judge(scenario: Scenario, seconds: list[Second], seed: int) -> Result:
    """Each phase against the targets that apply to it."""
    results = []
    for phase in scenario.phases:
        a, b = int(phase.start), int(phase.end)
        mid = int(phase.start + (phase.end - phase.start) / 2)
        steady_goodput, steady_refused = _goodput(seconds, mid, b), _ratio(seconds, mid, b)
        checks: dict[str, bool] = {}
        settle = None
        if phase.change == "none":
            # No evidence, no throttle: from 3 s on the proxy passes 80% of the offer.
            passed = sum(s.accepted for s in seconds[3:b])
            offered = sum(s.offered for s in seconds[3:b])
            steady_goodput = passed / offered if offered else 1.0
            checks["passes 80% within 3 s"] = steady_goodput >= 0.80
        elif phase.change == "cold":
            pass  # the warm-up: a cold start, judged by the no-limit and storm families
        elif phase.change == "storm":
            settle = _first(seconds, a, b, lambda k: _goodput(seconds, k, k + 3) >= 0.90)
            checks["90% within 10 s of the storm"] = settle is not None and settle <= 10
        elif scenario.family == "noise":
            pass  # judged by noise_pull: the 429s are the noise's own
        else:
            checks["goodput"] = steady_goodput >= scenario.goodput_target
            checks["429s <= 2%"] = steady_refused <= 0.02
            allowed = max(10.0, scenario.settle_rounds * scenario.latency)
            if phase.change == "drop":
                # Settled: from this second on, every 3-s 429 ratio stays under 5% for 10 s.
                settle = _first(seconds, a, b, _quiet_from(seconds, b))
                limit = 5.0 if scenario.family != "concurrency" else allowed
                checks[f"429s < 5% within {limit:g} s"] = settle is not None and settle <= limit
            elif phase.change == "rise":
                settle = _first(seconds, a, b, lambda k: _goodput(seconds, k, k + 3) >= 0.90)
                checks[f"90% within {allowed:g} s"] = settle is not None and settle <= allowed
        results.append(PhaseResult(phase, steady_goodput, steady_refused, settle, checks))
    to_client = sum(s.to_client for s in seconds)
    return Result(scenario, seed, seconds, results, to_client)


def _quiet_from(seconds: Sequence[Second], end: int) -> Callable[[int], bool]:
    """Whether from second k on every 3-s 429 ratio stays under 5% for 10 s."""

    def quiet(k: int) -> bool:
        span = range(k, min(k + 10, end - 2))
        return all(_smoothed_ratio(seconds, j, end) < 0.05 for j in span)

    return quiet


def _first(seconds: Sequence[Second], a: int, b: int, good: Callable[[int], bool]) -> float | None:
    for k in range(a, b - 2):
        if good(k):
            return float(k - a)
    return None


def run(scenario: Scenario, seed: int = 0, params: Params | None = None) -> Result:
    """Run one scenario with one seed (and, to experiment, other parameters)."""
    config, upstream = scenario.build(seed)
    if params is not None:
        config.params = params
    return judge(scenario, Fleet(config, upstream).run(), seed)


def noise_pull(result: Result) -> float:
    """How far below the limit the noise scenario's rate sat in steady state (share)."""
    worst = 0.0
    for phase in result.phases:
        if phase.phase.change == "cold":
            continue
        mid, b = int((phase.phase.start + phase.phase.end) / 2), int(phase.phase.end)
        rates = [s.rate for s in result.seconds[mid:b] if math.isfinite(s.rate)]
        caps = [s.capacity for s in result.seconds[mid:b]]
        if rates and caps:
            worst = max(worst, 1 - (sum(rates) / len(rates)) / (sum(caps) / len(caps)))
    return worst
