"""Rollup store: range queries on a full database, per range and variant.

The database is filled as retention keeps it after a long run, for two variants
(production, canary): 5 s rows for the last 24 h, 1 min rows for 7 days, 1 h rows for
90 days (about 59,000 rows), each row a realistic snapshot (14 latency and 10 TTFB
buckets, two models, two quota windows). Each level ends where the coarser one has
rolled up to, as after ``downsample``, so queries also read the finer tail.

Then every range (5 m, 15 m, 1 h, 6 h, 24 h, 7 d) is queried for each variant and for
all variants, 20 runs each (after one warm-up run), through ``SnapshotStore.query``:
the time includes decoding rows into snapshots and regrouping them into points. Wall
time (median, p95) and this process's CPU time (median: the database's own work on
SQLite, which runs in-process, but not PostgreSQL's), since the machine may be shared.
Target: a 7-day query answers in under 200 ms.

Then maintenance on the full database: the first ``downsample`` (no watermark yet, so
it rolls up all 24 h of 5 s rows), a steady-state one a minute later, and ``expire``
half a day later (12 h of 5 s and 1 min rows), with the longest single DELETE.

SQLite always (a temporary file); PostgreSQL when reachable (a temporary database on
the server, dropped at the end).

    .venv/bin/python bench/storage_bench.py
    .venv/bin/python bench/storage_bench.py --postgres postgresql://postgres@127.0.0.1/test
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
from sqlalchemy import event
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


def count(value: float) -> float:
    """A count of events: whole, as counter increments are."""
    return float(round(value))


def snapshot(ts: float, seconds: int, variant: str, i: int) -> Snapshot:
    """A snapshot with every field filled, varying a little with ``i``."""
    rate = 20.0 + 5 * math.sin(i / 50)
    requests = count(rate * seconds)
    latency = {
        b: requests if math.isinf(b) else count(min(requests, requests * (n + 1) / 12))
        for n, b in enumerate(LATENCY_BOUNDS)
    }
    ttfb = {
        b: requests if math.isinf(b) else count(requests * (n + 1) / 10)
        for n, b in enumerate(TTFB_BOUNDS)
    }
    return Snapshot(
        ts=ts,
        seconds=seconds,
        variant=variant,
        replicas=3,
        requests_total=requests,
        requests_2xx_total=count(requests * 0.97),
        requests_4xx_total=count(requests * 0.01),
        requests_429_total=count(requests * 0.015),
        requests_5xx_total=count(requests * 0.005),
        client_closed_total=1.0,
        tokens_in_total=count(requests * 900),
        tokens_out_total=count(requests * 350),
        tokens_cache_read_total=count(requests * 200),
        tokens_cache_write_total=count(requests * 10),
        tokens_reasoning_total=count(requests * 40),
        tokens_estimated_total=count(requests * 3),
        cost_usd=requests * 0.0021,
        upstream_errors_total=count(requests * 0.005),
        upstream_429_frequency_total=count(requests * 0.01),
        upstream_429_concurrency_total=count(requests * 0.003),
        upstream_429_quota_total=0.0,
        upstream_429_congestion_total=count(requests * 0.002),
        retries_total=count(requests * 0.012),
        proxy_rate_limited_total=count(requests * 0.001),
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
        # Coarser levels stop at their open bucket, not rolled up yet; 5 s rows reach now.
        last = now if seconds == 5 else math.floor(now / seconds) * seconds
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
            timings, cpu = [], []
            points = 0
            for _ in range(runs):
                started, started_cpu = time.perf_counter(), time.process_time()
                answer = await store.query(variant, now - span, now, now=now)
                timings.append((time.perf_counter() - started) * 1000)
                cpu.append((time.process_time() - started_cpu) * 1000)
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
                    "cpu_median_ms": statistics.median(cpu),
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
        report = {"backend": name, "rows": rows, "fill_seconds": fill_s, "queries": results}
        report["maintenance"] = await maintenance(store, now)
        if store.engine.dialect.name == "postgresql":
            async with store.engine.connect() as connection:
                size = "SELECT pg_total_relation_size('snapshots')"
                report["file_bytes"] = (await connection.exec_driver_sql(size)).scalar()
    finally:
        await store.close()
    return report


async def maintenance(store: SnapshotStore, now: float) -> dict[str, float]:
    """Time a downsampling catch-up and an expiry on the full database."""
    statements: list[float] = []

    @event.listens_for(store.engine.sync_engine, "before_cursor_execute")
    def before(conn: Any, _cursor: Any, _statement: str, *_: Any) -> None:
        conn.info["started"] = time.perf_counter()

    @event.listens_for(store.engine.sync_engine, "after_cursor_execute")
    def after(conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if statement.lstrip().upper().startswith("DELETE"):
            statements.append((time.perf_counter() - conn.info["started"]) * 1000)

    # No watermark yet: the first run rolls up all 24 h of 5 s rows (and 1 min → 1 h).
    started = time.perf_counter()
    rolled = await store.downsample(now)
    catch_up = time.perf_counter() - started
    started = time.perf_counter()
    steady = await store.downsample(now + 60)  # one more minute, as every round would
    steady_s = time.perf_counter() - started
    # Half a day later: 12 h of 5 s rows and 12 h of 1 min rows have expired.
    started = time.perf_counter()
    deleted = await store.expire(now + 12 * 3600)
    expire_s = time.perf_counter() - started
    return {
        "catch_up_rows": rolled,
        "catch_up_s": catch_up,
        "steady_rows": steady,
        "steady_ms": steady_s * 1000,
        "expired_rows": deleted,
        "expire_s": expire_s,
        "delete_statements": len(statements),
        "longest_delete_ms": max(statements, default=0.0),
    }


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


def file_bytes(path: Path) -> int:
    """Size of the SQLite database file (closing checkpoints its write-ahead log into it)."""
    return path.stat().st_size


def table(report: dict[str, Any]) -> str:
    lines = [
        f"{report['backend']}: {report['rows']:,} rows"
        + (f", {report['file_bytes'] / 1e6:.0f} MB on disk" if "file_bytes" in report else ""),
        "",
        "| range | variant | stored | step | points | median ms | p95 ms | CPU median ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for q in report["queries"]:
        lines.append(
            f"| {q['range']} | {q['variant']} | {q['resolution_s']} s | {q['step_s']} s "
            f"| {q['points']} | {q['median_ms']:.1f} | {q['p95_ms']:.1f} "
            f"| {q['cpu_median_ms']:.1f} |"
        )
    worst = max(q["p95_ms"] for q in report["queries"] if q["range"] == "7d")
    verdict = "met" if worst < TARGET_7D_MS else "MISSED"
    lines.append(
        f"\n7-day p95 (worst variant): {worst:.1f} ms, target < {TARGET_7D_MS:.0f} ms: {verdict}"
    )
    m = report["maintenance"]
    lines.append(
        f"downsample catch-up (24 h of 5 s rows, no watermark): {m['catch_up_rows']:,} rows "
        f"in {m['catch_up_s']:.1f} s; one more minute: {m['steady_rows']} rows in "
        f"{m['steady_ms']:.0f} ms\n"
        f"expire 12 h later: {m['expired_rows']:,} rows in {m['expire_s']:.1f} s, "
        f"{m['delete_statements']} DELETE statements, longest {m['longest_delete_ms']:.0f} ms"
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
        reports[-1]["file_bytes"] = file_bytes(Path(folder) / "rollups.db")
    if not args.no_postgres:
        url = await postgres_database(args.postgres)
        if url is not None:
            try:
                reports.append(await run_backend("PostgreSQL", url, args.runs))
            finally:
                await drop_database(args.postgres, url)

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"# {platform.node()} · {os.cpu_count()} CPUs · Python {platform.python_version()}"
        f" · load average {load}\n"
    )
    for report in reports:
        print(table(report))
        print()
    if args.json:
        args.json.write_text(json.dumps(reports, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
