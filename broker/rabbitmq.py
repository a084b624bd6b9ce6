"""RabbitMQ adapter of the broker port, over pika's ``BlockingConnection``.

One connection, three channels with separate fates:

- *admin*: declarations, queue depth, deletes. A refused declaration closes only this
  channel; it is reopened on next use.
- *publisher*: in confirm mode, with many messages in flight (see :meth:`publish`).
  Reopened after any failed publish, so delivery-tag counting starts afresh.
- *consumer*: one consumer per queue read with :meth:`RabbitBroker.get_batch`; its
  delivery tags are the ones callers ack. If the broker closes it, the tags callers
  hold mean nothing any more (a new channel counts from 1 again), so the whole broker
  is closed and callers build a new one.

Losing the connection closes the broker too; the unacknowledged deliveries go back to
their queues on the server side.
"""

from __future__ import annotations

import functools
import logging
import time
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, parse_qsl, urlencode, urlsplit, urlunsplit

import pika
from pika import exceptions as pika_exceptions
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection

from broker.errors import BrokerError, BrokerRefused
from broker.port import Delivery, Message, QueueSpec

DEFAULT_HEARTBEAT = 30
DEFAULT_BLOCKED_CONNECTION_TIMEOUT = 60.0
DEFAULT_CONFIRM_TIMEOUT = 30.0
DEFAULT_CONFIRM_WINDOW = 1000
FLUSH_EVERY = 100  # messages encoded between two trips through the I/O loop
MAX_PREFETCH = 65535  # basic.qos prefetch-count is an AMQP short

_PIKA_ERRORS: tuple[type[BaseException], ...] = (
    pika_exceptions.AMQPError,
    pika_exceptions.ChannelError,
    pika_exceptions.ReentrancyError,
    OSError,
)
log = logging.getLogger(__name__)

_NOT_FOUND = 404
_PRECONDITION_FAILED = 406


QUEUE_TYPES = ("quorum", "classic")
DEFAULT_QUEUE_TYPE = "quorum"
DELIVERY_LIMIT = 1000
"""Deliveries of one message to a quorum queue's consumers before the broker dead-letters
it (a consumer crashing on it again and again); RabbitMQ 4 would otherwise drop it after
20. The kit's consumers dead-letter what they cannot apply long before that."""
QUEUE_TYPE_DOC = "docs/rabbitmq.md#queue-types"


def node_urls(url: str) -> list[str]:
    """The nodes of a cluster named in one ``BROKER_URL``: URLs separated by commas
    (``amqp://u:p@rabbit-1/%2F,amqp://u:p@rabbit-2/%2F``), tried in that order."""
    urls = [part.strip() for part in url.split(",")]
    if any(not u.startswith(("amqp://", "amqps://")) for u in urls):
        raise BrokerError("invalid BROKER_URL: every node's URL must start with amqp://")
    return urls


def split_queue_type(url: str) -> tuple[str, str]:
    """``url`` without its ``queue_type`` query argument, and that argument (``quorum``,
    the default, or ``classic``): the type of every queue this adapter declares. For a
    list of nodes (:func:`node_urls`), the first node's that says."""
    if "," in url:
        urls = node_urls(url)
        found = [split_queue_type(u) for u in urls]
        named = {t for u, (_, t) in zip(urls, found, strict=True) if "queue_type=" in u}
        if len(named) > 1:
            raise BrokerError("invalid BROKER_URL: the nodes' URLs name different queue types")
        return ",".join(u for u, _ in found), named.pop() if named else DEFAULT_QUEUE_TYPE
    parts = urlsplit(url)
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    given = [value for key, value in pairs if key == "queue_type"]
    queue_type = given[-1] if given else DEFAULT_QUEUE_TYPE
    if queue_type not in QUEUE_TYPES:
        raise BrokerError(
            f"invalid BROKER_URL: queue_type must be quorum or classic, got {queue_type[:40]!r}"
        )
    query = urlencode([(key, value) for key, value in pairs if key != "queue_type"])
    return urlunsplit(parts._replace(query=query)), queue_type


def queue_arguments(queue_type: str, dead_letter_exchange: str | None) -> dict[str, Any]:
    """The arguments a queue of ``queue_type`` is declared with: a quorum queue gives a
    message that reached the delivery limit to ``dead_letter_exchange`` (at least once:
    the broker keeps it until the dead-letter queue confirmed it) instead of dropping it."""
    if queue_type == "classic":
        return {"x-queue-type": "classic"}
    arguments: dict[str, Any] = {"x-queue-type": "quorum", "x-delivery-limit": DELIVERY_LIMIT}
    if dead_letter_exchange is not None:
        arguments |= {
            "x-dead-letter-exchange": dead_letter_exchange,
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        }
    return arguments


