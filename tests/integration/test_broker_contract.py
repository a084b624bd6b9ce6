"""The broker port's contract: every adapter (in-process and RabbitMQ) passes these."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

import broker
from broker import Broker, BrokerError, BrokerRefused, Delivery, Message, QueueSpec
from tests.services import unique_name


class Session:
    """Brokers, exchanges and queues of one test, cleaned up afterwards."""

    def __init__(self, url: str, kind: str) -> None:
        self.url = url
        self.kind = kind
        self.brokers: list[Broker] = []
        self.queues: list[str] = []
        self.exchanges: list[str] = []

    def connect(self) -> Broker:
        b = broker.connect(self.url)
        self.brokers.append(b)
        return b

    def exchange(self) -> str:
        name = unique_name("test_x")
        self.exchanges.append(name)
        return name

    def queue(self, b: Broker, *bindings: tuple[str, str], sac: bool = True) -> str:
        name = unique_name("test_q")
        self.queues.append(name)
        b.declare_queue(QueueSpec(name, bindings=list(bindings), single_active_consumer=sac))
        return name

    def cleanup(self) -> None:
        for b in self.brokers:
            b.close()
        cleaner = broker.connect(self.url)
        try:
            for queue in self.queues:
                cleaner.delete_queue(queue)
        finally:
            cleaner.close()
        if self.kind == "rabbitmq" and self.exchanges:
            import pika

            connection = pika.BlockingConnection(pika.URLParameters(self.url))
            channel = connection.channel()
            for exchange in self.exchanges:
                channel.exchange_delete(exchange)
            connection.close()


@pytest.fixture(params=["memory", pytest.param("rabbitmq", marks=pytest.mark.rabbitmq)])
def session(request: pytest.FixtureRequest) -> Iterator[Session]:
    url_fixture = "memory_broker_url" if request.param == "memory" else "amqp_url"
    s = Session(request.getfixturevalue(url_fixture), request.param)
    yield s
    s.cleanup()


def message(n: int, routing_key: str = "stock_lot.c") -> Message:
    return Message(routing_key, f'{{"n": {n}}}'.encode(), f"m-{n}")


def take(
    b: Broker, queue: str, count: int, max_messages: int = 100, ack: bool = False
) -> list[Delivery]:
    """Exactly ``count`` deliveries (fails after 10 s); ``ack`` acks each batch."""
    out: list[Delivery] = []
    deadline = time.monotonic() + 10
    while len(out) < count and time.monotonic() < deadline:
        batch = b.get_batch(queue, max_messages=max_messages, timeout=1)
        if ack and batch:
            b.ack(batch[-1].delivery_tag, multiple=True)
        out += batch
    assert len(out) == count
    return out


def take_all(b: Broker, queue: str, count: int) -> list[Delivery]:
    """``count`` deliveries, acked, and then nothing more in ``queue``."""
    out = take(b, queue, count)
    if out:
        b.ack(out[-1].delivery_tag, multiple=True)
    assert b.get_batch(queue, max_messages=100, timeout=0.2) == []
    return out


def wait_until(condition: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_topic_routing_with_star_and_hash(session: Session) -> None:
    b = session.connect()
    x = session.exchange()
    b.declare_exchange(x)
    bindings = ["stock_lot.*", "*.d", "#", "stock_lot.#", "#.u", "a.*.c", "a.#.c", "*.c"]
    queues = {key: session.queue(b, (x, key)) for key in bindings}
    keys = [
        "stock_lot.c",
        "stock_lot.u",
        "prod_catalog.d",
        "stock_lot",
        "stock_lot.x.y",
        "a.b.c",
        "a.c",
    ]
    b.publish(x, [message(i, key) for i, key in enumerate(keys)])
    expected = {
        "stock_lot.*": ["stock_lot.c", "stock_lot.u"],
        "*.d": ["prod_catalog.d"],
        "#": keys,
        "stock_lot.#": ["stock_lot.c", "stock_lot.u", "stock_lot", "stock_lot.x.y"],
        "#.u": ["stock_lot.u"],
        "a.*.c": ["a.b.c"],
        "a.#.c": ["a.b.c", "a.c"],
        "*.c": ["stock_lot.c", "a.c"],
    }
    for key, queue in queues.items():
        got = [d.message.routing_key for d in take_all(b, queue, len(expected[key]))]
        assert got == expected[key], key


def test_properties_round_trip(session: Session) -> None:
    b = session.connect()
    x = session.exchange()
    b.declare_exchange(x)
    q = session.queue(b, (x, "#"))
    sent = [
        Message(
            "stock_lot.u",
            b"\x00\xff binary \xc3\xa9",
            "install-1:42",
            type="change",
            content_type="application/octet-stream",
            headers={"x-legacy-table": "stock_lot", "x-legacy-seq": 42, "x-flag": True},
            timestamp=1_700_000_000,
        ),
        Message("prod_catalog.c", b'{"after": {}}', "install-1:43"),
    ]
    b.publish(x, sent)
    got = take_all(b, q, 2)
    assert [d.message for d in got] == sent
    assert [(d.exchange, d.redelivered) for d in got] == [(x, False), (x, False)]


def test_publish_5000_returns_when_all_are_queued_in_order(session: Session) -> None:
    b = session.connect()
    x = session.exchange()
    b.declare_exchange(x)
    q = session.queue(b, (x, "#"))
    b.publish(x, [message(i) for i in range(5000)])
    assert b.queue_depth(q) == 5000
    got = take(b, q, 5000, max_messages=1000, ack=True)
    assert [d.message.message_id for d in got] == [f"m-{i}" for i in range(5000)]
    wait_until(lambda: b.queue_depth(q) == 0)


def test_get_batch_returns_at_most_max_messages(session: Session) -> None:
    b = session.connect()
    x = session.exchange()
    b.declare_exchange(x)
    q = session.queue(b, (x, "#"))
    b.publish(x, [message(i) for i in range(10)])
    ids: list[str] = []
    deadline = time.monotonic() + 10
    while len(ids) < 10 and time.monotonic() < deadline:
        batch = b.get_batch(q, max_messages=4, timeout=1)
        assert 1 <= len(batch) <= 4
        ids += [d.message.message_id for d in batch]
        b.ack(batch[-1].delivery_tag, multiple=True)
    assert ids == [f"m-{i}" for i in range(10)]


def test_get_batch_on_empty_queue_waits_for_the_timeout(session: Session) -> None:
    b = session.connect()
    x = session.exchange()
    q = session.queue(b, (x, "#"))
    started = time.monotonic()
    assert b.get_batch(q, max_messages=10, timeout=0.5) == []
    elapsed = time.monotonic() - started
    assert 0.4 <= elapsed < 2.5


def test_prefetch_window_is_max_messages(session: Session) -> None:
    b = session.connect()
    x = session.exchange()
    b.declare_exchange(x)
    q = session.queue(b, (x, "#"))
    b.publish(x, [message(i) for i in range(5)])
    first = take(b, q, 2, max_messages=2)
    assert b.get_batch(q, max_messages=2, timeout=0.3) == []  # window full until acked
    assert b.get_batch(q, max_messages=1, timeout=0.3) == []
    b.ack(first[-1].delivery_tag, multiple=True)
    rest = take(b, q, 3, max_messages=2, ack=True)
    assert [d.message.message_id for d in first + rest] == [f"m-{i}" for i in range(5)]


def test_ack_multiple_acks_everything_up_to_the_tag(session: Session) -> None:
    b = session.connect()
    x = session.exchange()
    b.declare_exchange(x)
    q = session.queue(b, (x, "#"))
    b.publish(x, [message(i) for i in range(5)])
    got = take(b, q, 5)
    b.ack(got[2].delivery_tag, multiple=True)
    b.close()
    other = session.connect()
    wait_until(lambda: other.queue_depth(q) == 2)
    again = take_all(other, q, 2)
    assert [(d.message.message_id, d.redelivered) for d in again] == [
        ("m-3", True),
        ("m-4", True),
    ]


def test_ack_of_an_unknown_tag_is_refused(session: Session) -> None:
    b = session.connect()
    x = session.exchange()
    b.declare_exchange(x)
    q = session.queue(b, (x, "#"))
    b.publish(x, [message(1)])
    (d,) = take(b, q, 1)
    with pytest.raises(BrokerError, match="unknown delivery tag"):
        b.ack(d.delivery_tag + 1000, multiple=True)
    with pytest.raises(BrokerError, match="unknown delivery tag"):
        b.reject(d.delivery_tag + 1000, requeue=True)
    b.ack(d.delivery_tag)
    with pytest.raises(BrokerError, match="unknown delivery tag"):
        b.ack(d.delivery_tag)
    assert b.get_batch(q, max_messages=10, timeout=0.2) == []


def test_reject_with_requeue_redelivers(session: Session) -> None:
    b = session.connect()
    x = session.exchange()
    b.declare_exchange(x)
    q = session.queue(b, (x, "#"))
    b.publish(x, [message(1)])
    (first,) = take(b, q, 1)
    assert not first.redelivered
    b.reject(first.delivery_tag, requeue=True)
    (again,) = take_all(b, q, 1)
    assert again.message == first.message
    assert again.redelivered


def test_reject_without_requeue_drops(session: Session) -> None:
    b = session.connect()
    x = session.exchange()
    b.declare_exchange(x)
    q = session.queue(b, (x, "#"))
    b.publish(x, [message(1), message(2)])
    (first,) = take(b, q, 1, max_messages=1)
    assert first.message.message_id == "m-1"
    b.reject(first.delivery_tag, requeue=False)
    rest = take_all(b, q, 1)
    assert [d.message.message_id for d in rest] == ["m-2"]
    assert b.queue_depth(q) == 0


def test_close_returns_unacked_deliveries_to_the_queue(session: Session) -> None:
    b = session.connect()
    x = session.exchange()
    b.declare_exchange(x)
    q = session.queue(b, (x, "#"))
    b.publish(x, [message(i) for i in range(3)])
    take(b, q, 3)
    b.close()
    b.close()  # idempotent
    with pytest.raises(BrokerError):
        b.get_batch(q, max_messages=1, timeout=0)
    with pytest.raises(BrokerError):
        b.publish(x, [message(9)])
    other = session.connect()
    again = take_all(other, q, 3)
    assert [(d.message.message_id, d.redelivered) for d in again] == [
        ("m-0", True),
        ("m-1", True),
        ("m-2", True),
    ]


def test_unroutable_messages_go_to_the_alternate_exchange_queue(session: Session) -> None:
    b = session.connect()
    x, ae = session.exchange(), session.exchange()
    b.declare_exchange(x, alternate_exchange=ae)
    session.queues.append(ae)
    q = session.queue(b, (x, "stock_lot.*"))
    b.publish(x, [message(1, "stock_lot.c"), message(2, "elsewhere.c")])
    routed = take_all(b, q, 1)
    unrouted = take_all(b, ae, 1)
    assert [d.message.message_id for d in routed] == ["m-1"]
    assert [(d.message.message_id, d.message.routing_key, d.exchange) for d in unrouted] == [
        ("m-2", "elsewhere.c", x)
    ]


def test_declarations_are_idempotent(session: Session) -> None:
    b = session.connect()
    x, ae = session.exchange(), session.exchange()
    session.queues.append(ae)
    b.declare_exchange(x, alternate_exchange=ae)
    b.declare_exchange(x, alternate_exchange=ae)
    b.declare_exchange(x)  # keeps the alternate exchange
    name = unique_name("test_q")
    session.queues.append(name)
    spec = QueueSpec(name, bindings=[(x, "stock_lot.*")])
    b.declare_queue(spec)
    b.declare_queue(spec)
    b.publish(x, [message(1, "stock_lot.c"), message(2, "elsewhere.c")])
    assert b.queue_depth(name) == 1
    assert b.queue_depth(ae) == 1


def test_an_exchange_keeps_its_alternate_exchange(session: Session) -> None:
    b = session.connect()
    x, ae, other_ae, plain = (session.exchange() for _ in range(4))
    session.queues += [ae, other_ae]
    b.declare_exchange(x, alternate_exchange=ae)
    with pytest.raises(BrokerRefused, match="alternate-exchange"):  # no retry cures it
        b.declare_exchange(x, alternate_exchange=other_ae)
    b.declare_exchange(plain)
    with pytest.raises(BrokerRefused, match="alternate-exchange"):
        b.declare_exchange(plain, alternate_exchange=ae)
    b.publish(x, [message(1, "nobody.listens")])  # the session is still usable
    assert b.queue_depth(ae) == 1


def test_queue_depth_counts_ready_messages(session: Session) -> None:
    b = session.connect()
    x = session.exchange()
    b.declare_exchange(x)
    q = session.queue(b, (x, "#"), sac=False)
    assert b.queue_depth(q) == 0
    b.publish(x, [message(i) for i in range(3)])
    assert b.queue_depth(q) == 3
    take(b, q, 1, max_messages=1)
    assert b.queue_depth(q) == 2  # the unacknowledged one is not ready
    with pytest.raises(BrokerError, match="NOT_FOUND"):
        b.queue_depth(unique_name("missing"))
    assert b.queue_depth(q) == 2


def test_queue_consumers_counts_the_sessions_taking_from_a_queue(session: Session) -> None:
    b = session.connect()
    x = session.exchange()
    b.declare_exchange(x)
    q = session.queue(b, (x, "#"), sac=False)
    watcher = session.connect()
    assert watcher.queue_consumers(q) == 0
    b.publish(x, [message(1)])
    take(b, q, 1, max_messages=1)
    wait_until(lambda: watcher.queue_consumers(q) == 1)
    b.close()
    wait_until(lambda: watcher.queue_consumers(q) == 0)
    with pytest.raises(BrokerError, match="NOT_FOUND"):
        watcher.queue_consumers(unique_name("missing"))


def test_publish_to_a_missing_exchange_raises(session: Session) -> None:
    b = session.connect()
    started = time.monotonic()
    with pytest.raises(BrokerError, match="NOT_FOUND"):
        b.publish(unique_name("missing_x"), [message(i) for i in range(3)])
    assert time.monotonic() - started < 5
    x = session.exchange()
    b.declare_exchange(x)
    q = session.queue(b, (x, "#"))
    b.publish(x, [message(1)])  # the session is still usable
    assert b.queue_depth(q) == 1


def test_get_batch_from_a_missing_queue_raises(session: Session) -> None:
    b = session.connect()
    with pytest.raises(BrokerError, match="NOT_FOUND"):
        b.get_batch(unique_name("missing_q"), max_messages=1, timeout=0.1)


def test_connect_to_nothing_listening_fails_quickly() -> None:
    started = time.monotonic()
    with pytest.raises(BrokerError, match="cannot connect"):
        broker.connect("amqp://guest:guest@127.0.0.1:1/%2F")
    assert time.monotonic() - started < 5


def test_connect_refuses_an_unknown_scheme() -> None:
    with pytest.raises(BrokerError, match="unsupported BROKER_URL"):
        broker.connect("kafka://x")


class _Proxy:
    """A TCP relay to RabbitMQ that can drop every connection at once."""

    def __init__(self, port: int) -> None:
        self._target = ("127.0.0.1", port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = [self._listener]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self._target)
            self._sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass

    def drop(self) -> None:
        for s in self._sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()


@pytest.mark.rabbitmq
def test_rabbitmq_connection_loss_raises_and_closes_the_broker(amqp_url: str) -> None:
    session = Session(amqp_url, "rabbitmq")
    proxy = _Proxy(5672)
    try:
        direct = session.connect()
        x = session.exchange()
        direct.declare_exchange(x)
        q = session.queue(direct, (x, "#"))
        direct.publish(x, [message(1)])
        proxied = broker.connect(amqp_url.replace("127.0.0.1:5672", f"127.0.0.1:{proxy.port}"))
        take(proxied, q, 1)
        proxy.drop()
        started = time.monotonic()
        with pytest.raises(BrokerError, match="connection closed"):
            proxied.get_batch(q, max_messages=10, timeout=5)
        assert time.monotonic() - started < 5
        with pytest.raises(BrokerError, match="connection closed"):
            proxied.publish(x, [message(2)])
        proxied.close()
        wait_until(lambda: direct.queue_depth(q) == 1)  # the unacked delivery is back
    finally:
        proxy.drop()
        session.cleanup()
