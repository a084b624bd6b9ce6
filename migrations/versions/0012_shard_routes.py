"""The shard router's bookkeeping (``strangler shard-router``, docs/architecture.md).

``shard_route_position``: per input stream, the last position routed and confirmed, the
shard count, the legacy transaction still open there; ``shard_route_seq``: per shard
stream, the last position given out; ``shard_route_key``: the legacy keys (product and
lot ids) the router learnt, to tell which product a change belongs to; ``shard_fence``:
which shards applied a write group's fence (a move settles once all have).

Revision ID: 0012_shard_routes
Revises: 0011_decision_journal
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0012_shard_routes"
down_revision: str | Sequence[str] | None = "0011_decision_journal"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _wide() -> sa.types.TypeEngine[Any]:
    """A stream position (``orm.Position``): NUMERIC(40), or its digits on SQLite."""
    if op.get_bind().dialect.name == "sqlite":
        return sa.String(40)
    return sa.Numeric(40, 0)


def upgrade() -> None:
    op.create_table(
        "shard_route_position",
        sa.Column("stream", sa.Text(), nullable=False),
        sa.Column("position", _wide(), nullable=False),
        sa.Column("shard_count", sa.Integer(), nullable=False),
        sa.Column("open_transaction", sa.Text(), nullable=True),
        sa.Column("reading", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.PrimaryKeyConstraint("stream", name="pk_shard_route_position"),
    )
    op.create_table(
        "shard_route_seq",
        sa.Column("stream", sa.Text(), nullable=False),
        sa.Column("position", _wide(), nullable=False),
        sa.PrimaryKeyConstraint("stream", name="pk_shard_route_seq"),
    )
    op.create_table(
        "shard_fence",
        sa.Column("group_name", sa.String(64), nullable=False),
        sa.Column("epoch", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("stream", sa.Text(), nullable=False),
        sa.Column("shard_count", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("group_name", "epoch", "stream", name="pk_shard_fence"),
    )
    op.create_table(
        "shard_route_key",
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("legacy_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("sku", sa.String(255), nullable=False),
        sa.Column("ref", sa.String(255), nullable=True),
        sa.PrimaryKeyConstraint("kind", "legacy_id", name="pk_shard_route_key"),
    )


def downgrade() -> None:
    op.drop_table("shard_route_key")
    op.drop_table("shard_fence")
    op.drop_table("shard_route_seq")
    op.drop_table("shard_route_position")
