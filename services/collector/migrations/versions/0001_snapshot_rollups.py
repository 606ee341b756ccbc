"""Snapshot rollups: the snapshots table (three resolutions) and the rollup watermarks.

Revision ID: 0001_snapshot_rollups
Revises:
Created: 2026-11-27
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001_snapshot_rollups"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")

TOTALS = (
    "requests_total",
    "requests_2xx_total",
    "requests_4xx_total",
    "requests_429_total",
    "requests_5xx_total",
    "client_closed_total",
    "tokens_in_total",
    "tokens_out_total",
    "tokens_cache_read_total",
    "tokens_cache_write_total",
    "tokens_reasoning_total",
    "tokens_estimated_total",
    "cost_usd",
    "upstream_errors_total",
    "upstream_429_frequency_total",
    "upstream_429_concurrency_total",
    "upstream_429_quota_total",
    "upstream_429_congestion_total",
    "retries_total",
    "proxy_rate_limited_total",
    "limiter_increases_total",
    "limiter_decreases_total",
    "limiter_probes_total",
)
RATES = (
    "requests_per_s",
    "error_ratio",
    "tokens_in_per_s",
    "tokens_out_per_s",
    "upstream_429_ratio",
)
PERCENTILES = ("latency_p50", "latency_p95", "latency_p99", "ttfb_p50", "ttfb_p95", "ttfb_p99")
GAUGES = (
    "in_flight",
    "in_flight_max",
    "queued",
    "workers",
    "worker_utilization",
    "degraded_replicas",
)
OPTIONAL_GAUGES = ("limiter_rate", "limiter_ceiling", "limiter_hold", "limiter_concurrency")


def _doubles(names: Sequence[str], *, nullable: bool) -> list[sa.Column]:
    return [sa.Column(name, sa.Double(), nullable=nullable) for name in names]


def upgrade() -> None:
    op.create_table(
        "snapshots",
        sa.Column("resolution", sa.Integer(), nullable=False),
        sa.Column("variant", sa.String(64), nullable=False),
        sa.Column("ts", sa.Double(), nullable=False),
        sa.Column("seconds", sa.Double(), nullable=False),
        sa.Column("replicas", sa.Integer(), nullable=False),
        *_doubles(TOTALS, nullable=False),
        *_doubles(RATES, nullable=False),
        *_doubles(PERCENTILES, nullable=True),
        sa.Column("latency_buckets", JSON, nullable=False),
        sa.Column("ttfb_buckets", JSON, nullable=False),
        *_doubles(GAUGES, nullable=False),
        *_doubles(OPTIONAL_GAUGES, nullable=True),
        sa.Column("quota_used", JSON, nullable=False),
        sa.Column("quota_reset_at", JSON, nullable=False),
        sa.Column("models", JSON, nullable=False),
        sa.PrimaryKeyConstraint("resolution", "variant", "ts", name="pk_snapshots"),
    )
    op.create_index("ix_snapshots_resolution_ts", "snapshots", ["resolution", "ts"])
    op.create_table(
        "rollup_watermarks",
        sa.Column("resolution", sa.Integer(), nullable=False),
        sa.Column("done_until", sa.Double(), nullable=True),
        sa.PrimaryKeyConstraint("resolution", name="pk_rollup_watermarks"),
    )


def downgrade() -> None:
    op.drop_table("rollup_watermarks")
    op.drop_index("ix_snapshots_resolution_ts", table_name="snapshots")
    op.drop_table("snapshots")
