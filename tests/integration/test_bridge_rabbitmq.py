"""The relay against real PostgreSQL and RabbitMQ: every change arrives, in order, as the
contract describes; heartbeats are persistent; the CLI relays and stops cleanly on
SIGTERM. Also the helpers other bridge suites use to talk to RabbitMQ."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pika
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

from broker import Broker, Message, QueueSpec, connect
from examples.legacy_shop import TABLES
from legacy_bridge import Relay, install
from tests.services import unique_name
from tests.unit.test_bridge_contract import (
    add_lot,
    add_product,
    create_legacy_schema,
    drain_relay,
    envelope_validator,
    relay_state,
    wait_until,
)
from tests.unit.test_bridge_envelope import heartbeat_validator

pytestmark = [pytest.mark.postgres, pytest.mark.rabbitmq]

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def engine(pg_url: str) -> Iterator[Engine]:
    engine = create_engine(pg_url)
    create_legacy_schema(engine)
    install(engine, TABLES, server_name="shop")
    yield engine
    engine.dispose()


@pytest.fixture
def exchange(amqp_url: str, queue_name: str) -> Iterator[str]:
    """A unique exchange name; the exchange, its alternate and the queues go after."""
    name = unique_name("test_legacy_cdc")
    yield name
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = connection.channel()
        for queue in (queue_name, f"{name}.unrouted"):
            channel.queue_delete(queue)
        for ex in (name, f"{name}.unrouted"):
            channel.exchange_delete(ex)
    finally:
        connection.close()


@pytest.fixture
def broker(amqp_url: str) -> Iterator[Broker]:
    broker = connect(amqp_url)
    yield broker
    broker.close()


@pytest.fixture
def consumer(amqp_url: str, exchange: str, queue_name: str) -> Iterator[Broker]:
    """A second connection with ``queue_name`` bound to ``exchange`` for ``stock_lot.*``
    and ``prod_catalog.*`` (the exchange is declared first, as the relay declares it)."""
    broker = connect(amqp_url)
    broker.declare_exchange(exchange, alternate_exchange=f"{exchange}.unrouted")
    broker.declare_queue(
        QueueSpec(queue_name, bindings=[(exchange, "stock_lot.*"), (exchange, "prod_catalog.*")])
    )
    yield broker
    broker.close()


@contextmanager
def cdc_exchange(amqp_url: str) -> Iterator[tuple[str, str]]:
    """A unique exchange declared as the relay declares it, and a durable queue bound to
    it with ``#``; both deleted afterwards."""
    exchange, queue = unique_name("test_legacy_cdc"), unique_name("test_cdc_q")
    broker = connect(amqp_url)
    try:
        broker.declare_exchange(exchange, alternate_exchange=f"{exchange}.unrouted")
        broker.declare_queue(QueueSpec(queue, bindings=[(exchange, "#")]))
    finally:
        broker.close()
    try:
        yield exchange, queue
    finally:
        connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
        try:
            channel = connection.channel()
            for name in (queue, f"{exchange}.unrouted"):
                channel.queue_delete(name)
            for name in (exchange, f"{exchange}.unrouted"):
                channel.exchange_delete(name)
        finally:
            connection.close()


def drain_queue(amqp_url: str, queue: str, expected: int, timeout: float = 60.0) -> list[Message]:
    """Take (and ack) messages until ``expected`` arrived and the queue stays empty."""
    broker = connect(amqp_url)
    messages: list[Message] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            deliveries = broker.get_batch(queue, max_messages=1000, timeout=0.5)
            if deliveries:
                messages.extend(d.message for d in deliveries)
                broker.ack(deliveries[-1].delivery_tag, multiple=True)
            elif len(messages) >= expected:
                return messages
    finally:
        broker.close()
    raise AssertionError(f"received {len(messages)} of at least {expected} messages")


def receive(broker: Broker, queue: str, count: int, timeout: float = 10.0) -> list[Message]:
    deadline = time.monotonic() + timeout
    messages: list[Message] = []
    while len(messages) < count and time.monotonic() < deadline:
        deliveries = broker.get_batch(queue, max_messages=500, timeout=0.2)
        if deliveries:
            messages.extend(d.message for d in deliveries)
            broker.ack(deliveries[-1].delivery_tag, multiple=True)
    return messages


def test_every_change_reaches_a_bound_queue_in_order(
    engine: Engine, broker: Broker, consumer: Broker, exchange: str, queue_name: str
) -> None:
    install_id = relay_state(engine)["install_id"]
    add_product(engine, 1, "SKU-1")
    add_lot(engine, 1, "LOT-1", 1, 10, "2024-03-01")
    with engine.begin() as conn:
        conn.execute(text("UPDATE stock_lot SET qty_units = 8 WHERE lot_id = 1"))
        conn.execute(text("DELETE FROM stock_lot WHERE lot_id = 1"))

    with Relay(engine, broker, exchange=exchange, batch_size=3) as relay:
        assert drain_relay(relay) == 4

    messages = receive(consumer, queue_name, 4)
    validator = envelope_validator()
    events = [json.loads(m.body) for m in messages]
    for message, event in zip(messages, events, strict=True):
        validator.validate(event)
        source = event["source"]
        assert message.message_id == f"{install_id}:{source['change_id']}"
        assert message.routing_key == f"{source['table']}.{event['op']}"
        assert message.type == "change"
        assert message.content_type == "application/json"
        assert dict(message.headers) == {
            "x-legacy-table": source["table"],
            "x-legacy-seq": source["seq"],
        }
        assert isinstance(message.timestamp, int)
        assert source["connector"] == "postgresql"
        assert source["name"] == "shop"
    assert [(e["source"]["table"], e["op"]) for e in events] == [
        ("prod_catalog", "c"),
        ("stock_lot", "c"),
        ("stock_lot", "u"),
        ("stock_lot", "d"),
    ]
    assert [e["source"]["seq"] for e in events] == [1, 2, 3, 4]
    assert relay_state(engine)["last_confirmed_pos"] == 4


