"""Deliveries taken from the queue and not acknowledged yet, decoded, and where a batch
of them may end (at a legacy transaction boundary)."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from broker import Broker, BrokerError, Delivery
from new_domain.ingest import FailedMessage, LegacyChange, Parsed, Tombstone, parse_message

logger = logging.getLogger(__name__)


@dataclass
class Item:
    """A delivery and what it decoded to (or why it could not be)."""

    delivery: Delivery
    parsed: Parsed | None = None
    error: Exception | None = None
    after_end: bool = True  # a tombstone: did the message before it end a transaction?

    @property
    def ends_transaction(self) -> bool:
        if isinstance(self.parsed, Tombstone):  # it follows its delete, inside a transaction
            return self.after_end
        return not isinstance(self.parsed, LegacyChange) or self.parsed.ends_transaction

    def failed_message(self) -> FailedMessage:
        """What to record about the delivery when it cannot be applied."""
        message, change = self.delivery.message, self.parsed
        stream = change.stream if isinstance(change, LegacyChange) else None
        return FailedMessage(
            message_id=message.message_id or None,
            routing_key=message.routing_key,
            body=message.body,
            headers=dict(message.headers),
            message_type=message.type or None,
            content_type=message.content_type or None,
            stream=stream,
            position=_position(change),
        )


def _position(change: Parsed | None) -> int | None:
    """The position a failure is recorded at: none for what has none, nor for a row of a
    Debezium snapshot (all its rows share one position)."""
    if not isinstance(change, LegacyChange) or (change.debezium and change.op == "r"):
        return None
    return change.position


def decode(delivery: Delivery, tombstone: bytes | None = None) -> Item:
    """The delivery parsed (a body equal to ``tombstone`` is a tombstone)."""
    message = delivery.message
    try:
        parsed = parse_message(
            message.body,
            message.message_id or None,
            message.type or None,
            tombstone=tombstone,
            topic=message.routing_key or delivery.exchange,
        )
    except Exception as error:  # decoding is pure: any failure is the message's own
        return Item(delivery, error=error)
    return Item(delivery, parsed)


@dataclass
class Pending:
    """Deliveries taken from the queue and not acknowledged yet."""

    items: list[Item] = field(default_factory=list)
    since: float = 0.0  # when the oldest of them arrived
    tombstone: bytes | None = None  # the body a sink sends for a null value

    def extend(self, deliveries: Sequence[Delivery]) -> None:
        if not self.items:
            self.since = time.monotonic()
        for delivery in deliveries:
            item = decode(delivery, self.tombstone)
            item.after_end = not self.items or self.items[-1].ends_transaction
            self.items.append(item)

    def has_boundary(self) -> bool:
        """Does a legacy transaction end among them?"""
        return any(item.ends_transaction for item in reversed(self.items))

    def hand_back(self, broker: Broker) -> bool:
        """Requeue every pending delivery, in its original order, and forget them; False
        when the broker failed (closing the connection requeues them as well)."""
        items, self.items = self.items, []
        try:
            for item in reversed(items):
                broker.reject(item.delivery.delivery_tag, requeue=True)
        except BrokerError:
            return False
        return True

    def take(self, count: int) -> list[Item]:
        taken, self.items = self.items[:count], self.items[count:]
        self.since = time.monotonic()
        return taken

    def batch_length(self, batch_size: int, prefetch: int, transaction_hold: float) -> int:
        """How many to apply now: at most ``batch_size``, ending with a legacy
        transaction; 0 to wait for more. One legacy transaction larger than a batch is
        taken whole; an unfinished one once the prefetch window is full or it has
        waited ``transaction_hold`` seconds."""
        items = self.items
        if not items:
            return 0
        limit = min(len(items), batch_size)
        for count in range(limit, 0, -1):
            if items[count - 1].ends_transaction:
                return count
        for count in range(limit + 1, len(items) + 1):
            if items[count - 1].ends_transaction:
                return count
        waited = time.monotonic() - self.since
        if len(items) >= prefetch or waited >= transaction_hold:
            logger.info(
                "applying %d changes of an unfinished legacy transaction after %.1fs",
                len(items),
                waited,
            )
            return len(items)
        return 0
