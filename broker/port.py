"""The transport port: what the bridge and the consumer need from a broker."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class Message:
    """A persistent message. ``message_id`` is stable across re-sends of the same fact."""

    routing_key: str
    body: bytes
    message_id: str
    type: str = "change"
    content_type: str = "application/json"
    headers: Mapping[str, Any] = field(default_factory=dict)
    timestamp: int | None = None  # seconds since the epoch, as AMQP carries it


@dataclass(frozen=True)
class Delivery:
    """A message taken from a queue; ack or reject it through the same broker."""

    message: Message
    delivery_tag: int
    redelivered: bool
    exchange: str


@dataclass(frozen=True)
class QueueSpec:
    """A durable queue bound to topic exchanges.

    ``bindings`` are ``(exchange, binding_key)`` pairs; the exchanges are declared too.
    ``single_active_consumer`` keeps per-queue order when several consumers run. The
    queue's type (quorum or classic) is the broker's setting (``queue_type`` in the URL).
    """

    name: str
    bindings: Sequence[tuple[str, str]] = ()
    single_active_consumer: bool = True
    dead_letter_exchange: str | None = None
    """Where the broker itself dead-letters a message (a quorum queue's delivery limit);
    the kit's consumers dead-letter what they cannot apply to the same exchange."""


class Broker(Protocol):
    """One connection's worth of broker. Not shared between threads."""

    def declare_exchange(self, name: str, alternate_exchange: str | None = None) -> None:
        """Declare a durable topic exchange (idempotent).

        With ``alternate_exchange``, messages no queue is bound for go there instead of
        being dropped; the alternate exchange is declared as a fanout exchange with a
        durable queue of the same name bound to it.
        """

    def declare_queue(self, spec: QueueSpec) -> None:
        """Declare a durable queue and its bindings (idempotent)."""

    def publish(self, exchange: str, messages: Sequence[Message]) -> None:
        """Publish persistently and return once the broker confirmed every message.

        Many messages are in flight at once; raises :class:`BrokerError` if any was
        nacked or the connection was lost (then some may have been delivered: re-send
        them with the same ``message_id``).
        """

    def get_batch(self, queue: str, max_messages: int, timeout: float) -> list[Delivery]:
        """Take up to ``max_messages`` deliveries, waiting at most ``timeout`` seconds
        for the first one and returning what has arrived by then (possibly nothing).

        Deliveries stay unacknowledged until :meth:`ack` or :meth:`reject`; the
        prefetch window is ``max_messages``.
        """

    def ack(self, delivery_tag: int, multiple: bool = False) -> None:
        """Acknowledge one delivery, or with ``multiple`` every one up to it."""

    def reject(self, delivery_tag: int, requeue: bool) -> None:
        """Reject one delivery; with ``requeue`` it is delivered again later."""

    def queue_depth(self, queue: str) -> int:
        """Messages ready in ``queue`` (not counting unacknowledged ones)."""

    def queue_consumers(self, queue: str) -> int:
        """Consumers taking messages from ``queue`` now (sessions of any process)."""

    def delete_queue(self, queue: str) -> None:
        """Delete a queue (used by tests and uninstall)."""

    def close(self) -> None:
        """Close the connection; unacknowledged deliveries go back to their queues."""
