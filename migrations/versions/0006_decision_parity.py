"""Decision parity: how often legacy's write decisions agree with the new rules.

- ``decision_parity``: per write route (and ``unclassified``), how many legacy decisions
  the new rules took the same way (``agree``) and differently (``differ``);
- ``decision_difference``: every difference, with both decisions and the product's
  state as the new rules saw it.

Revision ID: 0006_decision_parity
Revises: 0005_allocation_order
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_decision_parity"
down_revision: str | Sequence[str] | None = "0005_allocation_order"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "decision_parity",
        sa.Column("route", sa.String(64), nullable=False),
        sa.Column("agree", sa.BigInteger(), nullable=False),
        sa.Column("differ", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("route", name="pk_decision_parity"),
    )
    op.create_table(
        "decision_difference",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("route", sa.String(64), nullable=False),
        sa.Column("sku", sa.String(255), nullable=False),
        sa.Column("legacy", sa.Text(), nullable=False),
        sa.Column("new", sa.Text(), nullable=False),
        sa.Column("state", sa.Text(), nullable=False),
        sa.Column("change_id", sa.String(255), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_decision_difference"),
    )
    op.create_index("ix_decision_difference_route", "decision_difference", ["route", "id"])


def downgrade() -> None:
    op.drop_index("ix_decision_difference_route", table_name="decision_difference")
    op.drop_table("decision_difference")
    op.drop_table("decision_parity")
