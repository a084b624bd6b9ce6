"""In-process broker for the embedded demo and unit tests (``BROKER_URL=memory://``).

Topic exchanges, durable-in-memory queues, alternate exchanges, per-session
unacknowledged deliveries that go back to their queue on reject or close. Everything
lives in this process: a bridge and a consumer only meet here when they share it.
"""

from __future__ import annotations

import itertools
import re
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from broker.errors import BrokerError, BrokerRefused
from broker.port import Delivery, Message, QueueSpec


def topic_matches(binding_key: str, routing_key: str) -> bool:
    """AMQP topic matching: ``*`` is one word, ``#`` is zero or more words."""
    parts = []
    for word in binding_key.split("."):
        if word == "#":
            parts.append(r"(?:[^.]+(?:\.[^.]+)*)?")
        elif word == "*":
            parts.append(r"[^.]+")
        else:
            parts.append(re.escape(word))
    pattern = r"\.".join(parts)
    # "#" may swallow the dots around it
    pattern = pattern.replace(r"\.(?:[^.]+(?:\.[^.]+)*)?", r"(?:\.[^.]+)*")
    pattern = pattern.replace(r"(?:[^.]+(?:\.[^.]+)*)?\.", r"(?:[^.]+\.)*")
    return re.fullmatch(pattern, routing_key) is not None


@dataclass
class _Queue:
    name: str
    ready: deque[tuple[str, Message, bool]] = field(default_factory=deque)
    consumers: set[int] = field(default_factory=set)  # sessions that took from it


@dataclass
class _Exchange:
    name: str
    kind: str  # "topic" | "fanout"
    alternate: str | None = None
    bindings: list[tuple[str, str]] = field(default_factory=list)  # (queue, key)


class _State:
    def __init__(self) -> None:
        self.lock = threading.Condition()
        self.exchanges: dict[str, _Exchange] = {}
        self.queues: dict[str, _Queue] = {}

    def route(self, exchange: str, message: Message, published_to: str | None = None) -> None:
        """Queue ``message``; deliveries name the exchange it was published to, even
        when an alternate exchange routed it (as RabbitMQ does)."""
        ex = self.exchanges.get(exchange)
        if ex is None:
            raise BrokerError(f"NOT_FOUND - no exchange {exchange!r}")
        targets = {
            q
            for q, key in ex.bindings
            if ex.kind == "fanout" or topic_matches(key, message.routing_key)
        }
        if not targets and ex.alternate is not None:
            self.route(ex.alternate, message, published_to or exchange)
            return
        for q in sorted(targets):
            self.queues[q].ready.append((published_to or exchange, message, False))


_registry: dict[str, _State] = {}
_registry_lock = threading.Lock()


def shared_memory_broker(url: str) -> MemoryBroker:
    """A new session on the process-wide in-memory broker named by ``url``."""
    with _registry_lock:
        state = _registry.setdefault(url, _State())
    return MemoryBroker(state)


def reset_memory_brokers() -> None:
    """Forget every in-memory broker (tests)."""
    with _registry_lock:
        _registry.clear()


