"""Positions wider than 64 bits, and the legacy allocation key map.

- ``position`` of ``applied_change_position``, ``dead_letter`` and
  ``ownership_violation``: ``NUMERIC(40)`` (decimal digits on SQLite, whose integers stop
  at 64 bits), because the positions of Debezium's changes are derived from two log
  coordinates (``new_domain/ingest/debezium.py``);
- ``legacy_allocation_map``: which order line an allocation row allocates to which lot,
  so that a delete carrying only the row's key is resolved.

Revision ID: 0009_debezium_positions
Revises: 0008_echoes_and_resolutions
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0009_debezium_positions"
down_revision: str | Sequence[str] | None = "0008_echoes_and_resolutions"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

POSITIONS = (
    ("applied_change_position", False),
    ("dead_letter", True),
    ("ownership_violation", True),
)


def _wide() -> sa.types.TypeEngine[Any]:
    if op.get_bind().dialect.name == "sqlite":
        return sa.String(40)
    return sa.Numeric(40, 0)


def upgrade() -> None:
    for table, nullable in POSITIONS:
        with op.batch_alter_table(table) as batch:
            batch.alter_column(
                "position",
                type_=_wide(),
                existing_type=sa.BigInteger(),
                existing_nullable=nullable,
                postgresql_using="position::numeric(40, 0)",
            )
    op.create_table(
        "legacy_allocation_map",
        sa.Column("alloc_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("line_id", sa.BigInteger(), nullable=False),
        sa.Column("lot_id", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("alloc_id", name="pk_legacy_allocation_map"),
    )


def downgrade() -> None:
    """Fails when a stored position does not fit 64 bits (a Debezium stream's)."""
    op.drop_table("legacy_allocation_map")
    sqlite = op.get_bind().dialect.name == "sqlite"
    for table, nullable in POSITIONS:
        with op.batch_alter_table(table) as batch:
            batch.alter_column(
                "position",
                type_=sa.BigInteger(),
                existing_type=_wide(),
                existing_nullable=nullable,
                postgresql_using="position::bigint",
            )
        if sqlite:
            op.execute(f"UPDATE {table} SET position = CAST(position AS INTEGER)")
