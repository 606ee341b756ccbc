"""One run: start the processes, offer the load through the schedule, sample, analyse."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from . import processes
from .analysis import (
    Decision,
    Phase,
    PhaseResult,
    Series,
    Targets,
    analyse_phase,
    decisions_of,
    per_second,
    schedule_text,
)
from .load import LoadClient, LoadResult
from .sampling import Sample, Sampler

# Samples go on this long after the load stops, so the last phase's end is covered.
TAIL_SECONDS = 2.0


@dataclass
class RunConfig:
    """What one run does (the command line fills it)."""

    replicas: int
    phases: list[Phase]
    offered: float  # requests per second, all replicas together
    concurrency: int  # client-side bound on open requests
    latency_ms: int  # the simulator's answer time
    steady_fraction: float
    max_retries: int
    max_workers: int
    env: dict[str, str]  # extra environment for the limiter and the proxies
    targets: Targets = field(default_factory=Targets)
    scenario: str = ""
    family: str = "rate"  # "rate": the phases' limits are requests/s; "concurrency": at once
    simulator_args: list[str] = field(default_factory=list)
    stream: bool = False


@dataclass
class RunResult:
    """A run's raw data and its analysis."""

    config: RunConfig
    samples: list[Sample]
    load: LoadResult
    series: Series
    phases: list[PhaseResult]
    decisions: list[Decision]
    decision_counts: dict[str, float]

    def to_json(self) -> dict[str, Any]:
        """Everything but the per-request records (summarised per phase instead)."""
        return {
            "replicas": self.config.replicas,
            "config": asdict(self.config),
            "phases": [asdict(p) for p in self.phases],
            "decision_counts": self.decision_counts,
            "decisions": [asdict(d) for d in self.decisions],
            "series": asdict(self.series),
            "samples": [asdict(s) for s in self.samples],
            "client": {
                "requests": len(self.load.records),
                "shed": len(self.load.shed),
            },
        }


def from_json(saved: dict[str, Any]) -> RunResult:
    """A run as ``to_json`` wrote it (without the per-request records): for ``--replot``."""
    config = dict(saved["config"])
    config["phases"] = [Phase(**p) for p in config["phases"]]
    config["targets"] = Targets(**config["targets"])
    return RunResult(
        config=RunConfig(**config),
        samples=[Sample(**s) for s in saved["samples"]],
        load=LoadResult(),
        series=Series(**saved["series"]),
        phases=[PhaseResult(**p) for p in saved["phases"]],
        decisions=[Decision(**d) for d in saved["decisions"]],
        decision_counts=saved["decision_counts"],
    )


async def _drive(
    config: RunConfig,
    sim_url: str,
    limiter_url: str,
    proxy_urls: list[str],
    redis_url: str,
    prefix: str,
    t0: float,
) -> tuple[list[Sample], LoadResult]:
    redis = Redis.from_url(redis_url)
    sampler = Sampler(sim_url, limiter_url, proxy_urls, redis, prefix, processes.POOL)
    sampling = asyncio.create_task(sampler.run())
    client = LoadClient(
        proxy_urls, sim_url, config.offered, config.concurrency, config.latency_ms,
        stream=config.stream,
    )  # fmt: skip
    try:
        load = await client.run(stop_at=t0 + config.phases[-1].end)
        await asyncio.sleep(max(0.0, t0 + config.phases[-1].end + TAIL_SECONDS - time.monotonic()))
    finally:
        sampling.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampling
        await redis.aclose()
    return sampler.samples, load


def run(config: RunConfig, redis_url: str, log: Path) -> RunResult:
    """Start everything, offer the load through every phase, stop everything, analyse."""
    prefix = f"limsim{uuid.uuid4().hex[:8]}"
    shared = processes.limiter_env(redis_url, prefix, config.env)
    proxy_env = {"MAX_WORKERS": str(config.max_workers), "MAX_RETRIES": str(config.max_retries)}
    sim_port = processes.free_port()
    upstream = f"http://127.0.0.1:{sim_port}"
    with contextlib.ExitStack() as stack:
        limiter = stack.enter_context(processes.limiter(shared, log))
        replicas = stack.enter_context(
            processes.proxies(config.replicas, upstream, shared, proxy_env, log)
        )
        schedule = schedule_text(config.phases)
        limit_args = (
            ["--concurrency-schedule", schedule]
            if config.family == "concurrency"
            else ["--schedule", schedule]
        )
        sim = stack.enter_context(
            processes.simulator(sim_port, [*limit_args, *config.simulator_args])
        )
        # The hidden limit's schedule counts from the simulator's start, a moment before
        # its ready line; this is the run's time zero.
        t0 = time.monotonic()
        samples, load = asyncio.run(
            _drive(config, sim.url, limiter.url, [r.url for r in replicas], redis_url, prefix, t0)
        )
    return analyse(config, samples, load, t0)


def analyse(config: RunConfig, samples: list[Sample], load: LoadResult, t0: float) -> RunResult:
    """Shift every time to the simulator's clock and compute the per-phase figures."""
    for sample in samples:
        sample.t -= t0
    load.records = [
        type(r)(r.sent - t0, r.done - t0, r.replica, r.status, r.source, r.attempts)
        for r in load.records
    ]
    load.shed = [t - t0 for t in load.shed]
    duration = config.phases[-1].end
    series = per_second(samples, duration)
    results = []
    previous = None
    for phase in config.phases:
        results.append(
            analyse_phase(
                series, load.records, phase, previous, config.targets, config.steady_fraction,
                config.max_retries + 1,
            )
        )  # fmt: skip
        previous = phase
    counts = samples[-1].decisions if samples else {}
    return RunResult(config, samples, load, series, results, decisions_of(samples), counts)
