"""Which stored resolution answers a range query, and how its rows become chart points.

A chart wants at most ``max_points`` points per series. The finest stored resolution is
read whose row count stays within ``READ_FACTOR`` rows per point; its rows are then
regrouped into buckets of ``step`` seconds (a multiple of the resolution) with the same
per-kind rules as downsampling (``rollup.downsample``). With 300 points:

    range  stored  step   points      range  stored  step   points
    5 m    5 s     5 s    60          6 h    1 min   2 min  180
    15 m   5 s     5 s    180         24 h   1 min   5 min  288
    1 h    5 s     15 s   240         7 d    1 h     1 h    168

(one point more when the range does not start on a step boundary). The store reads;
these are pure functions.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from zai_proxy.collector.rollup import bucket_start, downsample
from zai_proxy.collector.snapshot import Snapshot

RESOLUTIONS: tuple[int, ...] = (5, 60, 3600)
DEFAULT_MAX_POINTS = 300
# A resolution is read when it costs at most this many rows per returned point. Decoding
# and regrouping cost about 0.1 ms per row here, so 24 h of 1 min rows (1,440 per series,
# regrouped into 5 min points) answer in about 0.1 s (bench/storage_bench.py).
READ_FACTOR = 5
ALL_VARIANTS = "all"


@dataclass(frozen=True, slots=True)
class QueryPlan:
    """Where a range query reads and how it buckets: rows of ``resolution`` into ``step``."""

    resolution: int  # the stored resolution read first (finer ones fill its tail)
    step: int  # seconds per returned point, a multiple of ``resolution``
    start: float  # the first bucket's start (``start`` of the query, aligned to ``step``)
    end: float


def plan_query(
    start: float,
    end: float,
    *,
    max_points: int = DEFAULT_MAX_POINTS,
    resolutions: Sequence[int] = RESOLUTIONS,
    retention: Mapping[int, float] | None = None,
    now: float | None = None,
) -> QueryPlan:
    """The resolution and step that answer ``[start, end)`` in at most ``max_points`` points.

    With ``now`` and ``retention``, resolutions already expired at ``start`` are passed over.
    """
    if end <= start:
        raise ValueError(f"empty range: end {end} is not after start {start}")
    if max_points < 2:
        raise ValueError(f"max_points must be at least 2, not {max_points}")
    span = end - start
    kept = [
        r
        for r in sorted(resolutions)
        if now is None or retention is None or now - retention[r] <= start
    ] or [max(resolutions)]
    resolution = next((r for r in kept if span / r <= max_points * READ_FACTOR), kept[-1])
    # Buckets touched by the range: at most span/step + 1, whatever its alignment.
    step = resolution * max(1, math.ceil(span / ((max_points - 1) * resolution)))
    return QueryPlan(resolution, step, bucket_start(start, step), end)


def regroup(snapshots: Iterable[Snapshot], step: int) -> list[Snapshot]:
    """Snapshots merged into ``step``-second buckets per variant, ordered by (ts, variant)."""
    groups: dict[tuple[float, str], list[Snapshot]] = {}
    for snapshot in snapshots:
        key = (bucket_start(snapshot.ts, step), snapshot.variant)
        groups.setdefault(key, []).append(snapshot)
    points = []
    for (ts, _variant), group in sorted(groups.items()):
        only = group[0]
        if len(group) == 1 and only.ts == ts and only.seconds == step:
            points.append(only)  # already one whole bucket
        else:
            points.append(downsample(group, ts, step))
    return points
