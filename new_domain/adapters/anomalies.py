"""The ``anomaly`` table: legacy facts that broke the new model's invariants."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from new_domain.adapters import orm


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
    def __init__(self, session: Session) -> None:
        self.session = session

    def _add(self, anomaly: Anomaly) -> None:
        self.session.connection().execute(
            insert(orm.anomaly).values(
                recorded_at=anomaly.recorded_at,
                kind=anomaly.kind,
                sku=anomaly.sku,
                detail=anomaly.detail,
                message_id=anomaly.message_id,
            )
        )

    def recorded(self) -> list[Anomaly]:
        t = orm.anomaly
        rows = self.session.connection().execute(
            select(t.c.kind, t.c.sku, t.c.detail, t.c.message_id, t.c.recorded_at).order_by(t.c.id)
        )
        return [Anomaly(*row) for row in rows]


class InMemoryAnomalyLog(AbstractAnomalyLog):
    def __init__(self) -> None:
        self.anomalies: list[Anomaly] = []

    def _add(self, anomaly: Anomaly) -> None:
        self.anomalies.append(anomaly)

    def recorded(self) -> list[Anomaly]:
        return list(self.anomalies)
