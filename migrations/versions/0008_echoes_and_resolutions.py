"""Echoes kept with the stream position; who resolved an ownership problem, and why.

- ``applied_change_position.echo_txid``: the legacy transaction id of the echo (a
  transaction the kit wrote itself, opened by its origin marker) that the stream's last
  applied change belongs to, so the rest of an echo split across batches, or
  redelivered after a crash, is still known as the kit's own;
- ``ownership_violation`` and ``echo_anomaly``: ``resolved_by`` and ``resolution`` (the
  reason), set with ``resolved_at`` by ``strangler ownership resolve``.

Revision ID: 0008_echoes_and_resolutions
Revises: 0007_write_ownership
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008_echoes_and_resolutions"
down_revision: str | Sequence[str] | None = "0007_write_ownership"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

RESOLVED = ("ownership_violation", "echo_anomaly")


def upgrade() -> None:
    op.add_column("applied_change_position", sa.Column("echo_txid", sa.String(64), nullable=True))
    for table in RESOLVED:
        op.add_column(table, sa.Column("resolved_by", sa.String(255), nullable=True))
        op.add_column(table, sa.Column("resolution", sa.Text(), nullable=True))


def downgrade() -> None:
    for table in RESOLVED:
        with op.batch_alter_table(table) as batch:
            batch.drop_column("resolution")
            batch.drop_column("resolved_by")
    with op.batch_alter_table("applied_change_position") as batch:
        batch.drop_column("echo_txid")
