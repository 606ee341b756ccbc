"""Refusal figures: the proxy's own answers counted and their wait kept apart (ADR 0017).

Rows written before this revision get no refusals and empty refusal-wait buckets; their
``latency_buckets`` hold every request (the proxy's refusals included), as they were.

Revision ID: 0003_refusal_figures
Revises: 0002_target_baselines
Created: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003_refusal_figures"
down_revision: str | None = "0002_target_baselines"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
PERCENTILES = ("refusal_wait_p50", "refusal_wait_p95", "refusal_wait_p99")


def upgrade() -> None:
    with op.batch_alter_table("snapshots") as batch:
        batch.add_column(
            sa.Column("refusals_total", sa.Double(), nullable=False, server_default="0")
        )
        for name in PERCENTILES:
            batch.add_column(sa.Column(name, sa.Double(), nullable=True))
        batch.add_column(
            sa.Column("refusal_wait_buckets", JSON, nullable=False, server_default="{}")
        )


def downgrade() -> None:
    with op.batch_alter_table("snapshots") as batch:
        batch.drop_column("refusal_wait_buckets")
        for name in reversed(PERCENTILES):
            batch.drop_column(name)
        batch.drop_column("refusals_total")
