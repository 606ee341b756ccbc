"""The rollup store: snapshots written, downsampled, expired and read back from SQL.

Three resolutions (5 s, 1 min, 1 h by default) live in one table (see ``models``):

- ``write``: one transaction per call; an upsert on (resolution, variant, ts), so a retry
  after a failure overwrites instead of duplicating. Rows older than a coarser
  resolution's watermark move that watermark back, so late rows (a buffer flushed after
  an outage) are rolled up again.
- ``downsample(now)``: 5 s → 1 min → 1 h, only buckets that are complete (``settle``
  seconds after their end, and, for 1 h, already rolled up at 1 min) and not rolled up
  yet. A watermark per resolution (``rollup_watermarks``) moves forward with each chunk
  in the chunk's transaction, so restarts continue where they stopped. A chunk holds a
  lock that writes wait for (see ``_lock``), so no row lands unseen behind a watermark.
- ``expire(now)``: deletes rows past each resolution's retention, ``expire_batch`` rows
  per statement, each in its own short transaction, and the baselines of targets not
  scraped within the finest resolution's retention.
- ``write(batch, baselines)`` also replaces the targets' baselines (``target_baselines``)
  in the transaction of the rows; ``load_baselines`` reads them back at start-up.
- ``query``/``latest``: the read side, ``history.SnapshotHistory`` (what the dashboard
  reads through); see ``queries`` for the choice of resolution.

Every time comes in as an argument: the store has no clock. Driver and network errors
leave as ``StorageUnavailable`` (retry later) or ``StorageError``.

``BufferedWriter`` sits in front of ``write`` in the collector: a bounded queue that
keeps the newest snapshots while the database is away.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from itertools import pairwise
from typing import Any

from sqlalchemy import Table, and_, delete, func, select, text, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from zai_proxy.collector.baselines import Baseline
from zai_proxy.collector.database import (
    StorageError,
    StorageUnavailable,
    create_engine,
    storage_error,
)
from zai_proxy.collector.history import DEFAULT_RETENTION, SnapshotHistory
from zai_proxy.collector.models import (
    SNAPSHOT_COLUMNS,
    baseline_row,
    baselines,
    from_baseline_row,
    from_row,
    snapshots,
    to_row,
    watermarks,
)
from zai_proxy.collector.queries import DEFAULT_MAX_POINTS, regroup
from zai_proxy.collector.rollup import bucket_start
from zai_proxy.collector.snapshot import Snapshot

log = logging.getLogger(__name__)

# A bucket is rolled up this long after it ends: the last scrape of it is written by then.
# Later rows still arrive safely (they move the watermark back), at the cost of redoing.
DEFAULT_SETTLE = 10.0
DEFAULT_EXPIRE_BATCH = 5000
DEFAULT_WRITE_BATCH = 1000
# Finer rows read per downsampling chunk and variant: one transaction each, which holds
# the write lock while it reads and computes (tens of milliseconds).
CHUNK_SOURCE_ROWS = 720
DEFAULT_BUFFER_SNAPSHOTS = 1000  # about 40 minutes of two variants at 5 s
# Any fixed 64-bit number, the same in every process that writes this database.
ROLLUP_LOCK_KEY = 0x7A61_6970_726F_6C6C  # "zaiproll"


class SnapshotStore:
    """Snapshots in SQL at several resolutions: written, downsampled, expired, queried."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        retention: Mapping[int, float] = DEFAULT_RETENTION,
        settle: float = DEFAULT_SETTLE,
        expire_batch: int = DEFAULT_EXPIRE_BATCH,
        owns_engine: bool = False,
    ) -> None:
        resolutions = sorted(retention)
        if not resolutions:
            raise ValueError("retention must name at least one resolution")
        for finer, coarser in pairwise(resolutions):
            if coarser % finer:
                raise ValueError(f"resolution {coarser} s is not a multiple of {finer} s")
        if expire_batch < 1:
            raise ValueError(f"expire_batch must be positive, not {expire_batch}")
        self.engine = engine
        self.resolutions: tuple[int, ...] = tuple(resolutions)
        self.retention = dict(retention)
        self.settle = settle
        self.expire_batch = expire_batch
        self._owns_engine = owns_engine
        self._upsert = _upsert_statement(snapshots, engine.dialect.name)
        self._set_watermark = _upsert_statement(watermarks, engine.dialect.name)
        self._set_baseline = _upsert_statement(baselines, engine.dialect.name)
        self.history = SnapshotHistory(engine, retention=retention)

    @classmethod
    def open(cls, url: str | None = None, **options: Any) -> SnapshotStore:
        """A store on its own engine for ``url`` (unset: the default SQLite file)."""
        return cls(create_engine(url), owns_engine=True, **options)

    async def close(self) -> None:
        """Release the engine's connections, if this store created the engine."""
        if self._owns_engine:
            await self.engine.dispose()

    def resolution_of(self, seconds: float) -> int:
        """The stored resolution of a snapshot ``seconds`` long (the finest for shorter)."""
        return max((r for r in self.resolutions if r <= seconds), default=self.resolutions[0])

    async def write(
        self,
        batch: Iterable[Snapshot],
        baselines: Sequence[Baseline] = (),
        *,
        resolution: int | None = None,
    ) -> int:
        """Upsert snapshots, and replace the targets' ``baselines``, in one transaction.

        Each snapshot is stored at the resolution of its length, or at ``resolution``
        (the collector's rounds: a round that covers a downtime is longer than the others,
        but it is still one of the finest rows). The number of snapshots written.
        """
        rows = [
            to_row(s, resolution if resolution is not None else self.resolution_of(s.seconds))
            for s in batch
        ]
        if rows or baselines:
            with self._errors():
                async with self.engine.begin() as connection:
                    if rows:
                        await self._lock(connection, exclusive=False)
                        await self._write_rows(connection, rows)
                    if baselines:
                        await connection.execute(
                            self._set_baseline, [baseline_row(b) for b in baselines]
                        )
        return len(rows)

    def baselines_stale_before(self, now: float) -> float:
        """Baselines scraped before this are stale: older than the finest rows are kept."""
        return now - self.retention[self.resolutions[0]]

    async def load_baselines(self, since: float | None = None) -> list[Baseline]:
        """The stored baselines (scraped at ``since`` or later), by target.

        A row that does not decode is skipped with a warning: that target only primes.
        """
        statement = select(baselines).order_by(baselines.c.target)
        if since is not None:
            statement = statement.where(baselines.c.scraped_at >= since)
        with self._errors():
            async with self.engine.connect() as connection:
                rows = (await connection.execute(statement)).mappings().all()
        loaded = []
        for row in rows:
            try:
                loaded.append(from_baseline_row(row))
            except ValueError as exc:
                log.warning("ignoring the stored baseline of %s: %s", row["target"], exc)
        return loaded

    async def latest(self, variant: str) -> Snapshot | None:
        """The newest snapshot of ``variant`` (see SnapshotHistory.latest)."""
        return await self.history.latest(variant)

    async def query(
        self,
        variant: str,
        start: float,
        end: float,
        *,
        max_points: int = DEFAULT_MAX_POINTS,
        now: float | None = None,
    ) -> list[Snapshot]:
        """Points of ``variant`` in ``[start, end)`` (see SnapshotHistory.query)."""
        return await self.history.query(variant, start, end, max_points=max_points, now=now)

    async def downsample(self, now: float) -> int:
        """Roll complete, new buckets up each resolution; the number of rows written."""
        written = 0
        ready: float | None = now - self.settle
        for finer, coarser in pairwise(self.resolutions):
            if ready is None:
                break
            written += await self._roll_up(finer, coarser, ready)
            # A coarser bucket is complete once this resolution has rolled up all of it.
            with self._errors():
                async with self.engine.connect() as connection:
                    done = await _done_until(connection, coarser)
            ready = None if done is None else min(ready, done)
        return written

    async def expire(self, now: float) -> int:
        """Delete rows older than their resolution's retention; the number deleted.

        Baselines of targets not scraped within the finest resolution's retention go too
        (not counted: they are one row per target).
        """
        deleted = 0
        stale = self.baselines_stale_before(now)
        with self._errors():
            async with self.engine.begin() as connection:
                await connection.execute(delete(baselines).where(baselines.c.scraped_at < stale))
        for resolution in self.resolutions:
            cutoff = now - self.retention[resolution]
            oldest = (
                select(snapshots.c.resolution, snapshots.c.variant, snapshots.c.ts)
                .where(snapshots.c.resolution == resolution, snapshots.c.ts < cutoff)
                .order_by(snapshots.c.ts)
                .limit(self.expire_batch)
            )
            key = tuple_(snapshots.c.resolution, snapshots.c.variant, snapshots.c.ts)
            statement = delete(snapshots).where(key.in_(oldest))
            while True:
                with self._errors():
                    async with self.engine.begin() as connection:
                        count = (await connection.execute(statement)).rowcount
                deleted += count
                if count < self.expire_batch:
                    break
                await asyncio.sleep(0)  # let writers in between batches
        return deleted

    async def _write_rows(self, connection: AsyncConnection, rows: list[dict[str, Any]]) -> None:
        for start in range(0, len(rows), DEFAULT_WRITE_BATCH):
            await connection.execute(self._upsert, rows[start : start + DEFAULT_WRITE_BATCH])
        # Rows behind a coarser resolution's watermark: roll their buckets up again.
        for coarser in self.resolutions[1:]:
            finer = [row["ts"] for row in rows if row["resolution"] < coarser]
            if finer:
                oldest = bucket_start(min(finer), coarser)
                await connection.execute(
                    update(watermarks)
                    .where(watermarks.c.resolution == coarser, watermarks.c.done_until > oldest)
                    .values(done_until=oldest)
                )

    async def _roll_up(self, finer: int, coarser: int, ready: float) -> int:
        horizon = bucket_start(ready, coarser)
        written = 0
        while True:
            with self._errors():
                async with self.engine.connect() as connection, connection.begin():
                    await self._lock(connection, exclusive=True)
                    done = await _done_until(connection, coarser)
                    rows, stop = await self._read_chunk(connection, finer, coarser, done, horizon)
                    if done is not None and stop <= done:
                        return written
                    rolled = regroup(rows, coarser)
                    await self._write_rows(connection, [to_row(s, coarser) for s in rolled])
                    await connection.execute(
                        self._set_watermark, {"resolution": coarser, "done_until": stop}
                    )
            written += len(rolled)
            if stop >= horizon:
                return written
            await asyncio.sleep(0)  # let writers in between chunks

    async def _read_chunk(
        self,
        connection: AsyncConnection,
        finer: int,
        coarser: int,
        done: float | None,
        horizon: float,
    ) -> tuple[list[Snapshot], float]:
        # The finer rows of the next buckets that hold any, a bounded number of them; with
        # none left before the horizon, the watermark may jump to it.
        pending = and_(snapshots.c.resolution == finer, snapshots.c.ts < horizon)
        if done is not None:
            pending = and_(pending, snapshots.c.ts >= done)
        first = (await connection.execute(select(func.min(snapshots.c.ts)).where(pending))).scalar()
        if first is None:
            return [], horizon
        start = bucket_start(first, coarser)
        stop = min(start + coarser * max(1, CHUNK_SOURCE_ROWS * finer // coarser), horizon)
        statement = (
            select(*SNAPSHOT_COLUMNS)
            .where(pending, snapshots.c.ts >= start, snapshots.c.ts < stop)
            .order_by(snapshots.c.variant, snapshots.c.ts)
        )
        return [from_row(row) for row in await connection.execute(statement)], stop

    async def _lock(self, connection: AsyncConnection, *, exclusive: bool) -> None:
        # A rollup reads finer rows and moves its watermark in one transaction, holding
        # this lock exclusively; writes hold it shared. So a write waits for the rollup
        # in progress, and its rows are either read by it or, being older than the new
        # watermark, move the watermark back: no row is ever left out of a rollup.
        if self.engine.dialect.name == "postgresql":
            function = "pg_advisory_xact_lock" if exclusive else "pg_advisory_xact_lock_shared"
            await connection.execute(text(f"SELECT {function}(:key)"), {"key": ROLLUP_LOCK_KEY})
        elif exclusive:
            # SQLite has one writer at a time; the driver would take the write lock only at
            # the first INSERT, after the reads: take it before them.
            await connection.exec_driver_sql("BEGIN IMMEDIATE")

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except (DBAPIError, OSError, TimeoutError) as exc:
            raise storage_error(exc, self.engine.url) from exc


async def _done_until(connection: AsyncConnection, resolution: int) -> float | None:
    statement = select(watermarks.c.done_until).where(watermarks.c.resolution == resolution)
    return (await connection.execute(statement)).scalar()


def _upsert_statement(table: Table, dialect: str) -> Any:
    statement = _dialect_insert(table, dialect)
    keys = [column.name for column in table.primary_key]
    return statement.on_conflict_do_update(
        index_elements=keys,
        set_={c.name: statement.excluded[c.name] for c in table.columns if c.name not in keys},
    )


def _dialect_insert(table: Table, dialect: str) -> Any:
    if dialect == "postgresql":
        return postgresql.insert(table)
    if dialect == "sqlite":
        return sqlite.insert(table)
    raise ValueError(f"unsupported database dialect {dialect!r}")


class BufferedWriter:
    """Snapshots queued for a writer, kept (the newest ``max_snapshots``) while it fails.

    ``add`` never waits; ``flush`` writes the queue oldest first, in batches, and stops at
    the first ``StorageUnavailable``, keeping what is left for the next flush. A batch the
    database rejects (``StorageError``: bad data, a missing table) is dropped and counted
    in ``rejected``, so it cannot block the queue forever. When the queue is full the
    oldest snapshots are dropped and counted in ``dropped``.

    ``add`` may also take the round's ``state`` (the collector's target baselines): it is
    handed to the writer, as ``write(batch, state)``, with the batch that holds the last
    snapshot of that round (or alone, ``write([], state)``, once every snapshot before it
    is written), so it is stored in the transaction of the round's rows and never ahead
    of them. Only the newest state due with a batch is handed over: each replaces the
    ones before it.
    """

    def __init__(
        self,
        write: Callable[..., Awaitable[object]],
        *,
        max_snapshots: int = DEFAULT_BUFFER_SNAPSHOTS,
        batch_size: int = 500,
    ) -> None:
        if max_snapshots < 1 or batch_size < 1:
            raise ValueError("max_snapshots and batch_size must be positive")
        self.max_snapshots = max_snapshots
        self.batch_size = batch_size
        self.dropped = 0
        self.rejected = 0
        self.failing = False  # the last flush met an unavailable database
        self._write = write
        # Each snapshot with its position (snapshots ever added before it); each state
        # with the position its round ends at: due once no snapshot before that is pending.
        self._queue: deque[tuple[int, Snapshot]] = deque()
        self._writing: list[tuple[int, Snapshot]] = []
        self._added = 0
        self._states: deque[tuple[int, object]] = deque()
        self._lock = asyncio.Lock()

    @property
    def pending(self) -> int:
        """Snapshots not written yet (the batch being written included)."""
        return len(self._queue) + len(self._writing)

    @property
    def states_pending(self) -> int:
        """Round states not handed to the writer yet."""
        return len(self._states)

    def add(self, batch: Iterable[Snapshot], state: object = None) -> None:
        """Queue snapshots (and their round's ``state``) for the next flush, dropping the
        oldest snapshots beyond the bound."""
        for snapshot in batch:
            self._queue.append((self._added, snapshot))
            self._added += 1
        if state is not None:
            if self._states and self._states[-1][0] == self._added:
                self._states.pop()  # a round with no snapshot: the newer state replaces it
            self._states.append((self._added, state))
        self._trim()

    async def flush(self) -> int:
        """Write what is queued, oldest first; the number written."""
        written = 0
        async with self._lock:
            while self._queue or self._due() is not None:
                count = min(self.batch_size, len(self._queue))
                self._writing = [self._queue.popleft() for _ in range(count)]
                batch = [snapshot for _, snapshot in self._writing]
                state = self._due()
                try:
                    if state is None:
                        await self._write(batch)
                    else:
                        await self._write(batch, state)
                except StorageUnavailable as exc:
                    self._requeue()
                    if not self.failing:
                        log.warning("rollup database unavailable, buffering snapshots: %s", exc)
                    self.failing = True
                    break
                except StorageError as exc:
                    self.rejected += count
                    self._handed(state)
                    log.error("rollup database rejected %d snapshots: %s", count, exc)
                except BaseException:
                    self._requeue()
                    raise
                else:
                    written += count
                    self._handed(state)
                finally:
                    self._writing = []
            else:
                if self.failing:
                    log.info("rollup database back; %d buffered snapshots written", written)
                self.failing = False
        return written

    def _due(self) -> object:
        # The newest state none of whose round's snapshots is still queued (the batch
        # being written aside: it goes with that batch).
        limit = self._queue[0][0] if self._queue else self._added
        due = None
        for end, state in self._states:
            if end > limit:
                break
            due = state
        return due

    def _handed(self, state: object) -> None:
        # Written (or rejected) with a batch: it and the older states are done.
        if state is None:
            return
        while self._states:
            _, first = self._states.popleft()
            if first is state:
                return

    def _requeue(self) -> None:
        self._queue.extendleft(reversed(self._writing))
        self._writing = []
        self._trim()

    def _trim(self) -> None:
        # The batch being written counts too: memory is bounded while a write hangs.
        while self._queue and self.pending > self.max_snapshots:
            self._queue.popleft()
            self.dropped += 1
        # States due at once (their snapshots written or dropped): only the newest matters.
        heads = [queued[0][0] for queued in (self._writing, self._queue) if queued]
        limit = min(heads, default=self._added)
        while len(self._states) > 1 and self._states[1][0] <= limit:
            self._states.popleft()