_REFUSALS: tuple[type[BaseException], ...] = (
    pika_exceptions.ProbableAuthenticationError,
    pika_exceptions.ProbableAccessDeniedError,
    pika_exceptions.AuthenticationError,
)
"""The broker turned the credentials or the virtual host down: retrying cannot help."""


def connection_parameters(url: str) -> Any:
    """``pika.URLParameters`` for ``url`` with this adapter's defaults.

    Query arguments of the URL (``heartbeat``, ``blocked_connection_timeout``,
    ``connection_attempts``) win over the defaults; ``queue_type`` is this adapter's
    own (:func:`split_queue_type`).
    """
    url, _ = split_queue_type(url)
    if "," in url:
        raise BrokerError("invalid BROKER_URL: one node's URL expected here")
    try:
        params = pika.URLParameters(url)
    except (ValueError, TypeError) as exc:
        raise BrokerRefused(f"invalid BROKER_URL: {_one_line(str(exc))}") from None
    given = parse_qs(urlsplit(url).query)
    if "heartbeat" not in given:
        params.heartbeat = DEFAULT_HEARTBEAT
    if "blocked_connection_timeout" not in given:
        params.blocked_connection_timeout = DEFAULT_BLOCKED_CONNECTION_TIMEOUT
    if "connection_attempts" not in given:
        params.connection_attempts = 1
    return params


class _InFlight:
    """Delivery tags published and not confirmed yet, in publishing order.

    Tags are handed out in increasing order and the broker mostly confirms a prefix
    (a multiple-ack up to a tag), so a deque of tags with the few confirmed out of order
    on the side makes each confirm cost what it settles, not the window's size.
    """

    def __init__(self) -> None:
        self._tags: deque[int] = deque()
        self._settled_early: set[int] = set()

    def __len__(self) -> int:
        return len(self._tags) - len(self._settled_early)

    def add(self, tag: int) -> None:
        self._tags.append(tag)

    def settle(self, tag: int, multiple: bool) -> int:
        """Mark ``tag`` (and with ``multiple`` every tag up to it) confirmed; how many
        were still unconfirmed."""
        before = len(self)
        tags, early = self._tags, self._settled_early
        if multiple:
            while tags and tags[0] <= tag:
                early.discard(tags.popleft())
        elif tags and tag >= tags[0] and tag not in early and tag <= tags[-1]:
            early.add(tag)
        while tags and tags[0] in early:
            early.discard(tags.popleft())
        return before - len(self)


@dataclass
class _Consumer:
    tag: str
    prefetch: int


