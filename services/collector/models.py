"""The rollup tables: every snapshot at every resolution, the downsampling watermarks,
and the collector's per-target baselines (``target_baselines``, see ``baselines``).

One ``snapshots`` table holds the three resolutions, told apart by ``resolution`` (5, 60
or 3600 seconds), rather than a table per resolution: the columns are the same, so one
model, one migration, one upsert and one query path serve all three, and a new
resolution is a setting rather than a migration. The primary key (resolution, variant,
ts) is the upsert key and serves one variant's range query; the (resolution, ts) index
serves the all-variant range query, downsampling and expiry.

Every Snapshot field that is charted or filtered has a typed column; histogram buckets,
quota maps, per-model and per-client figures are JSON (read whole, never filtered). The migrations
under ``migrations/versions/`` create the same schema; a test compares the two.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import fields
from typing import Any, cast

from sqlalchemy import JSON, Double, Index, Integer, MetaData, String, Table, Text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from zai_proxy.collector.baselines import Baseline, decode_series, encode_series
from zai_proxy.collector.snapshot import Buckets, ClientFigures, ModelFigures, Snapshot

# Constraint names that are the same on every database, so migrations can name them.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
VARIANT_LENGTH = 64
TARGET_LENGTH = 512  # a scrape target's URL

# JSONB on PostgreSQL (indexable, compact), JSON text elsewhere.
Json = JSON().with_variant(JSONB(), "postgresql")


class Base(DeclarativeBase):
    """Declarative base of the rollup tables."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {float: Double(), dict[str, Any]: Json}


class SnapshotRow(Base):
    """One variant's snapshot at one resolution (see ``snapshot.Snapshot`` for each field)."""

    __tablename__ = "snapshots"
    __table_args__ = (Index("ix_snapshots_resolution_ts", "resolution", "ts"),)

    resolution: Mapped[int] = mapped_column(Integer, primary_key=True)
    variant: Mapped[str] = mapped_column(String(VARIANT_LENGTH), primary_key=True)
    ts: Mapped[float] = mapped_column(primary_key=True)
    seconds: Mapped[float]
    replicas: Mapped[int] = mapped_column(Integer)

    requests_total: Mapped[float]
    requests_2xx_total: Mapped[float]
    requests_4xx_total: Mapped[float]
    requests_429_total: Mapped[float]
    requests_5xx_total: Mapped[float]
    client_closed_total: Mapped[float]
    tokens_in_total: Mapped[float]
    tokens_out_total: Mapped[float]
    tokens_cache_read_total: Mapped[float]
    tokens_cache_write_total: Mapped[float]
    tokens_reasoning_total: Mapped[float]
    tokens_estimated_total: Mapped[float]
    cost_usd: Mapped[float]
    upstream_errors_total: Mapped[float]
    upstream_429_frequency_total: Mapped[float]
    upstream_429_concurrency_total: Mapped[float]
    upstream_429_quota_total: Mapped[float]
    upstream_429_congestion_total: Mapped[float]
    retries_total: Mapped[float]
    proxy_rate_limited_total: Mapped[float]
    refusals_total: Mapped[float] = mapped_column(server_default="0")
    limiter_increases_total: Mapped[float]
    limiter_decreases_total: Mapped[float]
    limiter_probes_total: Mapped[float]

    requests_per_s: Mapped[float]
    error_ratio: Mapped[float]
    tokens_in_per_s: Mapped[float]
    tokens_out_per_s: Mapped[float]
    upstream_429_ratio: Mapped[float]

    latency_p50: Mapped[float | None]
    latency_p95: Mapped[float | None]
    latency_p99: Mapped[float | None]
    ttfb_p50: Mapped[float | None]
    ttfb_p95: Mapped[float | None]
    ttfb_p99: Mapped[float | None]
    refusal_wait_p50: Mapped[float | None]
    refusal_wait_p95: Mapped[float | None]
    refusal_wait_p99: Mapped[float | None]
    latency_buckets: Mapped[dict[str, Any]]
    ttfb_buckets: Mapped[dict[str, Any]]
    refusal_wait_buckets: Mapped[dict[str, Any]] = mapped_column(server_default="{}")

    in_flight: Mapped[float]
    in_flight_max: Mapped[float]
    queued: Mapped[float]
    workers: Mapped[float]
    worker_utilization: Mapped[float]
    degraded_replicas: Mapped[float]
    limiter_rate: Mapped[float | None]
    limiter_ceiling: Mapped[float | None]
    limiter_hold: Mapped[float | None]
    limiter_concurrency: Mapped[float | None]
    quota_used: Mapped[dict[str, Any]]
    quota_reset_at: Mapped[dict[str, Any]]

    models: Mapped[dict[str, Any]]
    clients: Mapped[dict[str, Any]] = mapped_column(server_default="{}")


