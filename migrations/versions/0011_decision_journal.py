"""The decision journal: each legacy write decision with the state the new rules read
(``strangler consume --journal-decisions``), for ``strangler decisions replay``.

``decision_journal``: one row per legacy decision judged while journaling is on, in the
order judged (``id``); ``entry`` is JSON (new_domain/ingest/journal.py), ``agreed`` the
verdict of the rules that judged it then.

Revision ID: 0011_decision_journal
Revises: 0010_facade_lag_samples
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011_decision_journal"
down_revision: str | Sequence[str] | None = "0010_facade_lag_samples"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "decision_journal",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("route", sa.String(64), nullable=False),
        sa.Column("sku", sa.String(255), nullable=False),
        sa.Column("agreed", sa.Boolean(), nullable=False),
        sa.Column("entry", sa.Text(), nullable=False),
        sa.Column("change_id", sa.String(255), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_decision_journal"),
    )


def downgrade() -> None:
    op.drop_table("decision_journal")
