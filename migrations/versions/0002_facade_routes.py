"""Facade route table and its audit trail.

Revision ID: 0002_facade_routes
Revises: 0001_new_domain
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_facade_routes"
down_revision = "0001_new_domain"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "facade_route",
        sa.Column("method", sa.String(16), nullable=False),
        sa.Column("pattern", sa.String(255), nullable=False),
        sa.Column("mode", sa.String(32), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_by", sa.String(128), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("method", "pattern", name="pk_facade_route"),
    )
    op.create_table(
        "facade_route_audit",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("method", sa.String(16), nullable=False),
        sa.Column("pattern", sa.String(255), nullable=False),
        sa.Column("from_mode", sa.String(32), nullable=True),
        sa.Column("to_mode", sa.String(32), nullable=False),
        sa.Column("by", sa.String(128), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_facade_route_audit"),
    )
    op.create_index("ix_facade_route_audit_route", "facade_route_audit", ["method", "pattern"])


def downgrade() -> None:
    op.drop_index("ix_facade_route_audit_route", table_name="facade_route_audit")
    op.drop_table("facade_route_audit")
    op.drop_table("facade_route")
