"""``batches.creation_number``: each batch's place in its product's creation order.

The allocate rule breaks ties between batches of the same eta by creation order, as
legacy does with its ``lot_id``. The order the consumer received legacy's lots in is
their commit order, which is not ``lot_id`` order when two lots of one product were
created at once; so each batch keeps its number: legacy's ``lot_id`` for a batch
mirrored from legacy, the next after its product's highest for one the new system
created. Existing batches get their ``lot_id`` where the anti-corruption layer knows
it, and the next numbers in their product, in the order they were stored, otherwise.

Revision ID: 0013_batch_creation_number
Revises: 0012_shard_routes
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013_batch_creation_number"
down_revision: str | Sequence[str] | None = "0012_shard_routes"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CHUNK = 10_000


def upgrade() -> None:
    op.add_column("batches", sa.Column("creation_number", sa.BigInteger(), nullable=True))
    bind = op.get_bind()
    rows = bind.execute(
        sa.text(
            "SELECT b.id, b.sku, MIN(m.lot_id) FROM batches b"
            " LEFT JOIN legacy_lot_map m ON m.batchref = b.reference"
            " GROUP BY b.id, b.sku ORDER BY b.sku, b.id"
        )
    ).all()
    highest: dict[str, int] = {}
    for _, sku, lot_id in rows:
        if lot_id is not None:
            highest[sku] = max(highest.get(sku, 0), int(lot_id))
    numbered: list[dict[str, int]] = []
    for batch_id, sku, lot_id in rows:
        if lot_id is None:
            lot_id = highest[sku] = highest.get(sku, 0) + 1
        numbered.append({"id": int(batch_id), "number": int(lot_id)})
    update = sa.text("UPDATE batches SET creation_number = :number WHERE id = :id")
    for start in range(0, len(numbered), CHUNK):
        bind.execute(update, numbered[start : start + CHUNK])


def downgrade() -> None:
    op.drop_column("batches", "creation_number")
