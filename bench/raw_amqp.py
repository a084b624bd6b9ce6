"""Baselines on plain pika, with none of the kit's code in the way.

:func:`publish_stream` publishes persistent messages on an asynchronous
``SelectConnection`` with publisher confirms streamed back (a window of messages in
flight, no per-message wait): the fastest confirmed publishing pika offers, which the
kit's relay is compared with. :func:`round_trip_latencies` measures publish-to-deliver
time through one durable queue at a steady rate.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pika
from pika.channel import Channel
from pika.connection import Connection

from broker.rabbitmq import queue_arguments, split_queue_type

DEFAULT_WINDOW = 1000


class RawAmqpError(Exception):
    """The broker refused a message or the connection failed during a baseline."""


@dataclass(frozen=True)
class RawMessage:
    routing_key: str
    body: bytes
    message_id: str
    headers: Mapping[str, Any] = field(default_factory=dict)


def declare_queue(
    amqp_url: str, exchange: str, queue: str, *, as_the_relay_does: bool = False
) -> None:
    """A durable topic exchange with a durable queue bound to it with ``#``, of the type
    the kit declares (``queue_type`` in the URL; quorum by default).

    ``as_the_relay_does``: declare the exchange with the alternate exchange
    ``<exchange>.unrouted`` (and its queue) the way the relay declares it, so the relay
    can publish to it afterwards.
    """
    url, queue_type = split_queue_type(amqp_url)
    typed = queue_arguments(queue_type, None)  # the kit's type: the same broker work
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        arguments = None
        if as_the_relay_does:
            unrouted = f"{exchange}.unrouted"
            channel.exchange_declare(unrouted, exchange_type="fanout", durable=True)
            channel.queue_declare(unrouted, durable=True, arguments=typed)
            channel.queue_bind(unrouted, unrouted, routing_key="")
            arguments = {"alternate-exchange": unrouted}
        channel.exchange_declare(exchange, exchange_type="topic", durable=True, arguments=arguments)
        channel.queue_declare(queue, durable=True, arguments=typed)
        channel.queue_bind(queue, exchange, routing_key="#")
    finally:
        connection.close()


def delete_queue(amqp_url: str, queue: str) -> None:
    """Delete ``queue`` and the messages in it."""
    connection = pika.BlockingConnection(pika.URLParameters(split_queue_type(amqp_url)[0]))
    try:
        connection.channel().queue_delete(queue)
    finally:
        connection.close()


class _StreamPublisher:
    """Publishes ``messages`` with up to ``window`` unconfirmed; one ioloop, one thread."""

    def __init__(
        self, amqp_url: str, exchange: str, messages: Sequence[RawMessage], window: int
    ) -> None:
        self._params = pika.URLParameters(split_queue_type(amqp_url)[0])
        self._exchange = exchange
        self._messages = messages
        self._window = window
        self._next = 0
        self._tags: deque[int] = deque()  # unconfirmed delivery tags, in order
        self._confirmed = 0
        self._channel: Channel | None = None
        self._connection: pika.SelectConnection | None = None
        self._error: BaseException | None = None
        self.started = 0.0
        self.finished = 0.0

    def run(self) -> float:
        self._connection = pika.SelectConnection(
            self._params,
            on_open_callback=self._on_open,
            on_open_error_callback=self._on_error,
            on_close_callback=self._on_closed,
        )
        self._connection.ioloop.start()
        if self._error is not None:
            raise RawAmqpError(str(self._error))
        if self._confirmed < len(self._messages):
            raise RawAmqpError(f"only {self._confirmed} of {len(self._messages)} confirmed")
        return self.finished - self.started

    def _on_open(self, connection: Connection) -> None:
        connection.channel(on_open_callback=self._on_channel)

    def _on_channel(self, channel: Channel) -> None:
        self._channel = channel
        channel.confirm_delivery(self._on_confirm, callback=self._on_select_ok)

    def _on_select_ok(self, _frame: Any) -> None:
        self.started = time.perf_counter()
        self._pump()

    def _pump(self) -> None:
        assert self._channel is not None
        while self._next < len(self._messages) and len(self._tags) < self._window:
            message = self._messages[self._next]
            self._next += 1
            properties = pika.BasicProperties(
                delivery_mode=2,
                content_type="application/json",
                type="change",
                message_id=message.message_id,
                headers=dict(message.headers),
            )
            self._channel.basic_publish(
                self._exchange, message.routing_key, message.body, properties
            )
            self._tags.append(self._next)  # delivery tags count from 1

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        if isinstance(method, pika.spec.Basic.Nack):
            self._fail(RawAmqpError(f"broker nacked delivery {method.delivery_tag}"))
            return
        tag = int(method.delivery_tag)
        if method.multiple:
            while self._tags and self._tags[0] <= tag:
                self._tags.popleft()
                self._confirmed += 1
        else:
            self._tags.remove(tag)
            self._confirmed += 1
        if self._confirmed == len(self._messages):
            self.finished = time.perf_counter()
            self._close()
        else:
            self._pump()

    def _fail(self, error: BaseException) -> None:
        self._error = error
        self._close()

    def _close(self) -> None:
        if self._connection is not None and self._connection.is_open:
            self._connection.close()

    def _on_error(self, _connection: Connection, error: BaseException) -> None:
        self._error = error
        assert self._connection is not None
        self._connection.ioloop.stop()

    def _on_closed(self, _connection: Connection, reason: BaseException) -> None:
        if self._confirmed < len(self._messages) and self._error is None:
            self._error = reason
        assert self._connection is not None
        self._connection.ioloop.stop()


def publish_stream(
    amqp_url: str, exchange: str, messages: Sequence[RawMessage], window: int = DEFAULT_WINDOW
) -> float:
    """Publish every message persistently, confirms streamed; seconds from first publish
    to last confirm."""
    if not messages:
        return 0.0
    return _StreamPublisher(amqp_url, exchange, messages, window).run()


def round_trip_latencies(
    amqp_url: str,
    exchange: str,
    queue: str,
    *,
    rate: float,
    duration: float,
    body_size: int,
    per_tick: int,
) -> list[float]:
    """Seconds from publish to delivery of each message, published at ``rate`` per second
    in ticks of ``per_tick`` (persistent, confirmed; the consumer acks every message)."""
    declare_queue(amqp_url, exchange, queue)
    latencies: list[float] = []
    expected = max(1, int(rate * duration / per_tick)) * per_tick
    ready = threading.Event()
    consumer_error: list[BaseException] = []

    def consume() -> None:
        try:
            connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
            channel = connection.channel()
            channel.basic_qos(prefetch_count=1000)
            ready.set()
            deadline = time.monotonic() + duration + 30
            for method, properties, _body in channel.consume(queue, inactivity_timeout=0.5):
                now = time.time()
                if method is not None:
                    latencies.append(now - float(properties.headers["sent"]))
                    channel.basic_ack(method.delivery_tag)
                if len(latencies) >= expected or time.monotonic() > deadline:
                    break
            channel.cancel()
            connection.close()
        except BaseException as error:  # reported by the caller
            consumer_error.append(error)
            ready.set()

    thread = threading.Thread(target=consume, name="baseline-consumer", daemon=True)
    thread.start()
    ready.wait(30)
    padding = b"x" * max(0, body_size - 40)
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        interval = per_tick / rate
        start = time.monotonic()
        for tick in range(expected // per_tick):
            wait = start + tick * interval - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            for _ in range(per_tick):
                sent = time.time()
                body = json.dumps({"sent": sent, "pad": padding.decode()}).encode()
                channel.basic_publish(
                    exchange,
                    "baseline.c",
                    body,
                    pika.BasicProperties(delivery_mode=2, headers={"sent": repr(sent)}),
                )
    finally:
        connection.close()
    thread.join(duration + 40)
    if consumer_error:
        raise RawAmqpError(f"baseline consumer failed: {consumer_error[0]}")
    return latencies
