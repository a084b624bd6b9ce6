"""Deliveries taken from the queue and not acknowledged yet, decoded, and where a batch
of them may end (at a legacy transaction boundary)."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from broker import Delivery
from new_domain.ingest import FailedMessage, Heartbeat, LegacyChange, parse_message

logger = logging.getLogger(__name__)


@dataclass
class Item:
    """A delivery and what it decoded to (or why it could not be)."""

    delivery: Delivery
    parsed: LegacyChange | Heartbeat | None = None
    error: Exception | None = None

    @property
    def ends_transaction(self) -> bool:
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
            position=change.position if isinstance(change, LegacyChange) else None,
        )


def decode(delivery: Delivery) -> Item:
    message = delivery.message
    try:
        parsed = parse_message(message.body, message.message_id, message.type)
    except Exception as error:  # decoding is pure: any failure is the message's own
        return Item(delivery, error=error)
    return Item(delivery, parsed)


@dataclass
class Pending:
    """Deliveries taken from the queue and not acknowledged yet."""

    items: list[Item] = field(default_factory=list)
    since: float = 0.0  # when the oldest of them arrived

    def extend(self, deliveries: Sequence[Delivery]) -> None:
        if not self.items:
            self.since = time.monotonic()
        self.items.extend(decode(delivery) for delivery in deliveries)

    def has_boundary(self) -> bool:
        """Does a legacy transaction end among them?"""
        return any(item.ends_transaction for item in reversed(self.items))

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
