"""Client figures: per client key alias, its answers, admissions, refusals, tokens and
limiter wait, as JSON beside the per-model figures.

Rows written before this revision have no client figures (an empty object).

Revision ID: 0004_client_figures
Revises: 0003_refusal_figures
Created: 2026-12-09
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004_client_figures"
down_revision: str | None = "0003_refusal_figures"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("snapshots") as batch:
        batch.add_column(sa.Column("clients", JSON, nullable=False, server_default="{}"))


def downgrade() -> None:
    with op.batch_alter_table("snapshots") as batch:
        batch.drop_column("clients")
