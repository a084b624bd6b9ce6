"""The ``anomaly`` table: legacy facts that broke the new model's invariants."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.engine import Connection

from new_domain.adapters import orm
from new_domain.adapters.bulk import insert_rows


@dataclass(frozen=True)
class Anomaly:
    kind: str
    sku: str | None
    detail: str
    message_id: str | None
    recorded_at: datetime


class AbstractAnomalyLog(abc.ABC):
    def record(self, kind: str, sku: str | None, detail: str, message_id: str | None) -> Anomaly:
        anomaly = Anomaly(kind, sku, detail, message_id, datetime.now(UTC))
        self._add(anomaly)
        return anomaly

    @abc.abstractmethod
    def _add(self, anomaly: Anomaly) -> None: ...

    @abc.abstractmethod
    def recorded(self) -> list[Anomaly]:
        """Every anomaly, oldest first."""


class SqlAlchemyAnomalyLog(AbstractAnomalyLog):
    """Anomalies are inserted together just before the commit."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self._pending: list[Anomaly] = []

    def _add(self, anomaly: Anomaly) -> None:
        self._pending.append(anomaly)

    def flush(self) -> None:
        if self._pending:
            insert_rows(
                self.connection,
                orm.anomaly,
                [
                    {
                        "recorded_at": a.recorded_at,
                        "kind": a.kind,
                        "sku": a.sku,
                        "detail": a.detail,
                        "message_id": a.message_id,
                    }
                    for a in self._pending
                ],
            )
            self._pending.clear()

    def recorded(self) -> list[Anomaly]:
        self.flush()
        t = orm.anomaly
        rows = self.connection.execute(
            select(t.c.kind, t.c.sku, t.c.detail, t.c.message_id, t.c.recorded_at).order_by(t.c.id)
        )
        return [Anomaly(*row) for row in rows]


def latest_anomalies(connection: Connection, limit: int, kind: str | None = None) -> list[Anomaly]:
    """The newest ``limit`` anomalies (of ``kind``), oldest of them first."""
    t = orm.anomaly
    statement = select(t.c.kind, t.c.sku, t.c.detail, t.c.message_id, t.c.recorded_at)
    if kind is not None:
        statement = statement.where(t.c.kind == kind)
    rows = connection.execute(statement.order_by(t.c.id.desc()).limit(limit)).all()
    return [Anomaly(*row) for row in reversed(rows)]


def anomaly_counts(connection: Connection) -> dict[str, int]:
    """How many anomalies of each kind were recorded."""
    t = orm.anomaly
    rows = connection.execute(select(t.c.kind, func.count()).group_by(t.c.kind).order_by(t.c.kind))
    return {kind: int(count) for kind, count in rows}
