"""Target baselines: each target's last scrape, written with the round (ADR 0014).

Revision ID: 0002_target_baselines
Revises: 0001_snapshot_rollups
Created: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_target_baselines"
down_revision: str | None = "0001_snapshot_rollups"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "target_baselines",
        sa.Column("target", sa.String(512), nullable=False),
        sa.Column("scraped_at", sa.Double(), nullable=False),
        sa.Column("process_start_time", sa.Double(), nullable=True),
        sa.Column("covered_until", sa.Double(), nullable=False),
        sa.Column("series", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("target", name="pk_target_baselines"),
    )


def downgrade() -> None:
    op.drop_table("target_baselines")
