"""Realistic history for the dashboard: two variants at the three stored resolutions.

For the dashboard-api tests and the web UI's end-to-end browser test: fill a rollup
database as a collector that had been running for days would have left it.

    from tests.dashboard_api.seed import seed_history, write_round
    summary = seed_history("sqlite:////tmp/dash.db", now=time.time(), hours=192)
    write_round("sqlite:////tmp/dash.db", summary.end)   # the next round, live

or from a shell (migrates the database first):

    .venv/bin/python -m tests.dashboard_api.seed sqlite:////tmp/dash.db --hours 192

Layout, newest first (``now`` is aligned down to the scrape interval):

- 5 s snapshots for the last ``fine_minutes`` (default 120: the 5m, 15m and 1h ranges);
- 1 min snapshots back to ``minute_hours`` ago (default 25: the 6h and 24h ranges);
- 1 h snapshots back to ``hours`` ago (default 192, eight days: the 7d range);
- then the store's own downsampling rolls the 5 s rows up into 1 min, and the 1 min rows
  into 1 h, exactly as the collector does.

The figures are deterministic for a (variant, time) and plausible: ``production`` serves
about 20 requests/s on two replicas, ``canary`` a tenth of it on one replica with a
higher error ratio and latency; traffic follows the time of day; both share one upstream
key, so they show the same limiter (learned ceiling about 25/s, probes every 10 minutes,
each followed by a back-off) and quota windows (five hours and a week). Latency
histograms are the buckets a log-normal latency would fill, so percentiles re-derived
from merged buckets stay consistent at every resolution. Two client keys share the
traffic (``CLIENTS``): ``ide`` (interactive, short limiter waits) on both variants, and
``ci`` (batch, longer waits, refused now and then by its requests-per-minute budget) on
``production`` only.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from zai_proxy.collector import migrate
from zai_proxy.collector.rollup import bucket_start, derive
from zai_proxy.collector.snapshot import Buckets, ClientFigures, ModelFigures, Snapshot
from zai_proxy.collector.store import SnapshotStore
from zai_proxy.proxy.buckets import LATENCY_BUCKETS
from zai_proxy.proxy.metrics import WAIT_BUCKETS

VARIANTS = ("production", "canary")
INTERVAL = 5  # seconds per collector round
DAY = 86400.0
PROBE_EVERY = 600.0  # the limiter probes above its ceiling every ten minutes
FIVE_HOURS = 5 * 3600.0
WEEK = 7 * DAY
WRITE_CHUNK = 2000


@dataclass(frozen=True)
class Profile:
    """How a variant behaves."""

    rate: float  # requests/s at the daily mean
    replicas: int
    latency_median: float  # seconds
    ttfb_median: float
    error_ratio: float  # 5xx share
    estimated_share: float  # share of tokens estimated offline


PROFILES = {
    "production": Profile(20.0, 2, 0.9, 0.18, 0.004, 0.0),
    "canary": Profile(2.0, 1, 1.1, 0.22, 0.012, 0.02),
}
# Per-model share of requests, tokens per request (in, out) and prices (USD per million:
# input, output, cache read).
MODELS = {
    "glm-4.6": (0.8, 420.0, 80.0, (0.6, 2.2, 0.11)),
    "glm-4.5-air": (0.2, 300.0, 60.0, (0.2, 1.1, 0.03)),
}


# Per client key: its share of a variant's requests (by variant), its priority class, its
# median limiter wait (seconds) and the share of its requests its budget refuses.
CLIENTS = {
    "ide": ({"production": 0.7, "canary": 1.0}, "interactive", 0.02, 0.0),
    "ci": ({"production": 0.3}, "batch", 0.8, 0.05),
}


@dataclass(frozen=True)
class SeedSummary:
    """What was written: rows per resolution (after downsampling) and the time range."""

    start: float
    end: float  # the end of the newest 5 s snapshot: ``now`` aligned down
    written: dict[int, int]


def snapshot_at(variant: str, ts: float, seconds: float) -> Snapshot:
    """The figures of ``variant`` for ``[ts, ts + seconds)``: deterministic and plausible."""
    profile = PROFILES.get(variant, PROFILES["canary"])
    rng = random.Random(f"{variant}:{ts}:{seconds}")
    daily = 1 + 0.4 * math.sin(2 * math.pi * ((ts + seconds / 2) % DAY) / DAY)
    rate = profile.rate * daily * rng.uniform(0.9, 1.1)
    count = _counter(rng)
    requests = count(rate * seconds)
    probes = _instants(ts, seconds, PROBE_EVERY, offset=300)
    backoffs = _instants(ts, seconds, PROBE_EVERY, offset=310)
    s = Snapshot(ts=ts, seconds=seconds, variant=variant, replicas=profile.replicas)

    s.requests_total = requests
    s.requests_5xx_total = count(requests * profile.error_ratio * rng.uniform(0.5, 1.5))
    s.requests_429_total = count(requests * 0.006 * rng.uniform(0.5, 1.5))
    s.requests_4xx_total = s.requests_429_total + count(requests * 0.01)
    s.client_closed_total = count(requests * 0.002)
    s.requests_2xx_total = max(
        0.0, requests - s.requests_5xx_total - s.requests_4xx_total - s.client_closed_total
    )
    s.proxy_rate_limited_total = count(s.requests_429_total / 3)
    # 429s of the upstream: mostly request frequency, more right after a probe.
    burst = 1 + 10 * min(1.0, (probes * 5) / max(seconds, 5))
    s.upstream_429_frequency_total = count(requests * 0.012 * burst * rng.uniform(0.5, 1.5))
    s.upstream_429_concurrency_total = count(requests * 0.003 * rng.uniform(0, 2))
    s.upstream_429_congestion_total = count(requests * 0.001 * rng.uniform(0, 2))
    s.retries_total = s.upstream_429_frequency_total + s.upstream_429_congestion_total
    s.upstream_errors_total = (
        s.requests_5xx_total + s.upstream_429_frequency_total + s.upstream_429_concurrency_total
    )
    s.limiter_probes_total = float(probes)
    s.limiter_decreases_total = float(backoffs)
    s.limiter_increases_total = float(_instants(ts, seconds, PROBE_EVERY, offset=0))

    tokens_in = tokens_out = cost = 0.0
    for model, (share, mean_in, mean_out, (p_in, p_out, p_cache)) in MODELS.items():
        served = count(requests * share)
        figures = ModelFigures(requests=served)
        figures.tokens_in = count(served * mean_in * rng.uniform(0.8, 1.2))
        figures.tokens_out = count(served * mean_out * rng.uniform(0.8, 1.2))
        figures.tokens_cache_read = count(figures.tokens_in * 0.35)
        figures.tokens_reasoning = count(figures.tokens_out * 0.1)
        figures.cost_usd = (
            (figures.tokens_in - figures.tokens_cache_read) * p_in
            + figures.tokens_cache_read * p_cache
            + figures.tokens_out * p_out
        ) / 1e6
        s.models[model] = figures
        tokens_in += figures.tokens_in
        tokens_out += figures.tokens_out
        cost += figures.cost_usd
        s.tokens_cache_read_total += figures.tokens_cache_read
        s.tokens_reasoning_total += figures.tokens_reasoning
    s.tokens_in_total, s.tokens_out_total, s.cost_usd = tokens_in, tokens_out, cost
    s.tokens_estimated_total = count((tokens_in + tokens_out) * profile.estimated_share)

    s.clients = clients_at(variant, s, rng)

    finished = requests - s.client_closed_total
    s.latency_buckets = lognormal_buckets(LATENCY_BUCKETS, finished, profile.latency_median, 0.6)
    s.ttfb_buckets = lognormal_buckets(LATENCY_BUCKETS, finished, profile.ttfb_median, 0.5)

    latency = profile.latency_median * 1.2
    s.in_flight = rate * latency
    s.in_flight_max = s.in_flight * rng.uniform(1.3, 1.8)
    s.queued = max(0.0, s.in_flight - 40) * 0.1
    s.workers = 128.0 * profile.replicas
    s.worker_utilization = s.in_flight / s.workers
    ceiling = 25.0 + 1.5 * math.sin(2 * math.pi * ts / (3 * DAY))
    s.limiter_ceiling = ceiling
    s.limiter_hold = ceiling * 0.95
    s.limiter_rate = ceiling * (1.05 if probes else 0.95)
    s.limiter_concurrency = 64.0
    s.quota_used = {
        "5h": 0.85 * ((ts % FIVE_HOURS) / FIVE_HOURS),
        "weekly": 0.6 * ((ts % WEEK) / WEEK),
    }
    s.quota_reset_at = {
        "5h": bucket_start(ts, FIVE_HOURS) + FIVE_HOURS,
        "weekly": bucket_start(ts, WEEK) + WEEK,
    }
    return derive(s)


def clients_at(variant: str, s: Snapshot, rng: random.Random) -> dict[str, ClientFigures]:
    """The client keys' shares of a snapshot's requests, tokens and refusals."""
    count = _counter(rng)
    clients = {}
    for client, (shares, rank, wait_median, refused_share) in CLIENTS.items():
        share = shares.get(variant)
        if share is None:
            continue
        requests = count(s.requests_total * share)
        refused = count(requests * refused_share)
        admitted = requests - refused
        clients[client] = ClientFigures(
            requests=requests,
            requests_2xx=count(admitted * 0.98),
            admitted=admitted,
            refused=refused,
            tokens_in=count(s.tokens_in_total * share),
            tokens_out=count(s.tokens_out_total * share),
            refused_by={"client_budget_rpm": refused} if refused else {},
            admitted_by_class={rank: admitted} if admitted else {},
            wait_buckets=lognormal_buckets(WAIT_BUCKETS, admitted, wait_median, 0.8)
            if admitted
            else {},
        )
    return clients


def lognormal_buckets(
    bounds: Sequence[float], count: float, median: float, sigma: float
) -> Buckets:
    """Cumulative histogram buckets that ``count`` log-normal observations would fill."""
    buckets: Buckets = {}
    for bound in bounds:
        z = (math.log(bound) - math.log(median)) / sigma
        buckets[float(bound)] = count * 0.5 * (1 + math.erf(z / math.sqrt(2)))
    buckets[math.inf] = float(count)
    return buckets


def round_snapshots(
    ts: float, variants: Sequence[str] = VARIANTS, seconds: float = INTERVAL
) -> list[Snapshot]:
    """One collector round: a snapshot per variant, all starting at ``ts``."""
    return [snapshot_at(variant, ts, seconds) for variant in variants]


def history(
    now: float,
    *,
    hours: float = 192,
    fine_minutes: float = 120,
    minute_hours: float = 25,
    variants: Sequence[str] = VARIANTS,
) -> Iterator[Snapshot]:
    """The snapshots of the layout in the module docstring, oldest first."""
    end = bucket_start(now, INTERVAL)
    fine_start = bucket_start(end - fine_minutes * 60, 60)
    minute_start = min(bucket_start(end - minute_hours * 3600, 3600), fine_start)
    hour_start = min(bucket_start(end - hours * 3600, 3600), minute_start)
    for start, stop, seconds in (
        (hour_start, minute_start, 3600),
        (minute_start, fine_start, 60),
        (fine_start, end, INTERVAL),
    ):
        ts = start
        while ts < stop:
            yield from round_snapshots(ts, variants, seconds)
            ts += seconds


async def seed_history_async(
    url: str,
    now: float,
    *,
    hours: float = 192,
    fine_minutes: float = 120,
    minute_hours: float = 25,
    variants: Sequence[str] = VARIANTS,
) -> SeedSummary:
    """Migrate the database at ``url``, write the history, roll it up (see the module)."""
    await migrate.upgrade(url)
    store = SnapshotStore.open(url)
    try:
        batch: list[Snapshot] = []
        start = None
        for snapshot in history(
            now,
            hours=hours,
            fine_minutes=fine_minutes,
            minute_hours=minute_hours,
            variants=variants,
        ):
            start = snapshot.ts if start is None else start
            batch.append(snapshot)
            if len(batch) >= WRITE_CHUNK:
                await store.write(batch)
                batch = []
        await store.write(batch)
        await store.downsample(now)
        written = await _counts(store)
    finally:
        await store.close()
    return SeedSummary(start or now, bucket_start(now, INTERVAL), written)


def seed_history(
    url: str,
    now: float | None = None,
    *,
    hours: float = 192,
    fine_minutes: float = 120,
    minute_hours: float = 25,
    variants: Sequence[str] = VARIANTS,
) -> SeedSummary:
    """``seed_history_async`` for synchronous callers (a test fixture, a script)."""
    return asyncio.run(
        seed_history_async(
            url,
            time.time() if now is None else now,
            hours=hours,
            fine_minutes=fine_minutes,
            minute_hours=minute_hours,
            variants=variants,
        )
    )


async def write_rounds_async(
    url: str, starts: Sequence[float], variants: Sequence[str] = VARIANTS
) -> None:
    """Write collector rounds of 5 s, each in its own transaction as the collector would."""
    store = SnapshotStore.open(url)
    try:
        for ts in starts:
            await store.write(round_snapshots(ts, variants))
    finally:
        await store.close()


def write_rounds(url: str, starts: Sequence[float], variants: Sequence[str] = VARIANTS) -> None:
    """``write_rounds_async`` for synchronous callers."""
    asyncio.run(write_rounds_async(url, starts, variants))


def write_round(url: str, ts: float, variants: Sequence[str] = VARIANTS) -> None:
    """Write one collector round of 5 s starting at ``ts``."""
    write_rounds(url, [ts], variants)


async def _counts(store: SnapshotStore) -> dict[int, int]:
    from sqlalchemy import func, select

    from zai_proxy.collector.models import snapshots

    statement = select(snapshots.c.resolution, func.count()).group_by(snapshots.c.resolution)
    async with store.engine.connect() as connection:
        return {int(r): int(n) for r, n in await connection.execute(statement)}


def _counter(rng: random.Random) -> Callable[[float], float]:
    # Expected counts rounded up or down at random, so that a slow variant's rare events
    # still happen in 5 s snapshots, at the right long-run rate.
    def count(expected: float) -> float:
        whole = math.floor(expected)
        return float(whole + (rng.random() < expected - whole))

    return count


def _instants(ts: float, seconds: float, every: float, offset: float) -> int:
    # How many of the instants offset + k * every fall in [ts, ts + seconds).
    return math.floor((ts + seconds - offset - 1e-9) / every) - math.floor(
        (ts - offset - 1e-9) / every
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Seed a database from the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url", help="database URL, e.g. sqlite:////tmp/dash.db")
    parser.add_argument("--hours", type=float, default=192, help="history depth (hours)")
    parser.add_argument("--now", type=float, default=None, help="end of history (epoch s)")
    args = parser.parse_args(argv)
    summary = seed_history(args.url, args.now, hours=args.hours)
    print(f"seeded {args.url}: rows per resolution {summary.written}, ends at {summary.end}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
