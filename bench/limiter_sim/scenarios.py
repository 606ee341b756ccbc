"""The scenario families of the limiter issue, as runs of the real services.

Each scenario names the simulator's hidden limit (kind, burst or window, schedule) and the
load; the phases are a warm-up at the first limit, then the same limit, its half, and
three times that (30 s each, longer for long round trips). The same families run in the
discrete-event model (bench/limiter_model), with more variants and seeds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .analysis import Phase, Targets, phases_of

PHASE_SECONDS = 30.0
RATE_LIMITS = (30.0, 30.0, 15.0, 45.0)  # warm-up, same, half, three times that
CONCURRENCY_LIMITS = (8.0, 8.0, 4.0, 12.0)

CONCURRENCY_TARGETS = Targets(goodput_share=0.90, drop_seconds=10.0)


@dataclass(frozen=True)
class Scenario:
    """One run's upstream and load."""

    name: str
    family: str  # "rate" or "concurrency"
    phases: list[Phase]
    latency_ms: int
    offered: float
    simulator_args: list[str] = field(default_factory=list)
    targets: Targets = field(default_factory=Targets)
    stream: bool = False


def _rate(name: str, *args: str, noise: float = 0.0) -> Scenario:
    limits = RATE_LIMITS if not noise else (30.0, 30.0, 30.0, 30.0)
    extra = [*args, "--noise", str(noise)] if noise else list(args)
    return Scenario(
        name=name,
        family="rate",
        phases=phases_of(limits[1:], PHASE_SECONDS, PHASE_SECONDS),
        latency_ms=200,
        offered=2 * max(limits),
        simulator_args=extra,
    )


def _concurrency(latency_s: float, stream: bool = False) -> Scenario:
    # A phase holds at least twelve round trips: a steady state needs some.
    phase = max(PHASE_SECONDS, 12 * latency_s)
    settle = max(10.0, 5 * latency_s)  # "within 10 s or five round trips"
    return Scenario(
        name=f"concurrency-{latency_s:g}s{'-stream' if stream else ''}",
        family="concurrency",
        phases=phases_of(CONCURRENCY_LIMITS[1:], phase, phase, latency=latency_s),
        latency_ms=round(1000 * latency_s),
        offered=max(4.0, 2 * max(CONCURRENCY_LIMITS) / latency_s),
        targets=Targets(goodput_share=0.90, drop_seconds=settle, rise_seconds=settle),
        stream=stream,
    )


CATALOGUE: dict[str, Scenario] = {
    s.name: s
    for s in [
        _rate("bucket-0s", "--limit-kind", "bucket", "--burst", "0"),
        _rate("bucket-1s", "--limit-kind", "bucket", "--burst", "1"),
        _rate("bucket-5s", "--limit-kind", "bucket", "--burst", "5"),
        _rate("fixed-1s", "--limit-kind", "fixed", "--window", "1"),
        _rate("fixed-10s", "--limit-kind", "fixed", "--window", "10"),
        _rate("sliding-1s", "--limit-kind", "sliding", "--window", "1"),
        _rate("noise-1pct", "--limit-kind", "bucket", "--burst", "1", noise=0.01),
        _concurrency(0.2),
        _concurrency(1.0),
        _concurrency(1.0, stream=True),
        _concurrency(3.0),
    ]
}
