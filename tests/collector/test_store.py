"""The rollup store on SQLite and PostgreSQL: writes, queries, downsampling, expiry, buffering.

Every time is an argument (``now``): the tests move a clock of their own. T0 is an hour
boundary, so 1 min and 1 h buckets start at T0.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from dataclasses import fields, replace
from typing import Any

import pytest
from sqlalchemy import event, func, select

from zai_proxy.collector.baselines import Baseline
from zai_proxy.collector.database import (
    DEFAULT_DATABASE_URL,
    StorageError,
    StorageUnavailable,
    create_engine,
    normalise_url,
)
from zai_proxy.collector.models import SNAPSHOT_COLUMNS, SNAPSHOT_FIELDS, from_row, snapshots
from zai_proxy.collector.percentiles import quantile
from zai_proxy.collector.queries import plan_query
from zai_proxy.collector.snapshot import ClientFigures, ModelFigures, Snapshot
from zai_proxy.collector.store import BufferedWriter, SnapshotStore

T0 = 1_800_000_000.0  # an hour boundary
HOUR, DAY = 3600.0, 86400.0
MINUTE = 60.0


def full_snapshot(ts: float, variant: str = "production", seconds: float = 5.0) -> Snapshot:
    """A snapshot in which every field holds a value of its own (none at its default)."""
    special: dict[str, Any] = {
        "latency_buckets": {0.1: 3.0, 0.5: 7.0, 2.5: 9.0, math.inf: 10.0},
        "ttfb_buckets": {0.05: 4.0, 0.25: 8.0, math.inf: 10.0},
        "refusal_wait_buckets": {0.0: 2.0, 1.0: 5.0, math.inf: 6.0},
        "quota_used": {"five_hour": 0.25, "weekly": 0.5},
        "quota_reset_at": {"five_hour": ts + 3600.0, "weekly": ts + 86400.0},
        "models": {
            "glm-4.6": ModelFigures(*(float(i + 1) for i in range(len(fields(ModelFigures))))),
            "glm-4.5-air": ModelFigures(requests=2.0, tokens_in=30.5, cost_usd=0.125),
        },
        "clients": {
            "ide": ClientFigures(
                requests=4.0,
                requests_2xx=3.0,
                admitted=3.0,
                refused=1.0,
                tokens_in=400.0,
                tokens_out=80.0,
                refused_by={"client_budget_rpm": 1.0},
                admitted_by_class={"interactive": 2.0, "batch": 1.0},
                wait_buckets={0.01: 1.0, 0.5: 3.0, math.inf: 3.0},
                admitted_per_s=0.6,
                wait_p50=0.25,
                wait_p95=0.475,
                wait_p99=0.495,
            ),
        },
        "replicas": 3,
    }
    values: dict[str, Any] = {"ts": ts, "seconds": seconds, "variant": variant}
    for number, field in enumerate(fields(Snapshot)):
        if field.name not in values:
            values[field.name] = special.get(field.name, number + 0.5)
    return Snapshot(**values)


def series(
    start: float, stop: float, seconds: float, variant: str = "production"
) -> list[Snapshot]:
    """Snapshots from ``start`` to ``stop`` at one request per second (totals = seconds)."""
    return [
        Snapshot(
            ts=start + i * seconds,
            seconds=seconds,
            variant=variant,
            requests_total=seconds,
            requests_per_s=1.0,
        )
        for i in range(int((stop - start) // seconds))
    ]


async def count_rows(store: SnapshotStore, resolution: int, variant: str | None = None) -> int:
    statement = select(func.count()).where(snapshots.c.resolution == resolution)
    if variant is not None:
        statement = statement.where(snapshots.c.variant == variant)
    async with store.engine.connect() as connection:
        return int((await connection.execute(statement)).scalar_one())


async def rows_at(store: SnapshotStore, resolution: int, variant: str) -> list[Snapshot]:
    """Every stored row of one resolution and variant, by time, as stored."""
    statement = (
        select(*SNAPSHOT_COLUMNS)
        .where(snapshots.c.resolution == resolution, snapshots.c.variant == variant)
        .order_by(snapshots.c.ts)
    )
    async with store.engine.connect() as connection:
        return [from_row(row) for row in await connection.execute(statement)]


# Writing and reading back


def test_every_snapshot_field_has_a_column() -> None:
    assert set(SNAPSHOT_FIELDS) <= set(snapshots.columns.keys())


async def test_every_field_survives_a_write_and_a_read(store: SnapshotStore) -> None:
    written = [full_snapshot(T0), full_snapshot(T0, variant="canary")]

    await store.write(written)

    assert await store.latest("production") == written[0]
    assert await store.query("all", T0, T0 + 5) == [written[1], written[0]]  # by variant
    assert await store.query("canary", T0, T0 + 5) == [written[1]]


async def test_writing_the_same_interval_again_replaces_it(store: SnapshotStore) -> None:
    first = full_snapshot(T0)
    again = replace(first, requests_total=99.0, latency_p99=None, models={})

    await store.write([first])
    await store.write([again])

    assert await count_rows(store, 5) == 1
    assert await store.latest("production") == again


async def test_a_batch_is_written_whole_or_not_at_all(store: SnapshotStore) -> None:
    broken = replace(full_snapshot(T0 + 5), requests_total=None)  # type: ignore[arg-type]  # NOT NULL, left empty on purpose

    with pytest.raises(StorageError) as raised:
        await store.write([full_snapshot(T0), broken])

    assert not isinstance(raised.value, StorageUnavailable)
    assert await count_rows(store, 5) == 0


async def test_snapshots_are_stored_at_the_resolution_of_their_length(
    store: SnapshotStore,
) -> None:
    await store.write([full_snapshot(T0, seconds=5), full_snapshot(T0, seconds=10)])
    await store.write([full_snapshot(T0, seconds=60), full_snapshot(T0, seconds=3600)])

    assert [await count_rows(store, r) for r in (5, 60, 3600)] == [1, 1, 1]


async def test_latest_falls_back_to_coarser_resolutions(store: SnapshotStore) -> None:
    await store.write([full_snapshot(T0, seconds=3600), full_snapshot(T0 + 60, seconds=60)])

    latest = await store.latest("production")

    assert latest is not None
    assert (latest.ts, latest.seconds) == (T0 + 60, 60)
    assert await store.latest("nobody") is None


# Choosing the resolution of a range


@pytest.mark.parametrize(
    ("span", "resolution", "step"),
    [
        (5 * MINUTE, 5, 5),
        (15 * MINUTE, 5, 5),
        (HOUR, 5, 15),
        (6 * HOUR, 60, 120),
        (DAY, 60, 300),
        (7 * DAY, 3600, 3600),
        (30 * DAY, 3600, 3 * 3600),
        (90 * DAY, 3600, 8 * 3600),
    ],
)
def test_a_range_is_read_at_the_finest_resolution_that_stays_near_300_points(
    span: float, resolution: int, step: int
) -> None:
    plan = plan_query(T0 + 1234 - span, T0 + 1234, max_points=300)

    assert (plan.resolution, plan.step) == (resolution, step)
    assert span / plan.step + 1 <= 300


def test_a_resolution_already_expired_at_the_start_is_passed_over() -> None:
    retention = {5: DAY, 60: 7 * DAY, 3600: 90 * DAY}
    now = T0

    recent = plan_query(now - HOUR, now, retention=retention, now=now)
    yesterday = plan_query(now - 30 * HOUR, now - 29 * HOUR, retention=retention, now=now)

    assert recent.resolution == 5
    assert yesterday.resolution == 60


def test_an_empty_range_is_refused() -> None:
    with pytest.raises(ValueError, match="empty range"):
        plan_query(T0, T0)


@pytest.fixture
async def full_history(store: SnapshotStore) -> float:
    """Rows as retention keeps them: 1 h for 8 days, 1 min for 25 h, 5 s for the last hour.

    Each level stops where the next coarser one has rolled up to, as after downsampling.
    """
    now = T0 + 1235.0
    for variant in ("production", "canary"):
        await store.write(series(now - 8 * DAY - 1235, T0, 3600, variant))
        await store.write(series(T0 - 25 * HOUR, T0 + 1200, 60, variant))
        await store.write(series(now - HOUR - 35, now, 5, variant))
    return now


@pytest.mark.parametrize(
    ("span", "step"),
    [
        (5 * MINUTE, 5),
        (15 * MINUTE, 5),
        (HOUR, 15),
        (6 * HOUR, 120),
        (DAY, 300),
        (7 * DAY, 3600),
    ],
)
async def test_a_range_query_answers_every_second_once_in_at_most_300_points(
    store: SnapshotStore, full_history: float, span: float, step: int
) -> None:
    now = full_history
    start = now - span

    points = await store.query("production", start, now, now=now)

    assert 0 < len(points) <= 300
    assert all(p.variant == "production" for p in points)
    assert [p.ts for p in points] == sorted({p.ts for p in points})
    assert all(p.ts % step == 0 for p in points)
    assert {p.seconds for p in points[:-1]} == {step}
    # One request per second everywhere: the points hold every second of the range
    # (from its first bucket's start) once, coarse rows and the finer tail alike.
    first = math.floor(start / step) * step
    assert sum(p.requests_total for p in points) == pytest.approx(now - first)


async def test_all_variants_come_as_one_series_each(
    store: SnapshotStore, full_history: float
) -> None:
    now = full_history

    points = await store.query("all", now - DAY, now, now=now)

    by_variant = {v: [p for p in points if p.variant == v] for v in ("production", "canary")}
    assert len(points) == sum(len(v) for v in by_variant.values())
    assert all(0 < len(v) <= 300 for v in by_variant.values())
    assert [(p.ts, p.variant) for p in points] == sorted((p.ts, p.variant) for p in points)


# Downsampling


def scraped(start: float, stop: float, variant: str = "production") -> list[Snapshot]:
    """5 s snapshots of varied figures: 1 request each, latencies spread over buckets."""
    result = []
    for i in range(int((stop - start) // 5)):
        fast = float(i % 4)
        result.append(
            Snapshot(
                ts=start + 5 * i,
                seconds=5,
                variant=variant,
                replicas=1 + i % 3,
                requests_total=1.0,
                tokens_in_total=10.0 + i % 7,
                requests_per_s=0.2,
                in_flight=float(i % 5),
                latency_buckets={0.1: fast, 0.5: 3.0, 2.5: 4.0, math.inf: 4.0},
                ttfb_buckets={0.05: 1.0, math.inf: 4.0},
                latency_p99=quantile({0.1: fast, 0.5: 3.0, 2.5: 4.0, math.inf: 4.0}, 0.99),
            )
        )
    return result


async def test_downsampling_rolls_up_only_complete_buckets(store: SnapshotStore) -> None:
    await store.write(scraped(T0, T0 + 2 * HOUR))
    # 1 h + 65 s: the 1 min bucket ending at 1 h + 60 s is not settled (10 s) yet.
    now = T0 + HOUR + 65

    written = await store.downsample(now)

    minutes = await rows_at(store, 60, "production")
    hours = await rows_at(store, 3600, "production")
    assert written == 61
    assert [m.ts for m in minutes] == [T0 + 60 * i for i in range(60)]
    assert [h.ts for h in hours] == [T0]

    assert await store.downsample(now + 5) == 1  # settled now
    assert await count_rows(store, 60) == 61


async def test_downsampled_values_follow_each_kind_of_field(store: SnapshotStore) -> None:
    source = scraped(T0, T0 + 2 * HOUR)
    await store.write(source)

    await store.downsample(T0 + 2 * HOUR + 15)

    hour = (await rows_at(store, 3600, "production"))[0]
    first_hour = [s for s in source if s.ts < T0 + HOUR]
    merged: dict[float, float] = {}
    for snapshot in first_hour:
        for bound, count in snapshot.latency_buckets.items():
            merged[bound] = merged.get(bound, 0.0) + count
    assert hour.seconds == 3600
    assert hour.requests_total == 720  # totals summed
    assert hour.tokens_in_total == sum(s.tokens_in_total for s in first_hour)
    assert hour.requests_per_s == pytest.approx(0.2)  # rates recomputed
    assert hour.in_flight == pytest.approx(sum(s.in_flight for s in first_hour) / 720)
    assert hour.replicas == 3  # maximum
    assert hour.latency_buckets == merged
    # Re-derived from the merged buckets, not the maximum of the 5 s p99s (2.5).
    assert hour.latency_p99 == pytest.approx(quantile(merged, 0.99))
    assert hour.latency_p99 is not None
    assert hour.latency_p99 < max(s.latency_p99 or 0.0 for s in first_hour)


async def test_downsampling_twice_changes_nothing(store: SnapshotStore) -> None:
    await store.write(scraped(T0, T0 + HOUR + 120))
    now = T0 + HOUR + 120 + 15
    await store.downsample(now)
    before = await rows_at(store, 60, "production") + await rows_at(store, 3600, "production")

    assert await store.downsample(now) == 0
    after = await rows_at(store, 60, "production") + await rows_at(store, 3600, "production")
    assert after == before


async def test_a_restarted_store_continues_from_the_watermark(
    store: SnapshotStore, database_url: str
) -> None:
    await store.write(scraped(T0, T0 + HOUR))
    await store.downsample(T0 + HOUR + 15)
    await store.close()

    restarted = SnapshotStore.open(database_url)
    try:
        await restarted.write(scraped(T0 + HOUR, T0 + 2 * HOUR))
        written = await restarted.downsample(T0 + 2 * HOUR + 15)
    finally:
        await restarted.close()

    assert written == 60 + 1  # only the second hour's minutes, and its hour
    assert await count_rows(store, 60) == 120


async def test_a_late_row_rolls_its_buckets_up_again(store: SnapshotStore) -> None:
    source = scraped(T0, T0 + 2 * HOUR)
    late = replace(source.pop(6), requests_total=5.0)  # T0 + 30 s, held back
    await store.write(source)
    await store.write(scraped(T0, T0 + HOUR, variant="canary"))
    now = T0 + 2 * HOUR + 15
    await store.downsample(now)
    assert (await rows_at(store, 60, "production"))[0].requests_total == 11

    # A buffered snapshot arrives after an outage, its minute and hour long rolled up.
    await store.write([late])
    await store.downsample(now)

    assert (await rows_at(store, 60, "production"))[0].requests_total == 11 + 5
    assert (await rows_at(store, 3600, "production"))[0].requests_total == 719 + 5
    assert (await rows_at(store, 3600, "canary"))[0].requests_total == 720


async def test_a_write_during_a_rollup_waits_for_it_and_is_rolled_up(database_url: str) -> None:
    reading, release = asyncio.Event(), asyncio.Event()

    class PausingStore(SnapshotStore):
        """Holds its first rollup chunk open until released."""

        async def _read_chunk(self, *args: Any) -> Any:
            chunk = await super()._read_chunk(*args)
            if not reading.is_set():
                reading.set()
                await release.wait()
            return chunk

    rollups = PausingStore(create_engine(database_url), owns_engine=True)
    writes = SnapshotStore.open(database_url)
    source = scraped(T0, T0 + HOUR)
    late = replace(source.pop(6), requests_total=5.0)
    try:
        await writes.write(source)
        rolling = asyncio.create_task(rollups.downsample(T0 + HOUR + 15))
        await reading.wait()
        writing = asyncio.create_task(writes.write([late]))
        await asyncio.sleep(0.3)
        assert not writing.done()  # waits for the rollup that is reading its bucket
        release.set()
        await rolling
        await writing
        await rollups.downsample(T0 + HOUR + 15)

        assert (await rows_at(writes, 60, "production"))[0].requests_total == 11 + 5
        assert (await rows_at(writes, 3600, "production"))[0].requests_total == 719 + 5
    finally:
        release.set()
        await rollups.close()
        await writes.close()


async def test_gaps_in_the_finer_rows_are_skipped(store: SnapshotStore) -> None:
    await store.write(scraped(T0, T0 + 120))
    await store.write(scraped(T0 + 3 * DAY, T0 + 3 * DAY + 120))

    written = await store.downsample(T0 + 3 * DAY + 200)

    assert [m.ts for m in await rows_at(store, 60, "production")] == [
        T0,
        T0 + 60,
        T0 + 3 * DAY,
        T0 + 3 * DAY + 60,
    ]
    assert written == 4 + 1  # the four minutes, and the first hour (the second is open)


async def test_nothing_to_downsample_is_fine(store: SnapshotStore) -> None:
    assert await store.downsample(T0) == 0
    assert await store.downsample(T0 + DAY) == 0


# Expiry


async def test_expiry_deletes_old_rows_in_bounded_batches(database_url: str) -> None:
    store = SnapshotStore.open(database_url, expire_batch=100)
    deletes: list[str] = []

    @event.listens_for(store.engine.sync_engine, "before_cursor_execute")
    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().upper().startswith("DELETE"):
            deletes.append(statement)

    now = T0
    try:
        await store.write(series(now - DAY - 250 * 5, now - DAY, 5))  # 250 expired
        await store.write(series(now - DAY, now - DAY + 50, 5))  # 10 kept
        await store.write(series(now - 7 * DAY - 30 * 60, now - 7 * DAY + 600, 60))  # 30, 10
        await store.write(series(now - 90 * DAY - 5 * HOUR, now - 90 * DAY + HOUR, 3600))

        deleted = await store.expire(now)

        assert deleted == 250 + 30 + 5
        assert [await count_rows(store, r) for r in (5, 60, 3600)] == [10, 10, 1]
        # Old baselines, then 100 + 100 + 50, then 30, then 5.
        assert len(deletes) == 1 + 3 + 1 + 1
        assert await store.expire(now) == 0
    finally:
        await store.close()


# Target baselines (ADR 0014)


def baseline(target: str, time: float, covered_until: float, requests: float) -> Baseline:
    """A baseline with counters, a histogram (+Inf bound included) and a start time."""
    labels = (("status", "200"), ("variant", "production"))
    return Baseline(
        target=target,
        time=time,
        start_time=T0 - DAY + 0.123456789,
        covered_until=covered_until,
        counters={
            ("proxy_requests_total", labels): requests,
            ("proxy_tokens_total", (("kind", "input"), ("variant", "production"))): 1e15 + 1,
        },
        histograms={
            ("proxy_request_duration_seconds", labels): {0.1: 1.0, 2.5: 3.0, math.inf: requests}
        },
    )


async def test_baselines_round_trip_with_the_round_they_were_written_with(
    store: SnapshotStore,
) -> None:
    first = [baseline("http://a:8080/metrics", T0 + 0.25, T0 + 5, 3.0)]
    assert await store.write([full_snapshot(T0)], first) == 1
    assert await store.load_baselines() == first

    # The next round replaces a target's row; a target without a start time keeps None.
    later = [
        baseline("http://a:8080/metrics", T0 + 5.25, T0 + 10, 7.0),
        replace(baseline("http://b:8080/metrics", T0 + 5.5, T0 + 10, 0.0), start_time=None),
    ]
    await store.write([full_snapshot(T0 + 5)], later)
    assert await store.load_baselines() == later
    assert await store.load_baselines(since=T0 + 5.4) == later[1:]


async def test_baselines_are_written_with_the_rows_or_not_at_all(store: SnapshotStore) -> None:
    broken = replace(full_snapshot(T0 + 5), requests_total=None)  # type: ignore[arg-type]  # NOT NULL, left empty on purpose

    with pytest.raises(StorageError):
        await store.write([full_snapshot(T0), broken], [baseline("a", T0, T0 + 10, 1.0)])

    assert await store.load_baselines() == []
    assert await count_rows(store, 5) == 0
    # A round with no snapshot stores its baselines alone.
    assert await store.write([], [baseline("a", T0, T0 + 10, 1.0)]) == 0
    assert len(await store.load_baselines()) == 1


async def test_a_round_longer_than_a_resolution_is_stored_at_the_one_given(
    store: SnapshotStore,
) -> None:
    gap = full_snapshot(T0 + 5, seconds=3595.0)

    await store.write([gap], resolution=5)

    assert await rows_at(store, 5, "production") == [gap]
    assert await count_rows(store, 60) == 0


async def test_expiry_deletes_the_baselines_of_targets_not_scraped_for_a_day(
    store: SnapshotStore,
) -> None:
    now = T0 + DAY
    old = baseline("gone", T0 - 1, T0, 1.0)
    kept = baseline("here", T0 + 1, T0 + 5, 1.0)
    await store.write([], [old, kept])

    await store.expire(now)

    assert await store.load_baselines() == [kept]


# Errors and the buffer


async def test_an_unreachable_database_is_unavailable_and_its_password_hidden() -> None:
    store = SnapshotStore.open("postgresql://collector:hunter2@127.0.0.1:9/rollups")
    try:
        with pytest.raises(StorageUnavailable) as raised:
            await store.write([full_snapshot(T0)])
    finally:
        await store.close()
    assert "hunter2" not in str(raised.value)
    assert "127.0.0.1:9" in str(raised.value)


class FlakyWriter:
    """A writer that fails while ``down``, else writes through (to a store, if given)."""

    def __init__(self, store: SnapshotStore | None = None) -> None:
        self.store = store
        self.down = False
        self.written: list[Snapshot] = []

    async def __call__(self, batch: Sequence[Snapshot]) -> None:
        if self.down:
            raise StorageUnavailable("database down")
        if self.store is not None:
            await self.store.write(batch)
        self.written.extend(batch)


async def test_the_buffer_keeps_the_newest_while_the_database_is_down() -> None:
    writer = FlakyWriter()
    buffer = BufferedWriter(writer, max_snapshots=10, batch_size=4)
    writer.down = True

    for round_ in range(3):
        buffer.add(series(T0 + 20 * round_, T0 + 20 * (round_ + 1), 5))
        assert await buffer.flush() == 0

    assert (buffer.pending, buffer.dropped, buffer.failing) == (10, 2, True)
    writer.down = False
    assert await buffer.flush() == 10
    assert [s.ts for s in writer.written] == [T0 + 5 * i for i in range(2, 12)]
    assert (buffer.pending, buffer.failing) == (0, False)


async def test_the_buffer_flushes_into_the_store_when_it_returns(store: SnapshotStore) -> None:
    writer = FlakyWriter(store)
    buffer = BufferedWriter(writer, max_snapshots=100)
    writer.down = True
    buffer.add(series(T0, T0 + 60, 5))
    await buffer.flush()

    writer.down = False
    buffer.add(series(T0 + 60, T0 + 120, 5))
    assert await buffer.flush() == 24

    assert len(await store.query("production", T0, T0 + 120)) == 24


async def test_the_buffer_stays_bounded_while_a_write_hangs() -> None:
    release = asyncio.Event()
    received: list[int] = []

    async def hanging(batch: Sequence[Snapshot]) -> None:
        received.append(len(batch))
        await release.wait()
        raise StorageUnavailable("timed out")

    buffer = BufferedWriter(hanging, max_snapshots=10, batch_size=10)
    buffer.add(series(T0, T0 + 50, 5))
    flushing = asyncio.create_task(buffer.flush())
    await asyncio.sleep(0)

    for round_ in range(5):
        buffer.add(series(T0 + 50 + 25 * round_, T0 + 75 + 25 * round_, 5))
        assert buffer.pending <= 10
    release.set()
    assert await flushing == 0

    assert buffer.pending == 10
    assert buffer.dropped == 25
    assert received == [10]


async def test_a_batch_the_database_rejects_is_dropped_not_retried_forever() -> None:
    calls = 0

    async def rejecting_first(batch: Sequence[Snapshot]) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise StorageError("no such column")

    buffer = BufferedWriter(rejecting_first, max_snapshots=10, batch_size=2)
    buffer.add(series(T0, T0 + 20, 5))

    assert await buffer.flush() == 2
    assert (buffer.pending, buffer.rejected, buffer.dropped) == (0, 2, 0)


# The database URL and engine


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (None, DEFAULT_DATABASE_URL),
        ("sqlite:///data/rollups.db", "sqlite+aiosqlite:///data/rollups.db"),
        ("sqlite:////var/lib/zai/rollups.db", "sqlite+aiosqlite:////var/lib/zai/rollups.db"),
        ("postgresql://u:p@db:5432/zai", "postgresql+asyncpg://u:p@db:5432/zai"),
        ("postgres://u@db/zai", "postgresql+asyncpg://u@db/zai"),
        ("postgresql+psycopg2://u@db/zai", "postgresql+asyncpg://u@db/zai"),
        ("postgresql+asyncpg://u@db/zai", "postgresql+asyncpg://u@db/zai"),
    ],
)
def test_database_urls_are_normalised_to_asyncio_drivers(url: str | None, expected: str) -> None:
    assert normalise_url(url).render_as_string(hide_password=False) == expected


@pytest.mark.parametrize(
    "url",
    [
        "not a url",
        "mysql://u:hunter2@db/zai",
        "redis://u:hunter2@cache:6379/0",
        "sqlite://",
        "sqlite:///:memory:",
    ],
)
def test_a_bad_database_url_is_refused_without_its_password(url: str) -> None:
    with pytest.raises(ValueError, match="DATABASE_URL") as raised:
        normalise_url(url)
    assert "hunter2" not in str(raised.value)


def test_a_sqlite_file_in_a_missing_folder_is_refused_clearly(tmp_path: Any) -> None:
    with pytest.raises(StorageError, match="does not exist"):
        create_engine(f"sqlite:///{tmp_path}/missing/rollups.db")


async def test_sqlite_runs_in_wal_mode_with_a_busy_timeout(tmp_path: Any) -> None:
    engine = create_engine(f"sqlite:///{tmp_path}/rollups.db")
    try:
        async with engine.connect() as connection:
            pragmas = [
                (await connection.exec_driver_sql(f"PRAGMA {name}")).scalar()
                for name in ("journal_mode", "busy_timeout", "synchronous")
            ]
    finally:
        await engine.dispose()
    assert pragmas == ["wal", 5000, 1]  # synchronous=NORMAL is 1


async def test_a_rounds_state_goes_with_the_batch_of_its_last_snapshot() -> None:
    calls: list[tuple[list[float], object]] = []
    down = False

    async def writer(batch: Sequence[Snapshot], state: object = None) -> None:
        if down:
            raise StorageUnavailable("database down")
        calls.append(([s.ts for s in batch], state))

    buffer = BufferedWriter(writer, max_snapshots=100, batch_size=4)
    buffer.add(series(T0, T0 + 15, 5), "round 1")  # 3 snapshots
    buffer.add(series(T0 + 15, T0 + 30, 5), "round 2")  # 3 more: rows 4-6
    assert await buffer.flush() == 6
    assert calls == [
        ([T0, T0 + 5, T0 + 10, T0 + 15], "round 1"),
        ([T0 + 20, T0 + 25], "round 2"),
    ]

    # While the database is down, states wait with their rows; rounds without a
    # snapshot replace the state before them, and the newest is written alone at the end.
    calls.clear()
    down = True
    buffer.add(series(T0 + 30, T0 + 35, 5), "round 3")
    buffer.add([], "round 4")
    buffer.add([], "round 5")
    assert await buffer.flush() == 0
    assert (buffer.pending, buffer.states_pending) == (1, 1)
    down = False
    assert await buffer.flush() == 1
    assert calls == [([T0 + 30], "round 5")]
    buffer.add([], "round 6")
    assert await buffer.flush() == 0
    assert calls[-1] == ([], "round 6")
    assert buffer.states_pending == 0


async def test_states_of_dropped_rounds_stay_bounded() -> None:
    calls: list[tuple[int, object]] = []

    async def writer(batch: Sequence[Snapshot], state: object = None) -> None:
        calls.append((len(batch), state))

    buffer = BufferedWriter(writer, max_snapshots=4, batch_size=10)
    for round_ in range(10):
        buffer.add(series(T0 + 10 * round_, T0 + 10 * (round_ + 1), 5), round_)
    assert (buffer.pending, buffer.dropped, buffer.states_pending) == (4, 16, 3)
    assert await buffer.flush() == 4
    assert calls == [(4, 9)]
