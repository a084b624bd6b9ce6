"""``backsync status``: what back-sync has written, how late, what waits."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Engine

from backsync.install import missing_tables
from backsync.tables import lane_position, position


@dataclass(frozen=True)
class BackSyncStatus:
    """Back-sync's position in the legacy database (and its queue, when asked)."""

    queue: str
    installed: bool
    decisions: int = 0
    fences: int = 0
    last_decision_id: str | None = None
    last_occurred_at: datetime | None = None
    """When the new system took the last decision written."""
    last_written_at: datetime | None = None
    """When legacy committed it."""
    queue_depth: int | None = None
    dead_letters: int | None = None

    @property
    def lag_seconds(self) -> float | None:
        """The last decision's lag: new commit to legacy commit."""
        if self.last_occurred_at is None or self.last_written_at is None:
            return None
        return max(0.0, (self.last_written_at - self.last_occurred_at).total_seconds())

    def line(self) -> str:
        """One line for ``strangler status``."""
        if not self.installed:
            return "not installed (strangler backsync install)"
        if self.last_written_at is None:
            text = f"{self.decisions} decisions, {self.fences} fences written"
        else:
            last = self.last_written_at.isoformat(timespec="seconds")
            text = (
                f"{self.decisions} decisions, {self.fences} fences written; last {last}, "
                f"lag {self.lag_seconds:.2f} s"
            )
        if self.queue_depth is not None:
            text += f"; {self.queue_depth} message(s) waiting in {self.queue}"
        return text

    def as_dict(self) -> dict[str, Any]:
        def time(moment: datetime | None) -> str | None:
            return None if moment is None else moment.isoformat()

        return {
            "queue": self.queue,
            "installed": self.installed,
            "decisions": self.decisions,
            "fences": self.fences,
            "last_decision_id": self.last_decision_id,
            "last_occurred_at": time(self.last_occurred_at),
            "last_written_at": time(self.last_written_at),
            "lag_seconds": self.lag_seconds,
            "queue_depth": self.queue_depth,
            "dead_letters": self.dead_letters,
        }


def read_status(engine: Engine, queue: str) -> BackSyncStatus:
    """Back-sync's position for ``queue`` as the legacy database holds it: the queue's
    row and its lanes' rows (the decisions summed, the last one written by any)."""
    if missing_tables(engine):
        return BackSyncStatus(queue, installed=False)
    with engine.connect() as connection:
        row = connection.execute(select(position).where(position.c.queue == queue)).first()
        lanes = connection.execute(
            select(lane_position).where(lane_position.c.queue == queue)
        ).all()
    if row is None and not lanes:
        return BackSyncStatus(queue, installed=True)
    rows = ([row] if row is not None else []) + list(lanes)
    last = max(rows, key=lambda r: _utc(r.last_written_at) or _EPOCH)
    return BackSyncStatus(
        queue,
        installed=True,
        decisions=sum(int(r.decisions) for r in rows),
        fences=int(row.fences) if row is not None else 0,
        last_decision_id=last.last_decision_id,
        last_occurred_at=_utc(last.last_occurred_at),
        last_written_at=_utc(last.last_written_at),
    )


_EPOCH = datetime.min.replace(tzinfo=UTC)


def _utc(moment: datetime | None) -> datetime | None:
    if moment is None:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
