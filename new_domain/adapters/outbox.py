"""The transactional outbox: domain events for other systems, written with the state.

An event handler adds the event to the unit of work's outbox; the row is inserted in
the same transaction as the state change that raised it, so each state change has
exactly one row (a skipped redelivery changes nothing and writes nothing). The outbox
relay (:mod:`new_domain.entrypoints.outbox_relay`) publishes unpublished rows to the
``new_domain.events`` topic exchange with publisher confirms and only then marks them
published; a crash in between publishes them again with the same ``message_id``.

Published events and their routing keys; bodies are described by
``docs/schemas/new-domain-<event>.schema.json``.

**Decision blocks.** Every body has ``decision``: null for an event mirrored from legacy
(or the ownership's own ``OwnershipMoved``); for the events of one decision of the new
write path (one command, one transaction), the block :meth:`AbstractOutbox.decision`
stamps on them: ``{"id", "route", "sku", "summary", "events", "index"}``, the same id on
each, ``events`` how many there are, ``index`` their order.
"""

from __future__ import annotations

import abc
import json
import uuid
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.engine import Connection

from new_domain.adapters import orm
from new_domain.adapters.bulk import insert_rows
from new_domain.adapters.chunks import chunked
from new_domain.domain import events

EVENTS_EXCHANGE = "new_domain.events"

ROUTING_KEYS: dict[type[events.Event], str] = {
    events.BatchCreated: "batch.created",
    events.Allocated: "allocation.allocated",
    events.Deallocated: "allocation.deallocated",
    events.BatchQuantityChanged: "batch.quantity_changed",
    events.OwnershipMoved: "ownership.moved",
}


@dataclass(frozen=True)
class OutboxMessage:
    """One row: what the relay publishes."""

    id: int
    message_id: str
    event_type: str
    routing_key: str
    body: str


@dataclass
class Decision:
    """One decision of the new write path: the events it raised share this block.
    ``summary`` (decision parity's words for what was decided) is set once it is known,
    before the decision's block ends."""

    route: str
    sku: str
    summary: str = ""
    id: str = field(default_factory=lambda: str(uuid.uuid4()))

    def block(self, events: int, index: int) -> dict[str, Any]:
        return {
            "id": self.id,
            "route": self.route,
            "sku": self.sku,
            "summary": self.summary,
            "events": events,
            "index": index,
        }


def event_body(
    event: events.Event,
    message_id: str,
    occurred_at: datetime,
    cause: str | None,
    decision: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The published JSON of ``event`` (see the schemas); dates as ``YYYY-MM-DD``."""
    return {
        "type": type(event).__name__,
        "message_id": message_id,
        "occurred_at": occurred_at.isoformat(),
        "legacy_change": cause,
        "decision": decision,
        "data": {
            name: value.isoformat() if isinstance(value, date) else value
            for name, value in vars(event).items()
        },
    }


_Held = list[tuple[events.Event, str, datetime, str | None]]


class AbstractOutbox(abc.ABC):
    _held: _Held | None = None

    def add(self, event: events.Event, cause: str | None) -> str:
        """Queue ``event`` for publication; returns its ``message_id``.

        ``cause`` is the ``message_id`` of the legacy change that led to it, if any.
        Inside :meth:`decision` the event waits for the decision's block.
        """
        message_id = str(uuid.uuid4())
        now = datetime.now(UTC)
        if self._held is not None:
            self._held.append((event, message_id, now, cause))
        else:
            self._add(_row(event, message_id, now, cause, None))
        return message_id

    @contextmanager
    def decision(self, route: str, sku: str) -> Iterator[Decision]:
        """The events added inside the block are one decision's: when the block ends
        normally they are queued with its decision block (``events``, ``index``); when
        it raises, they are dropped."""
        if self._held is not None:
            raise RuntimeError("a decision is open already")
        decision = Decision(route, sku)
        held: _Held = []
        self._held = held
        try:
            yield decision
        finally:
            self._held = None
        for index, (event, message_id, at, cause) in enumerate(held):
            self._add(_row(event, message_id, at, cause, decision.block(len(held), index)))

    @abc.abstractmethod
    def _add(self, row: dict[str, Any]) -> None: ...


def _row(
    event: events.Event,
    message_id: str,
    at: datetime,
    cause: str | None,
    decision: dict[str, Any] | None,
) -> dict[str, Any]:
    body = event_body(event, message_id, at, cause, decision)
    return {
        "message_id": message_id,
        "event_type": type(event).__name__,
        "routing_key": ROUTING_KEYS[type(event)],
        "body": json.dumps(body, sort_keys=True),
        "created_at": at,
    }


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