def test_messages_are_persistent_and_unroutable_ones_are_kept(
    amqp_url: str, engine: Engine, broker: Broker, consumer: Broker, exchange: str
) -> None:
    with engine.begin() as conn:  # cust_order_line.* is bound by no queue
        conn.execute(text("INSERT INTO prod_catalog (prod_id, prod_code) VALUES (1, 'A')"))
        conn.execute(
            text(
                "INSERT INTO cust_order_line (line_id, order_no, prod_id, qty_units)"
                " VALUES (1, 'order-1', 1, 2)"
            )
        )
    with Relay(engine, broker, exchange=exchange) as relay:
        assert drain_relay(relay) == 2

    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = connection.channel()
        got = None
        deadline = time.monotonic() + 10
        while got is None and time.monotonic() < deadline:
            method, properties, body = channel.basic_get(f"{exchange}.unrouted", auto_ack=True)
            got = (method, properties, body) if method is not None else None
    finally:
        connection.close()
    assert got is not None, "the unroutable change was dropped"
    method, properties, body = got
    assert method.routing_key == "cust_order_line.c"
    assert properties.delivery_mode == 2
    assert properties.content_type == "application/json"
    assert json.loads(body)["after"]["order_no"] == "order-1"


def test_cli_relays_until_sigterm_and_finishes_cleanly(
    pg_url: str,
    amqp_url: str,
    engine: Engine,
    consumer: Broker,
    exchange: str,
    queue_name: str,
) -> None:
    env = {**os.environ, "LEGACY_DB_URL": pg_url, "BROKER_URL": amqp_url}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "legacy_bridge",
            "run",
            "--exchange",
            exchange,
            "--poll-interval",
            "0.05",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        add_product(engine, 1, "SKU-1")
        add_product(engine, 2, "SKU-2")
        messages = receive(consumer, queue_name, 2, timeout=20)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()

    assert [json.loads(m.body)["after"]["prod_code"] for m in messages] == ["SKU-1", "SKU-2"]
    assert process.returncode == 0, stderr
    assert "SIGTERM received" in stderr
    assert "relay stopped after publishing 2 changes" in stderr


def test_cli_once_publishes_what_is_pending(
    pg_url: str,
    amqp_url: str,
    engine: Engine,
    consumer: Broker,
    exchange: str,
    queue_name: str,
) -> None:
    from click.testing import CliRunner

    from legacy_bridge.cli import bridge

    add_product(engine, 1, "SKU-1")
    result = CliRunner().invoke(
        bridge,
        ["run", "--once", "--exchange", exchange],
        env={"LEGACY_DB_URL": pg_url, "BROKER_URL": amqp_url},
    )

    assert result.exit_code == 0, result.output
    assert result.output == "published 1 change\n"
    assert len(receive(consumer, queue_name, 1)) == 1


def test_an_idle_relay_sends_persistent_heartbeats(engine: Engine, amqp_url: str) -> None:
    install_id = relay_state(engine)["install_id"]
    add_product(engine, 1, "SKU-1")
    with cdc_exchange(amqp_url) as (exchange, queue):
        stop = threading.Event()
        relay = Relay(
            engine,
            broker_factory=lambda: connect(amqp_url),
            exchange=exchange,
            heartbeat_interval=0.1,
        )
        worker = threading.Thread(target=relay.run, args=(stop, 0.02))
        worker.start()
        got: list[tuple[object, bytes]] = []
        connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
        try:
            channel = connection.channel()

            def heartbeat_arrived() -> bool:
                # a consumer, not basic.get: the queue has a single active consumer
                for method, properties, body in channel.consume(
                    queue, auto_ack=True, inactivity_timeout=0.05
                ):
                    if method is None:
                        break
                    got.append((properties, body))
                return any(p.type == "heartbeat" for p, _ in got)  # type: ignore[attr-defined]

            wait_until(heartbeat_arrived, 10)
            channel.cancel()
        finally:
            connection.close()
            stop.set()
            worker.join(timeout=10)
            relay.close()

    change_props, change_body = got[0]
    properties, body = got[-1]
    event = json.loads(body)
    heartbeat_validator().validate(event)
    assert change_props.type == "change"  # type: ignore[attr-defined]
    assert properties.delivery_mode == 2  # type: ignore[attr-defined]
    assert properties.message_id == f"{install_id}:hb:{event['ts_ms']}"  # type: ignore[attr-defined]
    assert event["last_seq"] == 1
    assert event["last_commit_ts_ms"] == json.loads(change_body)["source"]["ts_ms"]
    assert event["source"] == {
        "version": "0.1.0",
        "connector": "postgresql",
        "name": "shop",
        "db": engine.url.database,
    }