class MemoryBroker:
    """One session (like one AMQP connection with one channel)."""

    def __init__(self, state: _State) -> None:
        self._state = state
        self._tags = itertools.count(1)
        self._unacked: dict[int, tuple[str, str, Message]] = {}  # tag -> (queue, exchange, msg)
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise BrokerError("connection closed")

    def declare_exchange(self, name: str, alternate_exchange: str | None = None) -> None:
        self._check_open()
        with self._state.lock:
            if alternate_exchange is not None:
                self._state.exchanges.setdefault(
                    alternate_exchange, _Exchange(alternate_exchange, "fanout")
                )
                self._state.queues.setdefault(alternate_exchange, _Queue(alternate_exchange))
                alt = self._state.exchanges[alternate_exchange]
                if (alternate_exchange, "#") not in alt.bindings:
                    alt.bindings.append((alternate_exchange, "#"))
            ex = self._state.exchanges.setdefault(
                name, _Exchange(name, "topic", alternate=alternate_exchange)
            )
            if alternate_exchange is not None and ex.alternate != alternate_exchange:
                # RabbitMQ refuses to change an exchange's arguments once it exists
                raise BrokerRefused(
                    f"PRECONDITION_FAILED - inequivalent arg 'alternate-exchange' for "
                    f"exchange {name!r}: received {alternate_exchange!r} but current is "
                    f"{ex.alternate!r}"
                )

    def declare_queue(self, spec: QueueSpec) -> None:
        self._check_open()
        for exchange, _ in spec.bindings:
            self.declare_exchange(exchange)
        with self._state.lock:
            self._state.queues.setdefault(spec.name, _Queue(spec.name))
            for exchange, key in spec.bindings:
                ex = self._state.exchanges[exchange]
                if (spec.name, key) not in ex.bindings:
                    ex.bindings.append((spec.name, key))

    def publish(self, exchange: str, messages: Sequence[Message]) -> None:
        self._check_open()
        with self._state.lock:
            for message in messages:
                self._state.route(exchange, message)
            self._state.lock.notify_all()

    def get_batch(self, queue: str, max_messages: int, timeout: float) -> list[Delivery]:
        self._check_open()
        deadline = time.monotonic() + timeout
        out: list[Delivery] = []
        with self._state.lock:
            q = self._state.queues.get(queue)
            if q is None:
                raise BrokerError(f"NOT_FOUND - no queue {queue!r}")
            q.consumers.add(id(self))
            # the prefetch window: unacknowledged deliveries of this queue count against it
            room = max_messages - sum(1 for name, _, _ in self._unacked.values() if name == queue)
            while not q.ready or room <= 0:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return out
                self._state.lock.wait(remaining)
            while q.ready and len(out) < room:
                exchange, message, redelivered = q.ready.popleft()
                tag = next(self._tags)
                self._unacked[tag] = (queue, exchange, message)
                out.append(Delivery(message, tag, redelivered, exchange))
        return out

    def ack(self, delivery_tag: int, multiple: bool = False) -> None:
        self._check_open()
        with self._state.lock:
            if delivery_tag not in self._unacked:
                raise BrokerError(f"PRECONDITION_FAILED - unknown delivery tag {delivery_tag}")
            tags = [t for t in self._unacked if t <= delivery_tag] if multiple else [delivery_tag]
            for tag in tags:
                del self._unacked[tag]

    def reject(self, delivery_tag: int, requeue: bool) -> None:
        self._check_open()
        with self._state.lock:
            entry = self._unacked.pop(delivery_tag, None)
            if entry is None:
                raise BrokerError(f"PRECONDITION_FAILED - unknown delivery tag {delivery_tag}")
            queue, exchange, message = entry
            if requeue and queue in self._state.queues:
                self._state.queues[queue].ready.appendleft((exchange, message, True))
                self._state.lock.notify_all()

    def queue_depth(self, queue: str) -> int:
        self._check_open()
        with self._state.lock:
            q = self._state.queues.get(queue)
            if q is None:
                raise BrokerError(f"NOT_FOUND - no queue {queue!r}")
            return len(q.ready)

    def queue_consumers(self, queue: str) -> int:
        self._check_open()
        with self._state.lock:
            q = self._state.queues.get(queue)
            if q is None:
                raise BrokerError(f"NOT_FOUND - no queue {queue!r}")
            return len(q.consumers)

    def delete_queue(self, queue: str) -> None:
        self._check_open()
        with self._state.lock:
            self._state.queues.pop(queue, None)
            for ex in self._state.exchanges.values():
                ex.bindings = [(q, k) for q, k in ex.bindings if q != queue]

    def close(self) -> None:
        if self._closed:
            return
        with self._state.lock:
            # unacked deliveries go back in delivery order, ahead of newer ones
            for tag in sorted(self._unacked, reverse=True):
                queue, exchange, message = self._unacked[tag]
                if queue in self._state.queues:
                    self._state.queues[queue].ready.appendleft((exchange, message, True))
            self._unacked.clear()
            for q in self._state.queues.values():
                q.consumers.discard(id(self))
            self._state.lock.notify_all()
        self._closed = True
