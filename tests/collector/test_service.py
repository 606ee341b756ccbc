"""The collector as a process: real proxies driven by the simulated upstream, read back from SQL.

Traffic is known exactly (requests per variant, token usage set by the simulator's
x-sim-* headers, latencies by x-sim-latency-ms), so the stored figures are checked against
what was sent: totals exactly, latency percentiles within the histogram bucket that holds
the true value. Traffic is sent only to proxies the collector has already scraped (a first
scrape is a baseline), and a proxy is restarted or stopped only after its counts were
stored, so every request must appear exactly once.
"""

from __future__ import annotations

import asyncio
import math
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from itertools import pairwise
from pathlib import Path

import asyncpg
import httpx
import pytest
from sqlalchemy.engine import make_url

from tests.collector.conftest import PostgresDatabases
from tests.collector.processes import (
    CollectorClient,
    Process,
    collector,
    limiter,
    metrics_url,
    proxy,
    running,
    wait_for,
)
from zai_proxy.collector import metrics as m
from zai_proxy.collector import migrate
from zai_proxy.collector.pricing import default_prices
from zai_proxy.collector.rollup import downsample
from zai_proxy.collector.snapshot import Snapshot
from zai_proxy.collector.store import SnapshotStore
from zai_proxy.proxy.buckets import LATENCY_BUCKETS
from zai_proxy.simulator.process import start_simulator

MODEL = "glm-4.6"
FAST_MS, SLOW_MS, CANARY_MS = 60, 400, 300
OUTAGE_SECONDS = 60  # how long the database refuses connections (the "a minute")


@dataclass
class Sent:
    """What one variant was sent: the truth the stored figures are checked against."""

    requests: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    latencies: list[float] = field(default_factory=list)  # seconds the upstream waited
    measured: list[float] = field(default_factory=list)  # seconds the client waited


@dataclass
class Traffic:
    """Sends chat completions through proxies and keeps the ledger per variant."""

    sent: dict[str, Sent] = field(default_factory=dict)

    def send(self, target: Process, variant: str, count: int, latency_ms: list[int]) -> None:
        """``count`` requests at once, the i-th waiting ``latency_ms[i % len]`` upstream."""
        ledger = self.sent.setdefault(variant, Sent())
        base = ledger.requests

        async def one(client: httpx.AsyncClient, i: int) -> None:
            prompt, completion = 100 + base + i, 7 + (base + i) % 13
            sent_at = time.perf_counter()
            response = await client.post(
                f"{target.url}/v1/chat/completions",
                json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
                headers={
                    "x-sim-prompt-tokens": str(prompt),
                    "x-sim-completion-tokens": str(completion),
                    "x-sim-latency-ms": str(latency_ms[i % len(latency_ms)]),
                },
            )
            ledger.measured.append(time.perf_counter() - sent_at)
            assert response.status_code == 200, response.text
            ledger.tokens_in += prompt
            ledger.tokens_out += completion
            ledger.latencies.append(latency_ms[i % len(latency_ms)] / 1000)

        async def all_of_them() -> None:
            async with httpx.AsyncClient(timeout=30) as client:
                await asyncio.gather(*(one(client, i) for i in range(count)))

        asyncio.run(all_of_them())
        ledger.requests += count


def read_rows(database_url: str, variant: str, start: float) -> list[Snapshot]:
    """Every stored 5 s point of a variant since ``start``."""

    async def read() -> list[Snapshot]:
        store = SnapshotStore.open(database_url)
        try:
            return await store.query(variant, start, time.time() + 60, max_points=1000)
        finally:
            await store.close()

    return asyncio.run(read())


def latest(database_url: str, variant: str) -> Snapshot:
    """The newest stored snapshot of a variant (one round's, not regrouped)."""

    async def read() -> Snapshot | None:
        store = SnapshotStore.open(database_url)
        try:
            return await store.latest(variant)
        finally:
            await store.close()

    found = asyncio.run(read())
    assert found is not None
    return found


def total(rows: list[Snapshot]) -> Snapshot:
    """The rows merged into one snapshot (percentiles re-derived from merged buckets)."""
    return downsample(rows, rows[0].ts, rows[-1].ts + rows[-1].seconds - rows[0].ts)


def stored_matches(database_url: str, start: float, sent: dict[str, Sent]) -> bool:
    """Whether every variant's stored requests and tokens equal what was sent."""
    for variant, ledger in sent.items():
        rows = read_rows(database_url, variant, start)
        got = (
            sum(r.requests_total for r in rows),
            sum(r.tokens_in_total for r in rows),
            sum(r.tokens_out_total for r in rows),
        )
        if got != (ledger.requests, ledger.tokens_in, ledger.tokens_out):
            return False
    return True


def wait_stored(database_url: str, start: float, traffic: Traffic, timeout: float = 20.0) -> None:
    wait_for(lambda: stored_matches(database_url, start, traffic.sent), timeout, interval=0.3)


