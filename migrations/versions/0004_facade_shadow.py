"""Facade shadow comparison: route options, cutover gate evidence, shadow results.

Revision ID: 0004_facade_shadow
Revises: 0002_facade_routes
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_facade_shadow"
down_revision = "0002_facade_routes"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("facade_route") as batch:
        batch.add_column(
            sa.Column("options", sa.Text(), nullable=False, server_default=sa.text("'{}'"))
        )
    with op.batch_alter_table("facade_route_audit") as batch:
        batch.add_column(
            sa.Column("options", sa.Text(), nullable=False, server_default=sa.text("'{}'"))
        )
        batch.add_column(
            sa.Column("forced", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch.add_column(sa.Column("gate", sa.Text(), nullable=True))
    op.create_table(
        "facade_shadow_result",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("method", sa.String(16), nullable=False),
        sa.Column("pattern", sa.String(255), nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("legacy_status", sa.Integer(), nullable=False),
        sa.Column("new_status", sa.Integer(), nullable=True),
        sa.Column("legacy_ms", sa.Double(), nullable=False),
        sa.Column("new_ms", sa.Double(), nullable=True),
        sa.Column("diff", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_facade_shadow_result"),
    )
    op.create_index(
        "ix_facade_shadow_result_route",
        "facade_shadow_result",
        ["method", "pattern", "kind", "id"],
    )
    op.create_index("ix_facade_shadow_result_at", "facade_shadow_result", ["at"])


def downgrade() -> None:
    op.drop_index("ix_facade_shadow_result_at", table_name="facade_shadow_result")
    op.drop_index("ix_facade_shadow_result_route", table_name="facade_shadow_result")
    op.drop_table("facade_shadow_result")
    with op.batch_alter_table("facade_route_audit") as batch:
        batch.drop_column("gate")
        batch.drop_column("forced")
        batch.drop_column("options")
    with op.batch_alter_table("facade_route") as batch:
        batch.drop_column("options")
