"""The end-to-end lag over time, as the facade measured it (the console's chart).

``facade_lag_sample``: one row per sampling interval (its start is the key, so several
facade workers sampling the same interval write it once), pruned by the facade to the
last hours. ``lag_seconds`` is null when the lag could not be measured (nothing applied
yet, or the new database did not answer).

Revision ID: 0010_facade_lag_samples
Revises: 0009_debezium_positions
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010_facade_lag_samples"
down_revision: str | Sequence[str] | None = "0009_debezium_positions"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "facade_lag_sample",
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("lag_seconds", sa.Double(), nullable=True),
        sa.PrimaryKeyConstraint("at", name="pk_facade_lag_sample"),
    )


def downgrade() -> None:
    op.drop_table("facade_lag_sample")