class RabbitBroker:
    """The :class:`broker.Broker` port on one RabbitMQ connection. One thread only."""

    def __init__(
        self,
        url: str,
        *,
        confirm_timeout: float = DEFAULT_CONFIRM_TIMEOUT,
        confirm_window: int = DEFAULT_CONFIRM_WINDOW,
    ) -> None:
        """Connect to ``url`` (``amqp://user:password@host:port/vhost``, or several
        nodes' URLs separated by commas, tried in turn).

        ``confirm_timeout``: a publish fails when no confirm arrived for that long.
        ``confirm_window``: the most messages in flight before waiting for confirms.
        """
        if confirm_window < 1:
            raise ValueError("confirm_window must be at least 1")
        plain, self.queue_type = split_queue_type(url)
        self._queue_type_named = "queue_type=" in url
        self._kept: set[str] = set()
        nodes = [connection_parameters(u) for u in node_urls(plain)]
        self._confirm_timeout = confirm_timeout
        self._window = confirm_window
        self._closed = False
        self._admin: BlockingChannel | None = None
        self._publisher: BlockingChannel | None = None
        self._consumer_channel: BlockingChannel | None = None
        self._channel_errors: dict[int, BaseException] = {}
        # publisher confirms
        self._publisher_generation = 0
        self._next_publish_tag = 1
        self._unconfirmed = _InFlight()
        self._confirmed = 0
        self._nacked = 0
        self._wake_at_or_below = -1
        # consumers
        self._qos: int | None = None
        self._consumers: dict[str, _Consumer] = {}
        self._buffers: dict[str, deque[Delivery]] = {}
        self._handed_out: dict[int, str] = {}  # delivery tag -> queue
        where = ", ".join(f"{params.host}:{params.port}" for params in nodes)
        try:
            # the nodes in turn: the first that accepts the connection
            self._connection: BlockingConnection = pika.BlockingConnection(nodes)
        except _REFUSALS as exc:
            self._closed = True
            raise BrokerRefused(
                f"RabbitMQ at {where} refused the connection: {_describe(exc)} "
                f"(check the user, password and virtual host of BROKER_URL)"
            ) from None
        except _PIKA_ERRORS as exc:
            self._closed = True
            raise BrokerError(f"cannot connect to RabbitMQ at {where}: {_describe(exc)}") from None

    # -- port -------------------------------------------------------------------------

    def declare_exchange(self, name: str, alternate_exchange: str | None = None) -> None:
        with self._guard(f"declare exchange {name!r}"):
            if alternate_exchange is None:
                self._ensure_exchange(name)
                return
            admin = self._admin_channel()
            admin.exchange_declare(alternate_exchange, exchange_type="fanout", durable=True)
            self._declare(alternate_exchange, queue_arguments(self.queue_type, None))
            admin = self._admin_channel()
            admin.queue_bind(alternate_exchange, alternate_exchange, routing_key="")
            try:
                admin.exchange_declare(
                    name,
                    exchange_type="topic",
                    durable=True,
                    arguments={"alternate-exchange": alternate_exchange},
                )
            except pika_exceptions.ChannelClosedByBroker as exc:
                self._admin = None
                if exc.reply_code != _PRECONDITION_FAILED:
                    raise
                raise BrokerRefused(
                    f"exchange {name!r} exists without alternate-exchange"
                    f" {alternate_exchange!r} (declared by another tool?): without"
                    " it a message no queue is bound for would be dropped; delete the"
                    " exchange or publish to another one"
                ) from None

    def declare_queue(self, spec: QueueSpec) -> None:
        with self._guard(f"declare queue {spec.name!r}"):
            for exchange in dict.fromkeys(exchange for exchange, _ in spec.bindings):
                self._ensure_exchange(exchange)
            arguments = queue_arguments(self.queue_type, spec.dead_letter_exchange)
            if spec.single_active_consumer:
                arguments["x-single-active-consumer"] = True
            self._declare(spec.name, arguments)
            admin = self._admin_channel()
            for exchange, key in spec.bindings:
                admin.queue_bind(spec.name, exchange, routing_key=key)

    def _declare(self, queue: str, arguments: dict[str, Any]) -> None:
        """Declare a durable ``queue``. One that exists with other arguments (RabbitMQ
        cannot change them in place) is kept as it is, with one warning: an install from
        before quorum queues were the default, or from before an argument was added.
        Only a queue of the other type than the one ``BROKER_URL`` names explicitly is an
        error."""
        try:
            self._admin_channel().queue_declare(queue, durable=True, arguments=arguments)
        except pika_exceptions.ChannelClosedByBroker as exc:
            self._admin = None
            if exc.reply_code != _PRECONDITION_FAILED:
                raise
            of_type = "x-queue-type" in exc.reply_text
            other = "classic" if self.queue_type == "quorum" else "quorum"
            if of_type and self._queue_type_named:
                raise BrokerError(
                    f"queue {queue!r} exists as a {other} queue and a queue's type cannot "
                    f"change: add queue_type={other} to BROKER_URL to keep it, or migrate it "
                    f"({QUEUE_TYPE_DOC})"
                ) from None
            if queue not in self._kept:
                self._kept.add(queue)
                if of_type:
                    log.warning(
                        "queue %r exists as a %s queue: kept as it is (new queues are %s; "
                        "to move it, see %s)",
                        queue,
                        other,
                        self.queue_type,
                        QUEUE_TYPE_DOC,
                    )
                else:
                    log.warning(
                        "queue %r exists with other arguments: kept as it is (%s)",
                        queue,
                        _one_line(exc.reply_text)[:300],
                    )
            self._admin_channel().queue_declare(queue, passive=True)

    def publish(self, exchange: str, messages: Sequence[Message]) -> None:
        """Publish with many confirms outstanding at once.

        ``BlockingChannel.confirm_delivery()`` makes every ``basic_publish`` wait for its
        own confirm: one round trip per message. Instead the publisher channel's
        underlying asynchronous channel is put in confirm mode with a callback, messages
        go out in a window of ``confirm_window``, and the connection's I/O loop runs
        until every delivery tag is acked.
        """
        with self._guard(f"publish to exchange {exchange!r}"):
            if not messages:
                return
            channel = self._publisher_channel()
            try:
                # private-API use: the asynchronous channel publishes without waiting
                impl = channel._impl
                for message in messages:
                    if len(self._unconfirmed) >= self._window:
                        self._await_confirms(channel, self._window // 2)
                    impl.basic_publish(
                        exchange,
                        message.routing_key,
                        message.body,
                        _properties(message),
                        mandatory=False,  # the alternate exchange takes unroutable ones
                    )
                    self._unconfirmed.add(self._next_publish_tag)
                    self._next_publish_tag += 1
                    if self._next_publish_tag % FLUSH_EVERY == 0:
                        # send what is buffered and read confirms while encoding more
                        self._connection.process_data_events(time_limit=0)
                        self._raise_if_closed(channel)
                self._await_confirms(channel, 0)
            except BaseException:
                self._discard_publisher()
                raise

    def get_batch(self, queue: str, max_messages: int, timeout: float) -> list[Delivery]:
        if not 1 <= max_messages <= MAX_PREFETCH:
            raise ValueError(f"max_messages must be between 1 and {MAX_PREFETCH}")
        with self._guard(f"get from queue {queue!r}"):
            buffer = self._consume(queue, max_messages)
            channel = self._consumer_channel
            # the window also covers deliveries handed out under an earlier prefetch
            room = max_messages - sum(1 for q in self._handed_out.values() if q == queue)
            deadline = time.monotonic() + max(timeout, 0.0)
            polled = False
            while not buffer or room <= 0:
                self._raise_if_closed(channel)
                if queue not in self._consumers:
                    raise BrokerError(f"the broker cancelled the consumer of queue {queue!r}")
                remaining = deadline - time.monotonic()
                if remaining <= 0 and polled:
                    return []
                self._connection.process_data_events(time_limit=max(remaining, 0.0))
                polled = True
            if len(buffer) < room:
                # take what has already arrived, without waiting
                self._connection.process_data_events(time_limit=0)
            batch = [buffer.popleft() for _ in range(min(room, len(buffer)))]
            self._handed_out.update((d.delivery_tag, queue) for d in batch)
            return batch

    def ack(self, delivery_tag: int, multiple: bool = False) -> None:
        with self._guard(f"ack delivery {delivery_tag}"):
            channel = self._known_delivery(delivery_tag)
            if not multiple:
                channel.basic_ack(delivery_tag)
                del self._handed_out[delivery_tag]
                return
            acked = sorted(t for t in self._handed_out if t <= delivery_tag)
            if self._holds_unreturned_below(delivery_tag):
                # a multiple ack would also ack deliveries the caller never received
                for tag in acked:
                    channel.basic_ack(tag)
            else:
                channel.basic_ack(delivery_tag, multiple=True)
            for tag in acked:
                del self._handed_out[tag]

    def reject(self, delivery_tag: int, requeue: bool) -> None:
        with self._guard(f"reject delivery {delivery_tag}"):
            channel = self._known_delivery(delivery_tag)
            channel.basic_reject(delivery_tag, requeue=requeue)
            del self._handed_out[delivery_tag]

    def queue_depth(self, queue: str) -> int:
        with self._guard(f"queue depth of {queue!r}"):
            frame = self._admin_channel().queue_declare(queue, passive=True)
            return int(frame.method.message_count)

    def queue_consumers(self, queue: str) -> int:
        with self._guard(f"consumers of {queue!r}"):
            frame = self._admin_channel().queue_declare(queue, passive=True)
            return int(frame.method.consumer_count)

    def delete_queue(self, queue: str) -> None:
        with self._guard(f"delete queue {queue!r}"):
            consumer = self._consumers.pop(queue, None)
            if consumer is not None and self._consumer_channel is not None:
                self._consumer_channel.basic_cancel(consumer.tag)
            self._buffers.pop(queue, None)
            self._admin_channel().queue_delete(queue)

    def close(self) -> None:
        if self._closed:
            return
        self._shutdown()

    # -- channels ---------------------------------------------------------------------

    def _open_channel(self) -> BlockingChannel:
        channel: BlockingChannel = self._connection.channel()
        self._channel_errors.pop(channel.channel_number, None)
        # the blocking wrapper keeps the reason private; remember it to report it
        channel._impl.add_on_close_callback(self._on_channel_closed)
        return channel

    def _on_channel_closed(self, channel: Any, reason: BaseException) -> None:
        self._channel_errors[int(channel.channel_number)] = reason

    def _raise_if_closed(self, channel: BlockingChannel | None) -> None:
        if channel is None or channel.is_open:
            return
        reason = self._channel_errors.get(channel.channel_number)
        if reason is None:
            raise pika_exceptions.ChannelWrongStateError("channel is closed")
        raise reason

    def _admin_channel(self) -> BlockingChannel:
        if self._admin is None or not self._admin.is_open:
            self._admin = self._open_channel()
        return self._admin

    def _ensure_exchange(self, name: str) -> None:
        """Declare a durable topic exchange unless it exists (whatever its arguments).

        Redeclaring an exchange that has an alternate exchange without that argument is
        refused by RabbitMQ, so an existing exchange is left as it is.
        """
        try:
            self._admin_channel().exchange_declare(name, passive=True)
        except pika_exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code != _NOT_FOUND:
                raise
            self._admin_channel().exchange_declare(name, exchange_type="topic", durable=True)

    def _publisher_channel(self) -> BlockingChannel:
        if self._publisher is not None and self._publisher.is_open:
            return self._publisher
        self._discard_publisher()
        channel = self._open_channel()
        selected: list[bool] = []

        def on_select_ok(_frame: Any) -> None:
            selected.append(True)
            self._wake()

        # private-API use: confirm mode on the asynchronous channel streams acks to a
        # callback instead of blocking every publish until its own confirm arrives
        channel._impl.confirm_delivery(
            ack_nack_callback=functools.partial(self._on_confirm, self._publisher_generation),
            callback=on_select_ok,
        )
        deadline = time.monotonic() + self._confirm_timeout
        while not selected:
            self._raise_if_closed(channel)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BrokerError("the broker did not enable publisher confirms in time")
            self._connection.process_data_events(time_limit=remaining)
        self._publisher = channel
        return channel

    def _discard_publisher(self) -> None:
        channel, self._publisher = self._publisher, None
        self._publisher_generation += 1  # late confirms of the old channel are ignored
        self._next_publish_tag = 1
        self._unconfirmed = _InFlight()
        self._nacked = 0
        self._wake_at_or_below = -1
        if channel is not None and channel.is_open and self._connection.is_open:
            with suppress(*_PIKA_ERRORS):
                channel.close()

    def _on_confirm(self, generation: int, frame: Any) -> None:
        if generation != self._publisher_generation:
            return
        method = frame.method
        done = self._unconfirmed.settle(int(method.delivery_tag), bool(method.multiple))
        self._confirmed += done
        if isinstance(method, pika.spec.Basic.Nack):
            self._nacked += max(done, 1)
            self._wake()
        elif len(self._unconfirmed) <= self._wake_at_or_below:
            self._wake()

    def _wake(self) -> None:
        """Make the running ``process_data_events`` return now instead of at its limit."""
        self._wake_at_or_below = -1
        self._connection.call_later(0, _nothing)

    def _await_confirms(self, channel: BlockingChannel, at_most: int) -> None:
        """Run I/O until at most ``at_most`` messages are unconfirmed.

        Fails on a nack, a closed channel, or ``confirm_timeout`` without any confirm.
        """
        progress_mark = self._confirmed
        deadline = time.monotonic() + self._confirm_timeout
        while True:
            if self._nacked:
                raise BrokerError(f"the broker refused (nacked) {self._nacked} message(s)")
            if len(self._unconfirmed) <= at_most:
                return
            self._raise_if_closed(channel)
            now = time.monotonic()
            if self._confirmed != progress_mark:
                progress_mark = self._confirmed
                deadline = now + self._confirm_timeout
            elif now >= deadline:
                raise BrokerError(
                    f"{len(self._unconfirmed)} message(s) not confirmed within "
                    f"{self._confirm_timeout:g} s"
                )
            self._wake_at_or_below = at_most
            self._connection.process_data_events(time_limit=deadline - now)

    def _consume(self, queue: str, prefetch: int) -> deque[Delivery]:
        """Make sure a consumer with this prefetch reads ``queue``; return its buffer."""
        channel = self._consumer_channel
        if channel is None:
            channel = self._consumer_channel = self._open_channel()
            channel.add_on_cancel_callback(self._on_consumer_cancelled)
        self._raise_if_closed(channel)
        consumer = self._consumers.get(queue)
        if consumer is not None and consumer.prefetch != prefetch:
            # a consumer keeps the prefetch it was created with; deliveries already in
            # the buffer stay valid, undispatched ones are requeued by pika
            del self._consumers[queue]
            channel.basic_cancel(consumer.tag)
            consumer = None
        if consumer is None:
            # a missing queue would close the consumer channel; ask on the admin one
            self._admin_channel().queue_declare(queue, passive=True)
            if self._qos != prefetch:
                channel.basic_qos(prefetch_count=prefetch)
                self._qos = prefetch
            tag = channel.basic_consume(
                queue, on_message_callback=functools.partial(self._on_delivery, queue)
            )
            self._consumers[queue] = _Consumer(str(tag), prefetch)
        return self._buffers.setdefault(queue, deque())

    def _on_delivery(
        self, queue: str, _channel: Any, method: Any, properties: Any, body: bytes
    ) -> None:
        message = Message(
            routing_key=method.routing_key,
            body=bytes(body),
            message_id=properties.message_id or "",
            type=properties.type or "",
            content_type=properties.content_type or "",
            # a quorum queue counts redeliveries in a header of its own: the message is
            # what was published (``redelivered`` says it came again)
            headers={
                k: v for k, v in (properties.headers or {}).items() if k != "x-delivery-count"
            },
            timestamp=properties.timestamp,
        )
        delivery = Delivery(
            message, int(method.delivery_tag), bool(method.redelivered), method.exchange
        )
        self._buffers.setdefault(queue, deque()).append(delivery)

    def _on_consumer_cancelled(self, frame: Any) -> None:
        tag = frame.method.consumer_tag
        for queue, consumer in list(self._consumers.items()):
            if consumer.tag == tag:
                del self._consumers[queue]

    def _known_delivery(self, delivery_tag: int) -> BlockingChannel:
        """The consumer channel, if ``delivery_tag`` was handed out and not yet settled.

        RabbitMQ answers an unknown tag by closing the channel (and requeueing every
        delivery on it), so it is refused here instead.
        """
        if delivery_tag not in self._handed_out or self._consumer_channel is None:
            raise BrokerError(f"PRECONDITION_FAILED - unknown delivery tag {delivery_tag}")
        self._raise_if_closed(self._consumer_channel)
        return self._consumer_channel

    def _holds_unreturned_below(self, delivery_tag: int) -> bool:
        return any(buf and buf[0].delivery_tag < delivery_tag for buf in self._buffers.values())

    # -- errors -----------------------------------------------------------------------

    @contextmanager
    def _guard(self, action: str) -> Iterator[None]:
        """Translate pika and socket errors into :class:`BrokerError` (one line)."""
        if self._closed:
            raise BrokerError(f"{action}: connection closed")
        try:
            yield
        except BrokerError:
            if not self._connection.is_open or self._consumer_lost():
                self._shutdown()
            raise
        except _PIKA_ERRORS as exc:
            detail = _describe(exc)
            if not self._connection.is_open or isinstance(
                exc, pika_exceptions.AMQPConnectionError | OSError
            ):
                self._shutdown()
                raise BrokerError(f"{action}: {detail} (connection closed)") from None
            if self._consumer_lost():
                self._shutdown()
                raise BrokerError(f"{action}: {detail} (consumer channel lost)") from None
            raise BrokerError(f"{action}: {detail}") from None

    def _consumer_lost(self) -> bool:
        return self._consumer_channel is not None and not self._consumer_channel.is_open

    def _shutdown(self) -> None:
        self._closed = True
        self._consumers.clear()
        self._buffers.clear()
        self._handed_out.clear()
        self._unconfirmed = _InFlight()
        self._admin = self._publisher = self._consumer_channel = None
        if self._connection.is_open:
            with suppress(*_PIKA_ERRORS):
                self._connection.close()


def _properties(message: Message) -> Any:
    return pika.BasicProperties(
        delivery_mode=2,
        message_id=message.message_id,
        type=message.type,
        content_type=message.content_type,
        headers=dict(message.headers) if message.headers else None,
        timestamp=message.timestamp,
    )


def _nothing() -> None:
    return None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, pika_exceptions.ChannelClosed | pika_exceptions.ConnectionClosed):
        text = f"{exc.reply_text} ({exc.reply_code})"
    elif isinstance(exc, pika_exceptions.AMQPConnectionError) and exc.args:
        # connection failures wrap the underlying error, itself often an exception
        text = ": ".join(_describe(a) if isinstance(a, BaseException) else str(a) for a in exc.args)
    else:
        text = str(exc) or repr(exc)
    return _one_line(text or type(exc).__name__)


def _one_line(text: str) -> str:
    return " ".join(text.split())
