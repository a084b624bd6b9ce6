"""Allocation order: each batch numbers its lines in the order they were allocated.

- ``batch_allocations.seq``: the line's number in its batch (the newest highest), so a
  quantity cut can deallocate a batch's most recent allocations first.
- ``batches.last_allocation_seq``: the highest number the batch handed out, so the next
  allocation is numbered without reading the batch's lines.

Lines stored before this revision were not numbered. They are numbered in the best
order known: by the legacy line id the anti-corruption layer mapped to the order's line
(legacy creates a line when it first allocates it), then by order id. A line legacy
moved to another batch after a quantity cut keeps its old line id, so it may count as
older there than legacy thinks; every allocation after this revision is numbered
exactly.

Revision ID: 0005_allocation_order
Revises: 0003_consumer_operations
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_allocation_order"
down_revision: str | Sequence[str] | None = "0003_consumer_operations"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "batch_allocations",
        sa.Column("seq", sa.Integer(), server_default="0", nullable=False),
    )
    op.add_column(
        "batches",
        sa.Column("last_allocation_seq", sa.Integer(), server_default="0", nullable=False),
    )
    connection = op.get_bind()
    rows = connection.execute(
        sa.text(
            "SELECT a.batchref, a.orderid, "
            "(SELECT MIN(m.line_id) FROM legacy_line_map m "
            "WHERE m.orderid = a.orderid AND m.sku = a.sku) "
            "FROM batch_allocations a"
        )
    ).all()
    by_batch: dict[str, list[tuple[bool, int, str]]] = defaultdict(list)
    for batchref, orderid, line_id in rows:
        by_batch[batchref].append((line_id is None, int(line_id or 0), orderid))
    numbered = [
        {"batchref": batchref, "orderid": orderid, "seq": n}
        for batchref, lines in by_batch.items()
        for n, (_, _, orderid) in enumerate(sorted(lines), start=1)
    ]
    if numbered:
        connection.execute(
            sa.text(
                "UPDATE batch_allocations SET seq = :seq "
                "WHERE batchref = :batchref AND orderid = :orderid"
            ),
            numbered,
        )
    op.execute(
        "UPDATE batches SET last_allocation_seq = COALESCE("
        "(SELECT MAX(ba.seq) FROM batch_allocations ba WHERE ba.batchref = batches.reference), 0)"
    )


def downgrade() -> None:
    with op.batch_alter_table("batches") as batch:
        batch.drop_column("last_allocation_seq")
    with op.batch_alter_table("batch_allocations") as batch:
        batch.drop_column("seq")
