"""The new allocation domain: model, read model, ACL key maps, change positions, anomalies.

Revision ID: 0001_new_domain
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001_new_domain"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "products",
        sa.Column("sku", sa.String(255), nullable=False),
        sa.Column("version_number", sa.Integer(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint("sku", name="pk_products"),
    )
    op.create_table(
        "batches",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("reference", sa.String(255), nullable=False),
        sa.Column("sku", sa.String(255), nullable=False),
        sa.Column("purchased_quantity", sa.Integer(), nullable=False),
        sa.Column("eta", sa.Date(), nullable=True),
        sa.ForeignKeyConstraint(["sku"], ["products.sku"], name="fk_batches_sku_products"),
        sa.PrimaryKeyConstraint("id", name="pk_batches"),
        sa.UniqueConstraint("reference", name="uq_batches_reference"),
    )
    op.create_index("ix_batches_sku", "batches", ["sku"])
    op.create_table(
        "order_lines",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("orderid", sa.String(255), nullable=False),
        sa.Column("sku", sa.String(255), nullable=False),
        sa.Column("qty", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_order_lines"),
    )
    op.create_index("ix_order_lines_orderid", "order_lines", ["orderid"])
    op.create_table(
        "allocations",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("orderline_id", sa.Integer(), nullable=False),
        sa.Column("batch_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["batch_id"], ["batches.id"], name="fk_allocations_batch_id_batches"
        ),
        sa.ForeignKeyConstraint(
            ["orderline_id"], ["order_lines.id"], name="fk_allocations_orderline_id_order_lines"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_allocations"),
        sa.UniqueConstraint("orderline_id", name="uq_allocations_orderline_id"),
    )
    op.create_index("ix_allocations_batch_id", "allocations", ["batch_id"])
    op.create_table(
        "allocations_view",
        sa.Column("orderid", sa.String(255), nullable=False),
        sa.Column("sku", sa.String(255), nullable=False),
        sa.Column("batchref", sa.String(255), nullable=False),
        sa.PrimaryKeyConstraint("orderid", "sku", "batchref", name="pk_allocations_view"),
    )
    op.create_table(
        "legacy_product_map",
        sa.Column("prod_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("sku", sa.String(255), nullable=False),
        sa.PrimaryKeyConstraint("prod_id", name="pk_legacy_product_map"),
    )
    op.create_table(
        "legacy_lot_map",
        sa.Column("lot_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("batchref", sa.String(255), nullable=False),
        sa.Column("sku", sa.String(255), nullable=False),
        sa.PrimaryKeyConstraint("lot_id", name="pk_legacy_lot_map"),
    )
    op.create_table(
        "legacy_line_map",
        sa.Column("line_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("orderid", sa.String(255), nullable=False),
        sa.Column("sku", sa.String(255), nullable=False),
        sa.Column("qty", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("line_id", name="pk_legacy_line_map"),
    )
    op.create_table(
        "applied_change_position",
        sa.Column("stream", sa.Text(), nullable=False),
        sa.Column("position", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("stream", name="pk_applied_change_position"),
    )
    op.create_table(
        "anomaly",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("sku", sa.String(255), nullable=True),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("message_id", sa.String(255), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_anomaly"),
    )
    op.create_index("ix_anomaly_recorded_at", "anomaly", ["recorded_at"])


def downgrade() -> None:
    op.drop_index("ix_anomaly_recorded_at", table_name="anomaly")
    op.drop_table("anomaly")
    op.drop_table("applied_change_position")
    op.drop_table("legacy_line_map")
    op.drop_table("legacy_lot_map")
    op.drop_table("legacy_product_map")
    op.drop_table("allocations_view")
    op.drop_index("ix_allocations_batch_id", table_name="allocations")
    op.drop_table("allocations")
    op.drop_index("ix_order_lines_orderid", table_name="order_lines")
    op.drop_table("order_lines")
    op.drop_index("ix_batches_sku", table_name="batches")
    op.drop_table("batches")
    op.drop_table("products")
