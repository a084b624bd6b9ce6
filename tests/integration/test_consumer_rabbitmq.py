"""The consumer against RabbitMQ and PostgreSQL, building the read model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import broker
from broker import Broker, Message
from new_domain import Allocation, Consumer, bootstrap, open_read_model, upgrade_database
from new_domain.service_layer.messagebus import MessageBus
from tests.services import unique_name

pytestmark = [pytest.mark.postgres, pytest.mark.rabbitmq]

INSTALL = "9a1e5c0b-6b7a-4d55-9d8c-5f3f2b2d7a10"


def message(table: str, op: str, before: Any, after: Any, seq: int) -> Message:
    body = {
        "before": before,
        "after": after,
        "op": op,
        "ts_ms": 1714557600000,
        "source": {
            "version": "0.1.0",
            "connector": "postgresql",
            "name": "legacy",
            "db": "shop",
            "schema": "public",
            "table": table,
            "txid": str(700 + seq),
            "seq": seq,
            "change_id": seq,
            "ts_ms": 1714557600000,
            "snapshot": False,
        },
    }
    return Message(
        f"{table}.{op}",
        json.dumps(body).encode(),
        f"{INSTALL}:{seq}",
        headers={"x-legacy-table": table, "x-legacy-seq": seq},
    )


STORY = [
    message("prod_catalog", "c", None, {"prod_id": 1, "prod_code": "LAMP", "descr": None}, 1),
    message(
        "stock_lot",
        "c",
        None,
        {
            "lot_id": 1,
            "lot_ref": "b-june",
            "prod_id": 1,
            "qty_units": 10,
            "arrival_date": "2024-06-01",
            "created_at": "2024-05-01T10:00:00.5",
        },
        2,
    ),
    message(
        "cust_order_line",
        "c",
        None,
        {"line_id": 1, "order_no": "o1", "prod_id": 1, "qty_units": 3},
        3,
    ),
    message(
        "lot_allocation",
        "c",
        None,
        {"alloc_id": 1, "lot_id": 1, "line_id": 1, "allocated_at": "2024-05-01T10:00:01"},
        4,
    ),
]


@pytest.fixture
def bus(pg_url: str) -> Iterator[MessageBus]:
    upgrade_database(pg_url)
    bus = bootstrap(pg_url)
    yield bus
    bus.uow.close()


@pytest.fixture
def exchange() -> str:
    return unique_name("test_legacy_cdc")


@pytest.fixture
def rabbit(amqp_url: str, queue_name: str, exchange: str) -> Iterator[Broker]:
    connection = broker.connect(amqp_url)
    yield connection
    for queue in (queue_name, f"{queue_name}.dlq", f"{exchange}.unrouted"):
        connection.delete_queue(queue)
    connection.close()


@pytest.fixture
def consumer(bus: MessageBus, amqp_url: str, queue_name: str, exchange: str) -> Iterator[Consumer]:
    consumer = Consumer(
        bus, lambda: broker.connect(amqp_url), queue_name, exchange=exchange, batch_size=100
    )
    consumer.connect()
    yield consumer
    consumer.close()


def wait_for(condition: Any, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        threading.Event().wait(0.02)


def test_the_consumer_builds_the_read_model(
    consumer: Consumer, rabbit: Broker, exchange: str, queue_name: str, pg_url: str
) -> None:
    rabbit.publish(exchange, STORY)
    read_model = open_read_model(pg_url)
    stop = threading.Event()
    thread = threading.Thread(target=consumer.run, args=(stop,))
    thread.start()
    try:
        wait_for(lambda: read_model.allocations_for("o1") == [Allocation("LAMP", "b-june")])
        rabbit.publish(exchange, STORY)  # a full re-send changes nothing
        rabbit.publish(
            exchange,
            [
                message(
                    "lot_allocation",
                    "d",
                    {
                        "alloc_id": 1,
                        "lot_id": 1,
                        "line_id": 1,
                        "allocated_at": "2024-05-01T10:00:01",
                    },
                    None,
                    5,
                )
            ],
        )
        wait_for(lambda: read_model.allocations_for("o1") == [])
    finally:
        stop.set()
        thread.join(15)
        read_model.close()
    assert not thread.is_alive()
    assert rabbit.queue_depth(queue_name) == 0
    with consumer.bus.uow as uow:
        lamp = uow.products.get("LAMP")
        assert lamp is not None and lamp.version_number == 3
        assert uow.anomalies.recorded() == []


def test_a_bad_message_is_dead_lettered_over_rabbitmq(
    consumer: Consumer, rabbit: Broker, exchange: str, queue_name: str, pg_url: str
) -> None:
    garbage = Message("stock_lot.c", b"\x00 not an envelope", "bad-1")
    rabbit.publish(exchange, [STORY[0], garbage, *STORY[1:]])
    taken = 0
    deadline = time.monotonic() + 15
    while taken < 5 and time.monotonic() < deadline:
        taken += consumer.run_once()
    assert taken == 5
    with open_read_model(pg_url) as read_model:
        assert read_model.allocations_for("o1") == [Allocation("LAMP", "b-june")]
    dead: list[Any] = []

    def dead_lettered() -> bool:
        dead.extend(rabbit.get_batch(f"{queue_name}.dlq", 10, 0.2))
        return bool(dead)

    wait_for(dead_lettered)
    [delivery] = dead
    rabbit.ack(delivery.delivery_tag)
    assert delivery.message.message_id == "bad-1"
    assert delivery.message.body == garbage.body
    assert delivery.message.routing_key == "stock_lot.c"
    assert delivery.message.headers["x-error-type"] == "MalformedChange"
    assert delivery.message.headers["x-attempts"] == 1
    assert "x-first-failed-at" in delivery.message.headers


def test_the_consume_command_applies_changes_and_stops_on_sigterm(
    rabbit: Broker, queue_name: str, exchange: str, tmp_path: Path
) -> None:
    new_db = f"sqlite:///{tmp_path / 'new.db'}"
    upgrade_database(new_db)
    command = "from new_domain.entrypoints.cli import consume; consume()"
    process = subprocess.Popen(
        [sys.executable, "-c", command, "--queue", queue_name, "--exchange", exchange],
        cwd=ROOT,
        env={**os.environ, "NEW_DB_URL": new_db, "BROKER_URL": rabbit_url()},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        # consuming, so its queue is bound: a queue that merely exists may not be bound
        # to the exchange yet, and a story published then is routed nowhere
        wait_for(lambda: consuming(rabbit, queue_name) or process.poll() is not None)
        assert process.poll() is None, process.communicate()[0]
        stories = [
            Message(m.routing_key, m.body.replace(b'"o1"', b'"sigterm-order"'), m.message_id)
            for m in STORY
        ]
        rabbit.publish(exchange, stories)
        with open_read_model(new_db) as read_model:
            wait_for(
                lambda: (
                    read_model.allocations_for("sigterm-order") == [Allocation("LAMP", "b-june")]
                )
            )
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=15)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, output


ROOT = Path(__file__).resolve().parents[2]


def rabbit_url() -> str:
    from tests.services import require_rabbitmq

    return require_rabbitmq()


def consuming(rabbit: Broker, queue: str) -> bool:
    try:
        return rabbit.queue_consumers(queue) > 0
    except broker.BrokerError:
        return False
