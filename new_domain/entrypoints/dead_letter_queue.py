"""Inspecting and replaying the dead-letter queue ``<queue>.dlq``.

:func:`peek` takes the dead letters without acknowledging them; closing the broker
puts them back. :func:`replay` applies the chosen ones in stream order, each in its
own transaction, with the replay rule of
:mod:`new_domain.ingest.apply`: a dead-lettered position is applied
although it is below the stored position, exactly once (its ``dead_letter`` row is
resolved in the same transaction); anything else applied before is skipped. A
replayed message is acknowledged only after its transaction committed; one that fails
again goes back to the dead-letter queue with the new reason and one more attempt.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from broker import Broker, Delivery, Message
from new_domain.ingest import (
    ChangeFailed,
    FailedMessage,
    LegacyChange,
    apply_changes,
    describe_error,
    parse_message,
    publish_dead_letters,
)
from new_domain.service_layer.messagebus import MessageBus

logger = logging.getLogger(__name__)

PEEK_TIMEOUT = 0.5


def dead_letter_fields(message: Message) -> dict[str, Any]:
    """What a dead letter's headers say about it: its message id, routing key, stream
    position, attempts, when it first failed, and why (error type and reason)."""
    headers: dict[str, Any] = dict(message.headers)
    return {
        "message_id": message.message_id,
        "routing_key": message.routing_key,
        "seq": headers.get("x-legacy-seq"),
        "attempts": headers.get("x-attempts"),
        "first_failed_at": headers.get("x-first-failed-at"),
        "error_type": headers.get("x-error-type"),
        "error": headers.get("x-error"),
    }


def peek(broker: Broker, dead_letter_queue: str, limit: int) -> list[Delivery]:
    """Up to ``limit`` dead letters, unacknowledged (they return when ``broker`` closes)."""
    wanted = min(limit, broker.queue_depth(dead_letter_queue))
    taken: list[Delivery] = []
    while len(taken) < wanted:
        got = broker.get_batch(dead_letter_queue, limit, PEEK_TIMEOUT)
        if not got:
            break
        taken.extend(got)
    return taken


@dataclass
class ReplayReport:
    applied: list[str] = field(default_factory=list)
    already_applied: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (message id, reason)
    not_found: list[str] = field(default_factory=list)


def replay(
    bus: MessageBus,
    broker: Broker,
    queue: str,
    ids: Collection[str] = (),
    limit: int = 10_000,
) -> ReplayReport:
    """Replay the dead letters of ``queue`` (those with these message ids, or all)."""
    report = ReplayReport()
    deliveries = peek(broker, f"{queue}.dlq", limit)
    wanted = set(ids)
    chosen = [d for d in deliveries if not wanted or d.message.message_id in wanted]
    report.not_found = sorted(wanted - {d.message.message_id for d in chosen})
    parsed: list[tuple[Delivery, LegacyChange | Exception]] = []
    for delivery in chosen:
        message = delivery.message
        try:
            item = parse_message(message.body, message.message_id, message.type)
        except Exception as error:  # noqa: BLE001 - reported as failing again
            parsed.append((delivery, error))
            continue
        if isinstance(item, LegacyChange):
            parsed.append((delivery, item))
        else:
            broker.ack(delivery.delivery_tag)  # a heartbeat has nothing to replay
    parsed.sort(key=_stream_order)
    for delivery, entry in parsed:
        name = delivery.message.message_id or f"delivery {delivery.delivery_tag}"
        if isinstance(entry, Exception):
            _failed_again(bus, broker, queue, delivery, None, entry, report)
            continue
        try:
            done = apply_changes(bus, [entry], replay=True)
        except ChangeFailed as failed:
            _failed_again(bus, broker, queue, delivery, entry, failed.error, report)
            continue
        except Exception as error:
            if bus.uow.is_transient(error):
                raise
            _failed_again(bus, broker, queue, delivery, entry, error, report)
            continue
        broker.ack(delivery.delivery_tag)
        (report.applied if done.applied else report.already_applied).append(name)
        logger.info("replayed %s: %s", name, "applied" if done.applied else "applied before")
    return report


def _failed_again(
    bus: MessageBus,
    broker: Broker,
    queue: str,
    delivery: Delivery,
    change: LegacyChange | None,
    error: BaseException,
    report: ReplayReport,
) -> None:
    message = delivery.message
    failed = FailedMessage(
        message_id=message.message_id or None,
        routing_key=message.routing_key,
        body=message.body,
        headers={k: v for k, v in message.headers.items() if not _is_reason(k)},
        message_type=message.type or None,
        content_type=message.content_type or None,
        stream=change.stream if change else None,
        position=change.position if change else None,
    )
    with bus.uow as uow:
        uow.dead_letters.record_failure(failed, error, dead=True)
        uow.commit()
    publish_dead_letters(bus.uow, broker, f"{queue}.dlx")
    broker.ack(delivery.delivery_tag)
    report.failed.append((failed.key, describe_error(error)))
    logger.warning("replaying %s failed again: %s", failed.key, describe_error(error))


def _is_reason(header: str) -> bool:
    return header in ("x-error", "x-error-type", "x-first-failed-at", "x-attempts")


def _stream_order(entry: tuple[Delivery, LegacyChange | Exception]) -> tuple[str, int, int]:
    delivery, item = entry
    if isinstance(item, LegacyChange):
        return (item.stream, item.position, delivery.delivery_tag)
    return ("\uffff", 0, delivery.delivery_tag)  # undecodable ones last
