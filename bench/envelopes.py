"""Change events built straight from the change table, for the raw publishing baseline.

The bodies follow the ``legacy.cdc`` envelope of ``docs/schemas/legacy-cdc-change.schema.json``
(Debezium-shaped, with the transaction block), so the baseline publishes payloads of the
same shape and size as the relay, without running any of the relay's code.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import psycopg

from bench.raw_amqp import RawMessage


def _ms(moment: datetime) -> int:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def change_messages(dsn: str, install_id: str = "bench") -> list[RawMessage]:
    """One message per ``strangler_change`` row, in ``change_id`` order."""
    now_ms = _ms(datetime.now(UTC))
    with psycopg.connect(dsn) as conn:
        db = conn.execute("SELECT current_database()").fetchone()
        rows = conn.execute(
            "SELECT change_id, txid, table_name, op, before, after, captured_at "
            "FROM strangler_change ORDER BY change_id"
        ).fetchall()
    database = str(db[0]) if db else ""
    order_in_tx: dict[Any, int] = {}
    messages = []
    for seq, (change_id, txid, table, op, before, after, captured_at) in enumerate(rows, 1):
        order_in_tx[txid] = order_in_tx.get(txid, 0) + 1
        envelope = {
            "before": before,
            "after": after,
            "op": op,
            "ts_ms": now_ms,
            "source": {
                "version": "0.1.0",
                "connector": "postgresql",
                "name": "legacy",
                "db": database,
                "schema": "public",
                "table": table,
                "txid": None if txid is None else str(txid),
                "seq": seq,
                "change_id": change_id,
                "ts_ms": _ms(captured_at),
                "snapshot": False,
            },
            "transaction": {
                "id": str(txid),
                "total_order": order_in_tx[txid],
                "data_collection_order": order_in_tx[txid],
                "last": False,
            },
        }
        body = json.dumps(envelope, separators=(",", ":"), ensure_ascii=False).encode()
        messages.append(
            RawMessage(
                routing_key=f"{table}.{op}",
                body=body,
                message_id=f"{install_id}:{change_id}",
                headers={"x-legacy-table": table, "x-legacy-seq": seq},
            )
        )
    return messages
