"""Retention: deleting confirmed changes from the change table once they are old enough.

Only rows at or below the confirmed position are candidates (a row the broker has not
confirmed is never deleted), and only those captured more than ``retention`` seconds
ago. Deletes run in batches of ``batch_size`` rows, one short transaction each, so
pruning never holds locks for long. The newest change row is always kept: on engines
whose id counter restarts from the highest id after a restart (MySQL before 8.0,
MariaDB before 10.2.4), deleting it could let a new change reuse its id (and message id).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.engine import Engine

from legacy_bridge.tables import change, relay_state

DEFAULT_RETENTION_S = 3600.0
DEFAULT_BATCH = 1000


def prune(
    engine: Engine,
    retention: float = DEFAULT_RETENTION_S,
    batch_size: int = DEFAULT_BATCH,
    max_batches: int = 20,
    now: datetime | None = None,
) -> int:
    """Delete up to ``max_batches`` batches of confirmed, expired changes; return how many."""
    cutoff = (now or datetime.now(UTC)) - timedelta(seconds=retention)
    if engine.dialect.name != "postgresql":
        cutoff = cutoff.replace(tzinfo=None)  # stored as naive UTC there
    deleted = 0
    for _ in range(max_batches):
        with engine.begin() as conn:
            confirmed = conn.execute(select(relay_state.c.last_confirmed_pos)).scalar()
            newest = conn.execute(select(func.max(change.c.change_id))).scalar()
            if not confirmed or newest is None:
                return deleted
            ids = list(
                conn.execute(
                    select(change.c.change_id)
                    .where(
                        change.c.pos <= confirmed,
                        change.c.captured_at < cutoff,
                        change.c.change_id < newest,
                    )
                    .order_by(change.c.change_id)
                    .limit(batch_size)
                ).scalars()
            )
            if not ids:
                return deleted
            conn.execute(delete(change).where(change.c.change_id.in_(ids)))
            deleted += len(ids)
    return deleted