class RollupWatermark(Base):
    """How far a coarser resolution has been rolled up: every bucket before ``done_until``."""

    __tablename__ = "rollup_watermarks"

    resolution: Mapped[int] = mapped_column(Integer, primary_key=True)
    # NULL: nothing rolled up yet; the next run starts at the oldest finer row.
    done_until: Mapped[float | None]


class TargetBaseline(Base):
    """One target's last-scrape baseline, written with the round (see ``baselines``).

    One row per target, replaced by each written round that scraped it; rows of targets
    not scraped for the finest resolution's retention are deleted by ``expire``.
    """

    __tablename__ = "target_baselines"

    target: Mapped[str] = mapped_column(String(TARGET_LENGTH), primary_key=True)
    scraped_at: Mapped[float]
    process_start_time: Mapped[float | None]
    covered_until: Mapped[float]
    series: Mapped[str] = mapped_column(Text)


snapshots = cast(Table, SnapshotRow.__table__)
watermarks = cast(Table, RollupWatermark.__table__)
baselines = cast(Table, TargetBaseline.__table__)

# Snapshot's fields in the order ``from_row`` expects them (select ``SNAPSHOT_COLUMNS``).
SNAPSHOT_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Snapshot))
SNAPSHOT_COLUMNS = tuple(snapshots.c[name] for name in SNAPSHOT_FIELDS)
_BUCKET_FIELDS = ("latency_buckets", "ttfb_buckets", "refusal_wait_buckets")
# A set: rows written before a ModelFigures field was removed still decode.
_MODEL_FIELDS = frozenset(f.name for f in fields(ModelFigures))
_CLIENT_FIELDS = frozenset(f.name for f in fields(ClientFigures)) - {"wait_buckets"}
INF_KEY = "+Inf"  # the bucket bound as Prometheus spells it


def to_row(snapshot: Snapshot, resolution: int) -> dict[str, Any]:
    """The ``snapshots`` row of a snapshot stored at ``resolution``."""
    row = {name: getattr(snapshot, name) for name in SNAPSHOT_FIELDS}
    row["resolution"] = resolution
    for name in _BUCKET_FIELDS:
        row[name] = {_bound_key(bound): count for bound, count in row[name].items()}
    row["models"] = {
        model: {name: getattr(figures, name) for name in _MODEL_FIELDS}
        for model, figures in snapshot.models.items()
    }
    row["clients"] = {
        client: {
            **{name: getattr(figures, name) for name in _CLIENT_FIELDS},
            "wait_buckets": {_bound_key(b): n for b, n in figures.wait_buckets.items()},
        }
        for client, figures in snapshot.clients.items()
    }
    return row


def from_row(values: Sequence[Any]) -> Snapshot:
    """The snapshot of a row selected as ``SNAPSHOT_COLUMNS``."""
    row = dict(zip(SNAPSHOT_FIELDS, values, strict=True))
    for name in _BUCKET_FIELDS:
        row[name] = _buckets(row[name])
    row["models"] = {
        model: ModelFigures(**{k: v for k, v in figures.items() if k in _MODEL_FIELDS})
        for model, figures in row["models"].items()
    }
    row["clients"] = {
        client: ClientFigures(
            **{k: v for k, v in figures.items() if k in _CLIENT_FIELDS},
            wait_buckets=_buckets(figures.get("wait_buckets", {})),
        )
        for client, figures in row["clients"].items()
    }
    return Snapshot(**row)


def baseline_row(baseline: Baseline) -> dict[str, Any]:
    """The ``target_baselines`` row of a baseline."""
    return {
        "target": baseline.target,
        "scraped_at": baseline.time,
        "process_start_time": baseline.start_time,
        "covered_until": baseline.covered_until,
        "series": encode_series(baseline),
    }


def from_baseline_row(row: Mapping[Any, Any]) -> Baseline:
    """The baseline of a ``target_baselines`` row; ValueError when its series do not decode."""
    counters, histograms = decode_series(row["series"])
    return Baseline(
        target=row["target"],
        time=row["scraped_at"],
        start_time=row["process_start_time"],
        covered_until=row["covered_until"],
        counters=counters,
        histograms=histograms,
    )


def _bound_key(bound: float) -> str:
    # JSON keys are strings; repr round-trips a float exactly.
    return INF_KEY if math.isinf(bound) else repr(float(bound))


def _buckets(stored: dict[str, float]) -> Buckets:
    # JSONB does not keep key order; bounds come back ascending.
    return dict(sorted((float(bound), count) for bound, count in stored.items()))
