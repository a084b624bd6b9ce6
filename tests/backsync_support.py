"""What back-sync's tests share: the new system's event messages, legacy twins.

``decision_messages`` builds what the new write path publishes for one decision (its
events with the ``decision`` block, docs/write-path.md); ``move_message`` an
``OwnershipMoved``. Bodies have the outbox's shape (new_domain/adapters/outbox.py).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

import legacy_bridge
from broker import Message
from examples import legacy_shop

DECISIONS_WRITTEN = (
    "SELECT (SELECT coalesce(sum(decisions), 0) FROM strangler_backsync_position)"
    " + (SELECT coalesce(sum(decisions), 0) FROM strangler_backsync_lane)"
)
"""The decisions back-sync wrote: the queue's row and its lanes' rows."""

ROUTING_KEYS = {
    "BatchCreated": "batch.created",
    "Allocated": "allocation.allocated",
    "Deallocated": "allocation.deallocated",
    "BatchQuantityChanged": "batch.quantity_changed",
    "OwnershipMoved": "ownership.moved",
}
TIME_COLUMNS = {"created_at", "allocated_at", "written_at", "applied_at"}


def event_body(
    type_: str,
    data: dict[str, Any],
    decision: dict[str, Any] | None,
    occurred_at: datetime | None = None,
) -> dict[str, Any]:
    return {
        "type": type_,
        "message_id": str(uuid.uuid4()),
        "occurred_at": (occurred_at or datetime.now(UTC)).isoformat(),
        "legacy_change": None,
        "data": data,
        "decision": decision,
    }


def message(body: dict[str, Any]) -> Message:
    return Message(
        routing_key=ROUTING_KEYS.get(body["type"], "other.event"),
        body=json.dumps(body, sort_keys=True).encode(),
        message_id=body["message_id"],
        type=body["type"],
        headers={"x-event-type": body["type"]},
    )


def decision_messages(
    route: str,
    sku: str,
    summary: str,
    events: Sequence[tuple[str, dict[str, Any]]],
    decision_id: str | None = None,
    occurred_at: datetime | None = None,
) -> list[Message]:
    """The messages of one decision of the new system, in publication order."""
    block = {
        "id": decision_id or str(uuid.uuid4()),
        "route": route,
        "sku": sku,
        "summary": summary,
        "events": len(events),
    }
    return [
        message(event_body(type_, data, {**block, "index": index}, occurred_at))
        for index, (type_, data) in enumerate(events)
    ]


def legacy_fact(type_: str, data: dict[str, Any]) -> Message:
    """An event the new system mirrored from legacy (``"decision": null``)."""
    return message(event_body(type_, data, None))


def move_message(
    rule: str, previous_rule: str, epoch: int, occurred_at: datetime, group: str = "allocation"
) -> Message:
    data = {"group": group, "epoch": epoch, "rule": rule, "previous_rule": previous_rule}
    return message(event_body("OwnershipMoved", data, None, occurred_at))


# -- legacy databases ----------------------------------------------------------------------


def legacy_database(url: str) -> None:
    """The shop's schema with the bridge installed (so every row change is captured)."""
    legacy_shop.create_app(url)  # creates the shop's tables
    legacy_bridge.install(url, tables=list(legacy_shop.TABLES))


def change_mark(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                text("SELECT coalesce(max(change_id), 0) FROM strangler_change")
            ).scalar_one()
        )


def changes_since(engine: Engine, mark: int) -> list[tuple[str, str, Any, Any]]:
    """The captured row changes after ``mark``: (table, op, before, after), times left out
    (they differ between any two runs)."""
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                'SELECT table_name, op, "before", "after" FROM strangler_change'
                " WHERE change_id > :mark ORDER BY change_id"
            ),
            {"mark": mark},
        ).all()
    return [(table, op, _image(before), _image(after)) for table, op, before, after in rows]


def _image(value: Any) -> Any:
    if value is None:
        return None
    image = json.loads(value) if isinstance(value, str) else dict(value)
    return {k: v for k, v in image.items() if k not in TIME_COLUMNS}


def engine_for(url: str) -> Engine:
    return create_engine(url)
