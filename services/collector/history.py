"""The rollup store's read side: what readers of the collector's database (the dashboard)
use, so that none of them needs the write side, the tables or the engine set-up.

``SnapshotHistory`` reads snapshots back: a range at the resolution that fits it (see
``queries``), the newest point of a variant, the variants present, and the finest rows
from a time on (the dashboard's rounds). It never writes. Driver and network errors leave
as ``StorageError`` (``StorageUnavailable``: retry later), re-exported here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

from sqlalchemy import and_, or_, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from zai_proxy.collector.database import (
    StorageError,
    StorageUnavailable,
    create_engine,
    storage_error,
)
from zai_proxy.collector.models import SNAPSHOT_COLUMNS, from_row, snapshots
from zai_proxy.collector.queries import ALL_VARIANTS, DEFAULT_MAX_POINTS, QueryPlan, plan_query
from zai_proxy.collector.queries import regroup as _regroup
from zai_proxy.collector.snapshot import Snapshot

__all__ = [
    "ALL_VARIANTS",
    "DEFAULT_MAX_POINTS",
    "QueryPlan",
    "SnapshotHistory",
    "StorageError",
    "StorageUnavailable",
]

HOUR = 3600.0
DAY = 24 * HOUR
# Resolution (seconds) → how long its rows are kept (seconds): the collector's defaults.
DEFAULT_RETENTION: Mapping[int, float] = {5: DAY, 60: 7 * DAY, 3600: 90 * DAY}


class SnapshotHistory:
    """Snapshots read back from the rollup tables, at the resolutions the store keeps."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        retention: Mapping[int, float] = DEFAULT_RETENTION,
        owns_engine: bool = False,
    ) -> None:
        if not retention:
            raise ValueError("retention must name at least one resolution")
        self.engine = engine
        self.resolutions: tuple[int, ...] = tuple(sorted(retention))
        self.retention = dict(retention)
        self._owns_engine = owns_engine

    @classmethod
    def open(cls, url: str | None = None, **options: Any) -> SnapshotHistory:
        """A reader on its own engine for ``url`` (unset: the default SQLite file)."""
        return cls(create_engine(url), owns_engine=True, **options)

    async def close(self) -> None:
        """Release the engine's connections, if this reader created the engine."""
        if self._owns_engine:
            await self.engine.dispose()

    def plan(
        self, start: float, end: float, *, max_points: int = DEFAULT_MAX_POINTS, now: float | None
    ) -> QueryPlan:
        """The resolution and step a range query of ``[start, end)`` reads at."""
        return plan_query(
            start,
            end,
            max_points=max_points,
            resolutions=self.resolutions,
            retention=self.retention,
            now=now,
        )

    async def latest(self, variant: str) -> Snapshot | None:
        """The newest snapshot of ``variant`` at the finest resolution that has one."""
        with self._errors():
            async with self.engine.connect() as connection:
                for resolution in self.resolutions:
                    statement = (
                        select(*SNAPSHOT_COLUMNS)
                        .where(snapshots.c.resolution == resolution, snapshots.c.variant == variant)
                        .order_by(snapshots.c.ts.desc())
                        .limit(1)
                    )
                    row = (await connection.execute(statement)).first()
                    if row is not None:
                        return from_row(row)
        return None

    async def query(
        self,
        variant: str,
        start: float,
        end: float,
        *,
        max_points: int = DEFAULT_MAX_POINTS,
        now: float | None = None,
    ) -> list[Snapshot]:
        """Points of ``variant`` (or every variant: ``"all"``) in ``[start, end)``, by time.

        At most ``max_points`` per variant, at the resolution that fits the range (see
        ``queries``); the tail that the chosen resolution has not rolled up yet comes
        from the finer ones. With ``now``, resolutions expired at ``start`` are skipped.
        """
        plan = self.plan(start, end, max_points=max_points, now=now)
        rows: list[Snapshot] = []
        covered: dict[str, float] = {}  # variant → end of the rows read so far
        levels = [r for r in reversed(self.resolutions) if r <= plan.resolution]
        with self._errors():
            async with self.engine.connect() as connection:
                for resolution in levels:
                    statement = select(*SNAPSHOT_COLUMNS).where(
                        snapshots.c.resolution == resolution,
                        snapshots.c.ts < end,
                        _after(covered, plan.start),
                    )
                    if variant != ALL_VARIANTS:
                        statement = statement.where(snapshots.c.variant == variant)
                    result = await connection.execute(statement.order_by(snapshots.c.ts))
                    for row in result:
                        snapshot = from_row(row)
                        rows.append(snapshot)
                        covered[snapshot.variant] = snapshot.ts + snapshot.seconds
        return _regroup(rows, plan.step)

    async def variants(self) -> list[str]:
        """Every variant the tables hold rows of, sorted."""
        statement = select(snapshots.c.variant).distinct().order_by(snapshots.c.variant)
        return [row[0] for row in await self._fetch(statement)]

    async def newest_finest(self) -> float | None:
        """The start of the newest row at the finest resolution; None when there is none."""
        statement = (
            select(snapshots.c.ts)
            .where(snapshots.c.resolution == self.resolutions[0])
            .order_by(snapshots.c.ts.desc())
            .limit(1)
        )
        rows = await self._fetch(statement)
        return float(rows[0][0]) if rows else None

    async def finest_since(self, start: float) -> list[Snapshot]:
        """The finest resolution's rows that start at ``start`` or later, by time, then
        variant (each is one collector round of one variant, never regrouped)."""
        statement = (
            select(*SNAPSHOT_COLUMNS)
            .where(snapshots.c.resolution == self.resolutions[0], snapshots.c.ts >= start)
            .order_by(snapshots.c.ts, snapshots.c.variant)
        )
        return [from_row(row) for row in await self._fetch(statement)]

    async def _fetch(self, statement: Any) -> list[Any]:
        with self._errors():
            async with self.engine.connect() as connection:
                return list(await connection.execute(statement))

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except (DBAPIError, OSError, TimeoutError) as exc:
            raise storage_error(exc, self.engine.url) from exc


def _after(covered: Mapping[str, float], start: float) -> Any:
    # Each variant continues where its coarser rows left off. A variant with no coarser
    # rows at all is new (rollups cover every variant alike): it starts where the
    # earliest of the others left off. That bound also lets the (resolution, ts) index
    # skip the range the coarser rows covered.
    if not covered:
        return snapshots.c.ts >= start
    earliest = min(covered.values())
    clauses = [
        and_(snapshots.c.variant == variant, snapshots.c.ts >= until)
        for variant, until in covered.items()
    ]
    clauses.append(snapshots.c.variant.not_in(list(covered)))
    return and_(snapshots.c.ts >= earliest, or_(*clauses))
