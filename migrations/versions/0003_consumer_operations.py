"""Consumer operations: allocations keyed by batch and order, dead letters, outbox, lag.

- ``batch_allocations`` (one row per allocated line, keyed by batch reference and
  order) replaces ``order_lines`` + ``allocations``; ``batches.allocated_quantity``
  keeps each batch's total so an aggregate loads without all of its lines.
- ``applied_change_position.snapshot_state``: after a reset, changes are skipped until
  a snapshot arrives; while a snapshot loads, changes to rows it has not reached yet.
- ``dead_letter``: changes that failed, their attempts and reason; dead-lettered
  positions that replay may still apply.
- ``outbox``: domain events written with the state change, relayed to the broker.
- ``consumer_progress``: newest legacy commit time seen, for the end-to-end lag.

Revision ID: 0003_consumer_operations
Revises: 0002_facade_routes
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_consumer_operations"
down_revision: str | Sequence[str] | None = "0002_facade_routes"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "batch_allocations",
        sa.Column("batchref", sa.String(255), nullable=False),
        sa.Column("orderid", sa.String(255), nullable=False),
        sa.Column("sku", sa.String(255), nullable=False),
        sa.Column("qty", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["batchref"], ["batches.reference"], name="fk_batch_allocations_batchref_batches"
        ),
        sa.PrimaryKeyConstraint("batchref", "orderid", name="pk_batch_allocations"),
    )
    op.create_index("ix_batch_allocations_orderid", "batch_allocations", ["orderid"])
    op.execute(
        "INSERT INTO batch_allocations (batchref, orderid, sku, qty) "
        "SELECT b.reference, ol.orderid, MIN(ol.sku), SUM(ol.qty) "
        "FROM allocations a "
        "JOIN order_lines ol ON ol.id = a.orderline_id "
        "JOIN batches b ON b.id = a.batch_id "
        "GROUP BY b.reference, ol.orderid"
    )
    op.add_column(
        "batches",
        sa.Column("allocated_quantity", sa.Integer(), server_default="0", nullable=False),
    )
    op.execute(
        "UPDATE batches SET allocated_quantity = COALESCE("
        "(SELECT SUM(ba.qty) FROM batch_allocations ba WHERE ba.batchref = batches.reference), 0)"
    )
    op.drop_index("ix_allocations_batch_id", table_name="allocations")
    op.drop_table("allocations")
    op.drop_index("ix_order_lines_orderid", table_name="order_lines")
    op.drop_table("order_lines")

    op.add_column(
        "applied_change_position",
        sa.Column("snapshot_state", sa.String(16), nullable=True),
    )
    op.create_table(
        "dead_letter",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("message_key", sa.String(255), nullable=False),
        sa.Column("message_id", sa.String(255), nullable=True),
        sa.Column("stream", sa.Text(), nullable=True),
        sa.Column("position", sa.BigInteger(), nullable=True),
        sa.Column("routing_key", sa.String(255), nullable=False),
        sa.Column("message_type", sa.String(64), nullable=True),
        sa.Column("content_type", sa.String(128), nullable=True),
        sa.Column("headers", sa.Text(), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("error_type", sa.String(255), nullable=False),
        sa.Column("first_failed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_failed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("dead_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_dead_letter"),
        sa.UniqueConstraint("message_key", name="uq_dead_letter_message_key"),
    )
    op.create_index("ix_dead_letter_stream_position", "dead_letter", ["stream", "position"])
    op.create_index("ix_dead_letter_state", "dead_letter", ["state"])
    op.create_table(
        "consumer_progress",
        sa.Column("source", sa.String(255), nullable=False),
        sa.Column("newest_commit_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("applied_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("source", name="pk_consumer_progress"),
    )
    op.create_table(
        "outbox",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("message_id", sa.String(64), nullable=False),
        sa.Column("event_type", sa.String(64), nullable=False),
        sa.Column("routing_key", sa.String(255), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_outbox"),
        sa.UniqueConstraint("message_id", name="uq_outbox_message_id"),
    )
    op.create_index("ix_outbox_published_at", "outbox", ["published_at"])


def downgrade() -> None:
    op.drop_index("ix_outbox_published_at", table_name="outbox")
    op.drop_table("outbox")
    op.drop_table("consumer_progress")
    op.drop_index("ix_dead_letter_state", table_name="dead_letter")
    op.drop_index("ix_dead_letter_stream_position", table_name="dead_letter")
    op.drop_table("dead_letter")
    with op.batch_alter_table("applied_change_position") as batch:
        batch.drop_column("snapshot_state")

    op.create_table(
        "order_lines",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("orderid", sa.String(255), nullable=False),
        sa.Column("sku", sa.String(255), nullable=False),
        sa.Column("qty", sa.Integer(), nullable=False),
        sa.Column("batchref", sa.String(255), nullable=True),
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
    op.execute(
        "INSERT INTO order_lines (orderid, sku, qty, batchref) "
        "SELECT orderid, sku, qty, batchref FROM batch_allocations"
    )
    op.execute(
        "INSERT INTO allocations (orderline_id, batch_id) "
        "SELECT ol.id, b.id FROM order_lines ol JOIN batches b ON b.reference = ol.batchref"
    )
    with op.batch_alter_table("order_lines") as batch:
        batch.drop_column("batchref")
    with op.batch_alter_table("batches") as batch:
        batch.drop_column("allocated_quantity")
    op.drop_index("ix_batch_allocations_orderid", table_name="batch_allocations")
    op.drop_table("batch_allocations")