def bucket_of(seconds: float) -> tuple[float, float]:
    """The (lower, upper] latency bucket that holds a duration."""
    bounds = (0.0, *LATENCY_BUCKETS)
    for lower, upper in pairwise(bounds):
        if seconds <= upper:
            return lower, upper
    return bounds[-1], math.inf


def true_quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


def assert_percentiles_within_buckets(snapshot: Snapshot, ledger: Sent) -> None:
    # The proxy sees each request take at least its upstream latency and at most what the
    # client measured: the stored percentile lies between the buckets holding those two.
    for q, stored in ((0.5, snapshot.latency_p50), (0.95, snapshot.latency_p95)):
        lower, _ = bucket_of(true_quantile(ledger.latencies, q))
        _, upper = bucket_of(true_quantile(ledger.measured, q))
        assert stored is not None and lower <= stored <= upper, (q, stored, lower, upper)


def assert_no_negative_figure(rows: list[Snapshot]) -> None:
    for row in rows:
        for f in fields(Snapshot):
            value = getattr(row, f.name)
            if isinstance(value, float):
                assert value >= 0, (f.name, row)


def collector_env(targets: list[Process], database_url: str, **extra: str) -> dict[str, str]:
    return {
        "COLLECTOR_TARGETS": ",".join(t.url for t in targets),
        "COLLECTOR_LIMITER_TARGETS": "",
        "SCRAPE_INTERVAL": "1",
        "DATABASE_URL": database_url,
        **extra,
    }


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    with start_simulator() as sim:
        yield sim.url


def test_stored_figures_equal_the_traffic_through_restarts_and_a_vanishing_replica(
    upstream: str, tmp_path: Path
) -> None:
    start = time.time() - 5
    database_url = f"sqlite:///{tmp_path / 'rollups.db'}"
    p1, p2 = proxy(upstream, "production"), proxy(upstream, "production")
    c1, c2 = proxy(upstream, "canary"), proxy(upstream, "canary")
    # The limiter runs on its own store: its rate (at most 10/s) tells its figures apart
    # from the proxies' own limiter gauges (1000/s).
    lim = limiter({"RATE_LIMIT_INITIAL": "7", "RATE_LIMIT_MAX": "10"})
    env = collector_env([p1, p2, c1, c2], database_url, COLLECTOR_LIMITER_TARGETS=lim.url)
    col = collector(env)
    client = CollectorClient(col.url)
    traffic = Traffic()
    with running(p1, p2, c1, c2, lim):
        with running(col):
            everyone = {metrics_url(p.url) for p in (p1, p2, c1, c2, lim)}
            client.wait_up(everyone)

            fast_and_slow = [FAST_MS] * 9 + [SLOW_MS]  # 10% slow: p95 is in the slow bucket
            traffic.send(p1, "production", 20, fast_and_slow)
            traffic.send(p2, "production", 20, fast_and_slow)
            traffic.send(c1, "canary", 10, [CANARY_MS])
            traffic.send(c2, "canary", 10, [CANARY_MS])
            wait_stored(database_url, start, traffic)

            # A replica restarts: its counters start again from zero.
            p2.stop()
            p2.start()
            client.wait_up(everyone)
            traffic.send(p2, "production", 10, fast_and_slow)
            wait_stored(database_url, start, traffic)

            # A replica goes away for good.
            c2.stop()
            client.wait_up(everyone - {metrics_url(c2.url)})
            traffic.send(c1, "canary", 10, [CANARY_MS])
            wait_stored(database_url, start, traffic)
            client.wait_rounds(2)  # nothing more arrives: no late spike
            assert stored_matches(database_url, start, traffic.sent)
            errors = client.metric(m.SCRAPE_ERRORS, kind="proxy")
            written = client.metric(m.SNAPSHOTS_WRITTEN)
        log = col.log()

    production = read_rows(database_url, "production", start)
    canary = read_rows(database_url, "canary", start)
    assert_no_negative_figure(production + canary)
    prices = default_prices()
    for rows, ledger in (
        (production, traffic.sent["production"]),
        (canary, traffic.sent["canary"]),
    ):
        whole = total(rows)
        assert whole.requests_2xx_total == ledger.requests
        assert whole.latency_buckets[math.inf] == ledger.requests
        assert_percentiles_within_buckets(whole, ledger)
        assert whole.models[MODEL].requests == ledger.requests
        expected_cost = prices.cost(MODEL, tokens_in=ledger.tokens_in, tokens_out=ledger.tokens_out)
        assert whole.cost_usd == pytest.approx(expected_cost, rel=1e-9)
        # From the limiter's exposition (a round in which it did not answer falls back to
        # the proxies' gauges: not the typical row).
        assert statistics.median(r.limiter_rate or math.inf for r in rows) <= 10
    # Replicas seen: both production replicas (one while the other restarted); both
    # canaries, then the one left.
    assert max(r.replicas for r in production) == 2
    assert canary[0].replicas == 2
    assert latest(database_url, "canary").replicas == 1
    assert latest(database_url, "production").replicas == 2
    # The restart and the stop were each logged once, not every round.
    assert log.count(f"target {metrics_url(c2.url)} is down") == 1
    assert errors >= 2 and written > 0


