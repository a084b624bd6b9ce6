"""Change events: the Debezium-shaped envelope and its AMQP message.

The envelope is the contract with consumers, described by
``docs/schemas/legacy-cdc-change.schema.json``. Row images are passed through as the
database rendered them (PostgreSQL ``to_jsonb``, SQLite ``json_object``, MariaDB
``JSON_OBJECT``). Snapshot rows (op ``r``) carry ``source.snapshot`` true, or ``"last"``
on the final row of a table's snapshot.

The ``transaction`` block (Debezium's) names the legacy transaction and the event's place
in it; it is null for rows captured without a transaction id. On SQLite its ``id`` names
a commit group (see :mod:`legacy_bridge.capture_sqlite`) and ``source.txid`` is null.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from broker import Message
from legacy_bridge.change_log import Change

SOURCE_VERSION = "0.1.0"
MESSAGE_TYPE = "change"


@dataclass(frozen=True)
class Source:
    """Where events come from: constant for one relay."""

    connector: str
    name: str
    db: str
    schema: str | None
    install_id: str
    real_txids: bool = True
    """False when ``txid`` names a commit group, not a transaction (SQLite)."""


def epoch_ms(moment: datetime) -> int:
    """Milliseconds since the epoch; a naive datetime is taken as UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def change_event(change: Change, source: Source, now: datetime) -> dict[str, Any]:
    """The envelope for ``change``, published at ``now``."""
    snapshot: bool | str = False
    if change.op == "r":
        snapshot = "last" if change.snapshot_last else True
    txid = None if change.txid is None else str(change.txid)
    return {
        "before": change.before,
        "after": change.after,
        "op": change.op,
        "ts_ms": epoch_ms(now),
        "source": {
            "version": SOURCE_VERSION,
            "connector": source.connector,
            "name": source.name,
            "db": source.db,
            "schema": source.schema,
            "table": change.table_name,
            "txid": txid if source.real_txids else None,
            "seq": change.pos,
            "change_id": change.change_id,
            "ts_ms": epoch_ms(change.captured_at),
            "snapshot": snapshot,
        },
        "transaction": _transaction(change, txid),
    }


def _transaction(change: Change, txid: str | None) -> dict[str, Any] | None:
    if txid is None or change.tx_order is None:
        return None
    return {
        "id": txid,
        "total_order": change.tx_order,
        "data_collection_order": change.tx_table_order,
        "last": bool(change.tx_last),
    }


def message_id(install_id: str, change_id: int) -> str:
    """Stable across re-sends: the install and the change row."""
    return f"{install_id}:{change_id}"


def encode(body: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON."""
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def change_message(change: Change, source: Source, now: datetime) -> Message:
    """The AMQP message carrying ``change``'s envelope."""
    body = encode(change_event(change, source, now))
    return Message(
        routing_key=f"{change.table_name}.{change.op}",
        body=body,
        message_id=message_id(source.install_id, change.change_id),
        type=MESSAGE_TYPE,
        content_type="application/json",
        headers={"x-legacy-table": change.table_name, "x-legacy-seq": change.pos},
        timestamp=int(now.timestamp()),
    )
