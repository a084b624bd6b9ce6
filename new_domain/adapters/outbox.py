"""The transactional outbox: domain events for other systems, written with the state.

An event handler adds the event to the unit of work's outbox; the row is inserted in
the same transaction as the state change that raised it, so each state change has
exactly one row (a skipped redelivery changes nothing and writes nothing). The outbox
relay (:mod:`new_domain.entrypoints.outbox_relay`) publishes unpublished rows to the
``new_domain.events`` topic exchange with publisher confirms and only then marks them
published; a crash in between publishes them again with the same ``message_id``.

Published events and their routing keys; bodies are described by
``docs/schemas/new-domain-<event>.schema.json``.
"""

from __future__ import annotations

import abc
import json
import uuid
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.engine import Connection

from new_domain.adapters import orm
from new_domain.adapters.bulk import insert_rows
from new_domain.adapters.chunks import chunked
from new_domain.domain import events

EVENTS_EXCHANGE = "new_domain.events"

ROUTING_KEYS: dict[type[events.Event], str] = {
    events.Allocated: "allocation.allocated",
    events.Deallocated: "allocation.deallocated",
    events.BatchQuantityChanged: "batch.quantity_changed",
}


@dataclass(frozen=True)
class OutboxMessage:
    """One row: what the relay publishes."""

    id: int
    message_id: str
    event_type: str
    routing_key: str
    body: str


def event_body(
    event: events.Event, message_id: str, occurred_at: datetime, cause: str | None
) -> dict[str, Any]:
    """The published JSON of ``event`` (see the schemas)."""
    return {
        "type": type(event).__name__,
        "message_id": message_id,
        "occurred_at": occurred_at.isoformat(),
        "legacy_change": cause,
        "data": dict(vars(event)),
    }


class AbstractOutbox(abc.ABC):
    def add(self, event: events.Event, cause: str | None) -> str:
        """Queue ``event`` for publication; returns its ``message_id``.

        ``cause`` is the ``message_id`` of the legacy change that led to it, if any.
        """
        message_id = str(uuid.uuid4())
        now = datetime.now(UTC)
        row = {
            "message_id": message_id,
            "event_type": type(event).__name__,
            "routing_key": ROUTING_KEYS[type(event)],
            "body": json.dumps(event_body(event, message_id, now, cause), sort_keys=True),
            "created_at": now,
        }
        self._add(row)
        return message_id

    @abc.abstractmethod
    def _add(self, row: dict[str, Any]) -> None: ...


class SqlAlchemyOutbox(AbstractOutbox):
    """Rows are inserted together just before the commit."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self._pending: list[dict[str, Any]] = []

    def _add(self, row: dict[str, Any]) -> None:
        self._pending.append(row)

    @property
    def pending(self) -> int:
        return len(self._pending)

    def flush(self) -> None:
        if self._pending:
            insert_rows(self.connection, orm.outbox, self._pending)
            self._pending = []


def unpublished(connection: Connection, limit: int) -> list[OutboxMessage]:
    """The oldest unpublished rows, locked until the transaction ends (PostgreSQL), so a
    second relay waits instead of publishing them too."""
    t = orm.outbox
    rows = connection.execute(
        select(t.c.id, t.c.message_id, t.c.event_type, t.c.routing_key, t.c.body)
        .where(t.c.published_at.is_(None))
        .order_by(t.c.id)
        .limit(limit)
        .with_for_update()
    )
    return [OutboxMessage(*row) for row in rows]


def mark_published(connection: Connection, ids: Collection[int]) -> None:
    t = orm.outbox
    now = datetime.now(UTC)
    for chunk in chunked(sorted(ids)):
        connection.execute(update(t).where(t.c.id.in_(chunk)).values(published_at=now))


def prune_published(connection: Connection, older_than: timedelta) -> int:
    """Delete rows published more than ``older_than`` ago; how many went."""
    t = orm.outbox
    cutoff = datetime.now(UTC) - older_than
    result = connection.execute(delete(t).where(t.c.published_at < cutoff))
    return int(result.rowcount or 0)


def backlog(connection: Connection) -> int:
    """Rows not published yet."""
    t = orm.outbox
    query = select(func.count()).select_from(t).where(t.c.published_at.is_(None))
    return int(connection.scalar(query) or 0)
