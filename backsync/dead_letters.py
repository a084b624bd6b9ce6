"""Back-sync's dead letters (``<queue>.dlq``): listed, and sent back to be written again.

A decision is dead-lettered when legacy's state refuses it (an unknown batch, a line
that is not there), when its events cannot be read or stop arriving, or after
``max_attempts`` unexpected failures. Once the cause is fixed (the missing row restored,
the mimic corrected), :func:`replay` sends the chosen dead letters back to back-sync's own
queue through the exchange ``<queue>.replay`` (bound to the queue alone, so nobody else
reading ``new_domain.events`` sees them twice), with publisher confirms, and only then
acknowledges them in the dead-letter queue. The running back-sync writes them as any
decision: exactly once (a decision written before is acknowledged without writing), and
one that fails again is dead-lettered again with its new reason.

A decision's events travel together: choosing one of them (by message id or decision
id) replays every dead letter of the same decision, so it arrives whole.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from broker import Broker, Delivery, Message

PEEK_TIMEOUT = 0.5
REASON_HEADERS = ("x-error", "x-error-type", "x-failed-at")


def replay_exchange(queue: str) -> str:
    return f"{queue}.replay"


@dataclass(frozen=True)
class DeadLetter:
    """One dead letter as an operator reads it."""

    message_id: str
    routing_key: str
    decision_id: str | None
    route: str | None
    sku: str | None
    error_type: str
    error: str
    failed_at: str
    replays: int

    def line(self) -> str:
        what = (
            f"decision {self.decision_id} ({self.route} {self.sku})"
            if self.decision_id
            else "no decision"
        )
        again = f", replayed {self.replays}x" if self.replays else ""
        return (
            f"{self.message_id or '-'}  {self.routing_key}  {what}  failed {self.failed_at}"
            f"{again}  {self.error_type}: {self.error}"
        )


@dataclass
class ReplayReport:
    replayed: list[str] = field(default_factory=list)  # message ids, in queue order
    decisions: list[str] = field(default_factory=list)
    not_found: list[str] = field(default_factory=list)


def peek(broker: Broker, dead_letter_queue: str, limit: int) -> list[Delivery]:
    """Up to ``limit`` dead letters, unacknowledged (they return when ``broker`` closes)."""
    wanted = min(limit, broker.queue_depth(dead_letter_queue))
    taken: list[Delivery] = []
    while len(taken) < wanted:
        got = broker.get_batch(dead_letter_queue, min(limit, 65535), PEEK_TIMEOUT)
        if not got:
            break
        taken.extend(got)
    return taken[:wanted]


def describe(message: Message) -> DeadLetter:
    headers: dict[str, Any] = dict(message.headers)
    block = _decision_block(message)
    return DeadLetter(
        message_id=message.message_id or "",
        routing_key=message.routing_key,
        decision_id=_text(block.get("id")),
        route=_text(block.get("route")),
        sku=_text(block.get("sku")),
        error_type=str(headers.get("x-error-type", "?")),
        error=str(headers.get("x-error", "?")),
        failed_at=str(headers.get("x-failed-at", "?")),
        replays=_int(headers.get("x-replays")),
    )


def replay(
    broker: Broker,
    queue: str,
    ids: Collection[str] = (),
    limit: int = 10_000,
    now: datetime | None = None,
) -> ReplayReport:
    """Send the dead letters of ``queue`` (those named by ``ids``, message or decision
    ids, with the rest of their decisions; or all) back to the queue; then acknowledge
    them. Nothing is acknowledged unless the broker confirmed every one sent back."""
    report = ReplayReport()
    deliveries = peek(broker, f"{queue}.dlq", limit)
    described = [(d, describe(d.message)) for d in deliveries]
    wanted = set(ids)
    found = {
        key for _, letter in described for key in (letter.message_id, letter.decision_id) if key
    }
    report.not_found = sorted(wanted - found)
    chosen_decisions = {
        letter.decision_id
        for _, letter in described
        if letter.decision_id and (letter.message_id in wanted or letter.decision_id in wanted)
    }
    chosen = [
        (delivery, letter)
        for delivery, letter in described
        if not wanted or letter.message_id in wanted or letter.decision_id in chosen_decisions
    ]
    taken = {delivery.delivery_tag for delivery, _ in chosen}
    for delivery in deliveries:
        if delivery.delivery_tag not in taken:
            broker.reject(delivery.delivery_tag, requeue=True)  # stays a dead letter
    if not chosen:
        return report
    at = (now or datetime.now(UTC)).isoformat()
    broker.publish(replay_exchange(queue), [_again(d.message, at) for d, _ in chosen])
    for delivery, letter in chosen:
        broker.ack(delivery.delivery_tag)
        report.replayed.append(letter.message_id)
        if letter.decision_id and letter.decision_id not in report.decisions:
            report.decisions.append(letter.decision_id)
    return report


def _again(message: Message, at: str) -> Message:
    headers = {k: v for k, v in message.headers.items() if k not in REASON_HEADERS}
    headers["x-replays"] = _int(message.headers.get("x-replays")) + 1
    headers["x-replayed-at"] = at
    return Message(
        routing_key=message.routing_key,
        body=message.body,
        message_id=message.message_id,
        type=message.type,
        content_type=message.content_type,
        headers=headers,
        timestamp=message.timestamp,
    )


def _decision_block(message: Message) -> dict[str, Any]:
    try:
        body = json.loads(message.body)
    except (ValueError, UnicodeDecodeError):
        return {}
    block = body.get("decision") if isinstance(body, dict) else None
    return block if isinstance(block, dict) else {}


def _text(value: object) -> str | None:
    if value is None or isinstance(value, bool | dict | list):
        return None
    return str(value)[:255]


def _int(value: object) -> int:
    try:
        return max(0, int(str(value))) if value is not None else 0
    except ValueError:
        return 0
