"""What the dashboard reads from the collector's database: ranges, latest points, rounds.

Everything is read through the collector's read side, ``collector.history``: range
queries (which pick the resolution), and rounds, the SSE stream's unit, from the finest
resolution's rows as they are (range queries regroup rows into buckets, and a round must
stay exactly one collector round, whatever ``SCRAPE_INTERVAL`` is).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from zai_proxy.collector.history import ALL_VARIANTS, DEFAULT_MAX_POINTS, SnapshotHistory
from zai_proxy.collector.rollup import (
    OTHER_CLIENT,
    derive_client,
    downsample,
    fold_clients,
    merge_clients,
)
from zai_proxy.collector.snapshot import ClientFigures, Snapshot
from zai_proxy.dashboard_api.points import Round, clients_of, point, rounds_of

RangeName = Literal["5m", "15m", "1h", "6h", "24h", "7d"]
# Range name → seconds, in the order the UI offers them.
RANGES: dict[RangeName, int] = {
    "5m": 300,
    "15m": 900,
    "1h": 3600,
    "6h": 6 * 3600,
    "24h": 24 * 3600,
    "7d": 7 * 24 * 3600,
}
# A variant as the proxy accepts it (DEPLOYMENT_VARIANT), up to the column's length.
VARIANT_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"
# Times closer than this are one round's (event ids are whole milliseconds).
SAME_ROUND = 0.0005
VARIANTS_CACHE_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class Series:
    """A range of points per variant."""

    start: float
    end: float
    step: int
    series: dict[str, list[dict[str, Any]]]
    summary: dict[str, dict[str, Any] | None]
    clients: dict[str, dict[str, Any]]  # each client's range, over the variants


def clients_over(points: Mapping[str, list[Snapshot]]) -> dict[str, ClientFigures]:
    """Each client's figures over a range from every variant's points: totals summed, wait
    percentiles from the merged buckets, the variants' admitted rates added, each over the
    seconds its own points cover (a bucket with missed rounds covers less than its
    length; its rates say how much, as the web UI reads them)."""
    merged = fold_clients(merge_clients(p.clients for found in points.values() for p in found))
    rates: dict[str, float] = {}
    for found in points.values():
        covered = sum(covered_seconds(p) for p in found)
        admitted: dict[str, float] = {}
        for p in found:
            for client, figures in p.clients.items():
                name = client if client in merged else OTHER_CLIENT
                admitted[name] = admitted.get(name, 0.0) + figures.admitted
        for name, count in admitted.items():
            rates[name] = rates.get(name, 0.0) + (count / covered if covered > 0 else 0.0)
    for client, figures in merged.items():
        derive_client(figures, 1.0)
        figures.admitted_per_s = rates.get(client, 0.0)
    return merged


def covered_seconds(snapshot: Snapshot) -> float:
    """The seconds a point's totals were counted over, recovered from a rate and its total."""
    if snapshot.requests_per_s > 0 and snapshot.requests_total > 0:
        return snapshot.requests_total / snapshot.requests_per_s
    if snapshot.tokens_in_per_s > 0 and snapshot.tokens_in_total > 0:
        return snapshot.tokens_in_total / snapshot.tokens_in_per_s
    return snapshot.seconds


class HistoryReader:
    """Reads the rollup store for the dashboard; every time comes in as an argument."""

    def __init__(
        self, history: SnapshotHistory, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.history = history
        self._clock = clock
        self._variants: list[str] = []
        self._variants_at: float | None = None

    async def variants(self) -> list[str]:
        """Every variant the store holds rows of, sorted (cached for a few seconds)."""
        now = self._clock()
        if self._variants_at is None or now - self._variants_at > VARIANTS_CACHE_SECONDS:
            self._variants = await self.history.variants()
            self._variants_at = now
        return list(self._variants)

    def saw(self, variants: Iterable[str]) -> None:
        """Variants seen in new rounds: known from now on, without waiting for the cache."""
        new = set(variants).difference(self._variants)
        if new:
            self._variants = sorted(new.union(self._variants))

    async def series(self, span: int, variant: str, now: float) -> Series:
        """Points of ``variant`` (or ``all``) over the last ``span`` seconds before ``now``."""
        start, end = now - span, now
        plan = self.history.plan(start, end, max_points=DEFAULT_MAX_POINTS, now=now)
        rows = await self.history.query(variant, start, end, max_points=DEFAULT_MAX_POINTS, now=now)
        names = await self.variants() if variant == ALL_VARIANTS else [variant]
        series: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
        by_variant: dict[str, list[Snapshot]] = {name: [] for name in names}
        for snapshot in rows:
            series.setdefault(snapshot.variant, []).append(point(snapshot))
            by_variant.setdefault(snapshot.variant, []).append(snapshot)
        whole = {name: downsample(part, start, span) for name, part in by_variant.items() if part}
        summary = {name: point(whole[name]) if name in whole else None for name in by_variant}
        clients = clients_of(clients_over(by_variant))
        return Series(start, end, plan.step, series, summary, clients)

    async def latest(self) -> dict[str, dict[str, Any] | None]:
        """The newest point of every variant."""
        latest: dict[str, dict[str, Any] | None] = {}
        for variant in await self.variants():
            snapshot = await self.history.latest(variant)
            latest[variant] = None if snapshot is None else point(snapshot)
        return latest

    async def newest_round(self) -> float | None:
        """The start of the newest round at the finest resolution; None when there is none."""
        return await self.history.newest_finest()

    async def rounds_from(self, start: float) -> list[Round]:
        """The rounds that start at ``start`` or later, oldest first."""
        return rounds_of(await self.history.finest_since(start - SAME_ROUND))
