"""Write ownership: which system owns which product, and what broke it.

- ``write_ownership``: each write group's ownership rule, epoch and state;
- ``ownership_violation``: legacy changes to products the new system owns that were not
  the new system's own echoes;
- ``echo_anomaly``: echoes whose legacy rows differ from what the new system decided.

Revision ID: 0007_write_ownership
Revises: 0006_decision_parity
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_write_ownership"
down_revision: str | Sequence[str] | None = "0006_decision_parity"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "write_ownership",
        sa.Column("group_name", sa.String(64), nullable=False),
        sa.Column("rule", sa.String(32), nullable=False),
        sa.Column("previous_rule", sa.String(32), nullable=True),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("changed_by", sa.String(255), nullable=True),
        sa.PrimaryKeyConstraint("group_name", name="pk_write_ownership"),
    )
    op.create_table(
        "ownership_violation",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("group_name", sa.String(64), nullable=False),
        sa.Column("sku", sa.String(255), nullable=False),
        sa.Column("change_id", sa.String(255), nullable=True),
        sa.Column("stream", sa.String(255), nullable=True),
        sa.Column("position", sa.BigInteger(), nullable=True),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_ownership_violation"),
    )
    op.create_index("ix_ownership_violation_resolved_at", "ownership_violation", ["resolved_at"])
    op.create_table(
        "echo_anomaly",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("decision_id", sa.String(64), nullable=True),
        sa.Column("route", sa.String(64), nullable=True),
        sa.Column("sku", sa.String(255), nullable=True),
        sa.Column("expected", sa.Text(), nullable=False),
        sa.Column("found", sa.Text(), nullable=False),
        sa.Column("change_id", sa.String(255), nullable=True),
        sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_echo_anomaly"),
    )
    op.create_index("ix_echo_anomaly_resolved_at", "echo_anomaly", ["resolved_at"])


def downgrade() -> None:
    op.drop_index("ix_echo_anomaly_resolved_at", table_name="echo_anomaly")
    op.drop_table("echo_anomaly")
    op.drop_index("ix_ownership_violation_resolved_at", table_name="ownership_violation")
    op.drop_table("ownership_violation")
    op.drop_table("write_ownership")