def test_snapshots_wait_in_memory_while_postgresql_refuses_connections(
    upstream: str, postgres_databases: PostgresDatabases
) -> None:
    start = time.time() - 5
    database_url = postgres_databases.create()
    name = str(make_url(database_url).database)
    production, canary = proxy(upstream, "production"), proxy(upstream, "canary")
    col = collector(collector_env([production, canary], database_url))
    client = CollectorClient(col.url)
    traffic = Traffic()
    with running(production, canary, col):
        client.wait_up({metrics_url(production.url), metrics_url(canary.url)})
        traffic.send(production, "production", 12, [FAST_MS])
        traffic.send(canary, "canary", 6, [CANARY_MS])
        wait_stored(database_url, start, traffic)

        asyncio.run(
            admin(
                postgres_databases.server_url,
                f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false',
                f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'",
            )
        )
        down = time.time()
        before = client.metric(m.DATABASE_ERRORS, operation="write")
        traffic.send(production, "production", 8, [FAST_MS])
        traffic.send(canary, "canary", 4, [CANARY_MS])
        wait_for(lambda: client.metric(m.SNAPSHOTS_BUFFERED) >= 6, 20)
        assert client.metric(m.DATABASE_ERRORS, operation="write") > before
        assert client.metric(m.DATABASE_UP) == 0
        assert httpx.get(f"{col.url}/health").json() == {"status": "degraded"}
        # A minute without the database, traffic going on: every round waits in memory.
        while time.time() - down < OUTAGE_SECONDS:
            traffic.send(production, "production", 2, [FAST_MS])
            traffic.send(canary, "canary", 1, [CANARY_MS])
            time.sleep(5)
        buffered = client.metric(m.SNAPSHOTS_BUFFERED)
        # One snapshot per variant per one-second round (a slow round may merge two).
        assert buffered >= 2 * 0.8 * OUTAGE_SECONDS, buffered
        assert client.metric(m.SNAPSHOTS_DROPPED) == 0
        up = time.time()

        asyncio.run(
            admin(postgres_databases.server_url, f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        )
        wait_stored(database_url, start, traffic)
        wait_for(lambda: client.metric(m.SNAPSHOTS_BUFFERED) == 0, 10)
        assert client.metric(m.DATABASE_UP) == 1
        log = col.log()

    rows = read_rows(database_url, "production", start)
    assert_no_negative_figure(rows)
    assert_percentiles_within_buckets(total(rows), traffic.sent["production"])
    # No part of the outage is missing: a stored 5 s point for every 5 s of it.
    during = sorted(row.ts for row in rows if down <= row.ts <= up - 5)
    assert len(during) >= (up - 5 - down) // 5, (len(during), up - down)
    assert max(b - a for a, b in pairwise(during)) == 5, during
    # One line when the database went away and one when it came back, not one per round.
    assert log.count("rollup database unavailable") == 1
    assert log.count("rollup database back") == 1


async def admin(server_url: str, *statements: str) -> None:
    connection = await asyncpg.connect(server_url, timeout=3)
    try:
        for statement in statements:
            await connection.execute(statement)
    finally:
        await connection.close()


# The command line


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "zai_proxy", *args],
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_migrate_runs_the_migrations_up_and_down(tmp_path: Path) -> None:
    env = {"DATABASE_URL": f"sqlite:///{tmp_path / 'rollups.db'}"}

    up = run_cli("migrate", env=env)
    down = run_cli("migrate", "--downgrade", "base", env=env)

    assert up.returncode == 0, up.stderr
    assert f"at revision {migrate.head()}" in up.stdout
    assert down.returncode == 0, down.stderr
    assert "at revision base" in down.stdout


@pytest.mark.parametrize("command", ["migrate", "collector"])
def test_an_unreachable_database_stops_the_command_with_one_line(command: str) -> None:
    env = {"DATABASE_URL": "postgresql://collector:hunter2@127.0.0.1:9/rollups"}

    result = run_cli(command, env=env)

    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "hunter2" not in result.stderr
    [line] = [line for line in result.stderr.splitlines() if line.startswith("zai-proxy")]
    assert line.startswith(f"zai-proxy {command}: database postgresql+asyncpg://collector:***@")


def test_a_scrape_timeout_not_shorter_than_the_interval_is_refused() -> None:
    result = run_cli("collector", env={"SCRAPE_INTERVAL": "2", "SCRAPE_TIMEOUT": "2"})

    assert result.returncode == 2
    assert "SCRAPE_TIMEOUT (2.0) must be shorter than SCRAPE_INTERVAL (2.0)" in result.stderr
