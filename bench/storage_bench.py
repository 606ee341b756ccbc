"""Rollup store: range queries on a full database, per range and variant.

The database is filled as retention keeps it after a long run, for two variants
(production, canary): 5 s rows for the last 24 h, 1 min rows for 7 days, 1 h rows for
90 days (about 59,000 rows), each row a realistic snapshot (14 latency and 10 TTFB
buckets, two models, two quota windows). Each level ends where the coarser one has
rolled up to, as after ``downsample``, so queries also read the finer tail.

Then every range (5 m, 15 m, 1 h, 6 h, 24 h, 7 d) is queried for each variant and for
all variants, 20 runs each (after one warm-up run), through ``SnapshotStore.query``:
the time includes decoding rows into snapshots and regrouping them into points.
Target: a 7-day query answers in under 200 ms.

SQLite always (a temporary file); PostgreSQL when reachable (a temporary database on
the server, dropped at the end).

    .venv/bin/python bench/storage_bench.py
    .venv/bin/python bench/storage_bench.py --runs 50 --postgres postgresql://postgres@127.0.0.1/test
    .venv/bin/python bench/storage_bench.py --no-postgres --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy.engine import make_url

from zai_proxy.collector import migrate
from zai_proxy.collector.queries import plan_query
from zai_proxy.collector.snapshot import ModelFigures, Snapshot
from zai_proxy.collector.store import DEFAULT_RETENTION, SnapshotStore

VARIANTS = ("production", "canary")
RANGES = (
    ("5m", 300),
    ("15m", 900),
    ("1h", 3600),
    ("6h", 6 * 3600),
    ("24h", 86400),
    ("7d", 7 * 86400),
)
TARGET_7D_MS = 200.0
LATENCY_BOUNDS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, math.inf)
TTFB_BOUNDS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, math.inf)
DEFAULT_POSTGRES = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


def snapshot(ts: float, seconds: int, variant: str, i: int) -> Snapshot:
    """A snapshot with every field filled, varying a little with ``i``."""
    rate = 20.0 + 5 * math.sin(i / 50)
    requests = rate * seconds
    cumulative = 0.0
    latency = {}
    for n, bound in enumerate(LATENCY_BOUNDS):
        cumulative = requests if math.isinf(bound) else min(requests, requests * (n + 1) / 12)
        latency[bound] = cumulative
    ttfb = {
        b: requests if math.isinf(b) else requests * (n + 1) / 10 for n, b in enumerate(TTFB_BOUNDS)
    }
    return Snapshot(
        ts=ts,
        seconds=seconds,
        variant=variant,
        replicas=3,
        requests_total=requests,
        requests_2xx_total=requests * 0.97,
        requests_4xx_total=requests * 0.01,
        requests_429_total=requests * 0.015,
        requests_5xx_total=requests * 0.005,
        client_closed_total=1.0,
        tokens_in_total=requests * 900,
        tokens_out_total=requests * 350,
        tokens_cache_read_total=requests * 200,
        tokens_cache_write_total=requests * 10,
        tokens_reasoning_total=requests * 40,
        tokens_estimated_total=requests * 3,
        cost_usd=requests * 0.0021,
        upstream_errors_total=requests * 0.005,
        upstream_429_frequency_total=requests * 0.01,
        upstream_429_concurrency_total=requests * 0.003,
        upstream_429_quota_total=0.0,
        upstream_429_congestion_total=requests * 0.002,
        retries_total=requests * 0.012,
        proxy_rate_limited_total=requests * 0.001,
        limiter_increases_total=1.0,
        limiter_decreases_total=0.0,
        limiter_probes_total=0.0,
        requests_per_s=rate,
        error_ratio=0.005,
        tokens_in_per_s=rate * 900,
        tokens_out_per_s=rate * 350,
        upstream_429_ratio=0.015,
        latency_p50=1.2,
        latency_p95=4.8,
        latency_p99=9.1,
        ttfb_p50=0.3,
        ttfb_p95=0.9,
        ttfb_p99=2.1,
        latency_buckets=latency,
        ttfb_buckets=ttfb,
        in_flight=30.0,
        in_flight_max=41.0,
        queued=2.0,
        workers=96.0,
        worker_utilization=0.31,
        degraded_replicas=0.0,
        limiter_rate=22.5,
        limiter_ceiling=25.0,
        limiter_hold=0.1,
        limiter_concurrency=64.0,
        quota_used={"five_hour": 0.42, "weekly": 0.13},
        quota_reset_at={"five_hour": ts + 7200, "weekly": ts + 400000},
        models={
            "glm-4.6": ModelFigures(requests * 0.7, requests * 630, requests * 245, cost_usd=1.0),
            "glm-4.5-air": ModelFigures(requests * 0.3, requests * 270, requests * 105),
        },
    )


def history(now: float, variant: str) -> Iterator[list[Snapshot]]:
    """Batches of a full database's rows for one variant, coarse to fine."""
    levels = (
        (3600, DEFAULT_RETENTION[3600]),
        (60, DEFAULT_RETENTION[60]),
        (5, DEFAULT_RETENTION[5]),
    )
    for seconds, keep in levels:
        first = math.ceil((now - keep) / seconds) * seconds
        last = math.floor(now / seconds) * seconds  # the open bucket is not rolled up yet
        if seconds == 5:
            last = now
        timestamps = [first + k * seconds for k in range(int((last - first) // seconds))]
        for start in range(0, len(timestamps), 2000):
            chunk = timestamps[start : start + 2000]
            yield [snapshot(ts, seconds, variant, int(ts // seconds)) for ts in chunk]


async def fill(store: SnapshotStore, now: float) -> int:
    rows = 0
    for variant in VARIANTS:
        for batch in history(now, variant):
            rows += await store.write(batch)
    return rows


async def measure(store: SnapshotStore, now: float, runs: int) -> list[dict[str, Any]]:
    results = []
    for label, span in RANGES:
        plan = plan_query(now - span, now, resolutions=store.resolutions)
        for variant in (*VARIANTS, "all"):
            await store.query(variant, now - span, now, now=now)  # warm-up
            timings = []
            points = 0
            for _ in range(runs):
                started = time.perf_counter()
                answer = await store.query(variant, now - span, now, now=now)
                timings.append((time.perf_counter() - started) * 1000)
                points = len(answer)
            timings.sort()
            results.append(
                {
                    "range": label,
                    "variant": variant,
                    "resolution_s": plan.resolution,
                    "step_s": plan.step,
                    "points": points,
                    "median_ms": statistics.median(timings),
                    "p95_ms": timings[min(len(timings) - 1, math.ceil(0.95 * len(timings)) - 1)],
                }
            )
    return results


async def run_backend(name: str, url: str, runs: int) -> dict[str, Any]:
    await migrate.upgrade(url)
    store = SnapshotStore.open(url)
    try:
        now = math.floor(time.time() / 5) * 5 + 0.0
        started = time.perf_counter()
        rows = await fill(store, now)
        fill_s = time.perf_counter() - started
        print(f"{name}: {rows:,} rows written in {fill_s:.1f} s", file=sys.stderr)
        results = await measure(store, now, runs)
    finally:
        await store.close()
    return {"backend": name, "rows": rows, "fill_seconds": fill_s, "queries": results}


async def postgres_database(server: str) -> str | None:
    name = f"zai_proxy_bench_{uuid.uuid4().hex[:8]}"
    try:
        connection = await asyncpg.connect(server, timeout=3)
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        print(f"PostgreSQL not reachable at {server} ({exc}): skipped", file=sys.stderr)
        return None
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    return make_url(server).set(database=name).render_as_string(False)


async def drop_database(server: str, url: str) -> None:
    connection = await asyncpg.connect(server, timeout=3)
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)')
    finally:
        await connection.close()


def table(report: dict[str, Any]) -> str:
    lines = [
        f"{report['backend']}: {report['rows']:,} rows",
        "",
        "| range | variant | stored | step | points | median ms | p95 ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for q in report["queries"]:
        lines.append(
            f"| {q['range']} | {q['variant']} | {q['resolution_s']} s | {q['step_s']} s "
            f"| {q['points']} | {q['median_ms']:.1f} | {q['p95_ms']:.1f} |"
        )
    worst = max(q["p95_ms"] for q in report["queries"] if q["range"] == "7d")
    verdict = "met" if worst < TARGET_7D_MS else "MISSED"
    lines.append(
        f"\n7-day p95 (worst variant): {worst:.1f} ms, target < {TARGET_7D_MS:.0f} ms: {verdict}"
    )
    return "\n".join(lines)


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="timed runs per query (20)")
    parser.add_argument("--postgres", default=DEFAULT_POSTGRES, help="PostgreSQL server URL")
    parser.add_argument("--no-postgres", action="store_true", help="SQLite only")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = parser.parse_args(argv)

    reports = []
    with tempfile.TemporaryDirectory(prefix="zai-storage-bench-") as folder:
        reports.append(await run_backend("SQLite", f"sqlite:///{folder}/rollups.db", args.runs))
        size = sum(f.stat().st_size for f in Path(folder).iterdir())
        reports[-1]["file_bytes"] = size
    if not args.no_postgres:
        url = await postgres_database(args.postgres)
        if url is not None:
            try:
                reports.append(await run_backend("PostgreSQL", url, args.runs))
            finally:
                await drop_database(args.postgres, url)

    print(f"# {platform.node()} · {os.cpu_count()} CPUs · Python {platform.python_version()}\n")
    for report in reports:
        print(table(report))
        print()
    if args.json:
        args.json.write_text(json.dumps(reports, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
