"""Heartbeats: what the relay publishes on ``legacy.cdc`` while there is nothing to relay.

They tell consumers the pipeline is alive and how fresh the stream is while legacy is
quiet: ``last_seq`` is the last position the broker confirmed, ``last_commit_ts_ms`` the
capture time of the newest change confirmed so far (every change captured before it has a
position at or below ``last_seq``). Described by
``docs/schemas/legacy-cdc-heartbeat.schema.json``. Heartbeats never take a position.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from broker import Message
from legacy_bridge.envelope import SOURCE_VERSION, Source, encode, epoch_ms

MESSAGE_TYPE = "heartbeat"
ROUTING_KEY = "heartbeat"


def heartbeat_event(
    source: Source, now: datetime, last_commit: datetime | None, last_seq: int
) -> dict[str, Any]:
    """The heartbeat body, sent at ``now``."""
    return {
        "type": MESSAGE_TYPE,
        "ts_ms": epoch_ms(now),
        "source": {
            "version": SOURCE_VERSION,
            "connector": source.connector,
            "name": source.name,
            "db": source.db,
        },
        "last_commit_ts_ms": None if last_commit is None else epoch_ms(last_commit),
        "last_seq": last_seq,
    }


def heartbeat_message(
    source: Source, now: datetime, last_commit: datetime | None, last_seq: int
) -> Message:
    """The persistent AMQP message carrying a heartbeat."""
    event = heartbeat_event(source, now, last_commit, last_seq)
    return Message(
        routing_key=ROUTING_KEY,
        body=encode(event),
        message_id=f"{source.install_id}:hb:{event['ts_ms']}",
        type=MESSAGE_TYPE,
        content_type="application/json",
        timestamp=int(now.timestamp()),
    )
