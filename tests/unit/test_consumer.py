"""The change consumer with the in-process broker and a SQLite new database."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

import broker
from broker import Broker, BrokerError, Message
from new_domain import Allocation, Consumer, bootstrap, open_read_model, upgrade_database
from new_domain.adapters import orm
from new_domain.adapters.database import create_engine
from new_domain.ingest import DatabaseUnavailable
from new_domain.service_layer.messagebus import MessageBus
from new_domain.service_layer.unit_of_work import SqlAlchemyUnitOfWork

QUEUE = "new_domain.legacy_cdc"
INSTALL = "0b7d7c4e-1f5e-4b1a-9a44-2b9f6f0c1d11"


def envelope(table: str, op: str, before: Any, after: Any, seq: int) -> dict[str, Any]:
    return {
        "before": before,
        "after": after,
        "op": op,
        "ts_ms": 1714557600000,
        "source": {
            "version": "0.1.0",
            "connector": "sqlite",
            "name": "legacy",
            "db": "main",
            "schema": None,
            "table": table,
            "txid": None,
            "seq": seq,
            "change_id": seq,
            "ts_ms": 1714557600000,
            "snapshot": False,
        },
    }


def message(table: str, op: str, before: Any, after: Any, seq: int) -> Message:
    return Message(
        routing_key=f"{table}.{op}",
        body=json.dumps(envelope(table, op, before, after, seq)).encode(),
        message_id=f"{INSTALL}:{seq}",
        headers={"x-legacy-table": table, "x-legacy-seq": seq},
    )


def allocation_story(first_seq: int = 1) -> list[Message]:
    """Legacy: POST /batches twice, then POST /allocate for order-1."""
    rows = [
        ("prod_catalog", {"prod_id": 1, "prod_code": "LAMP", "descr": None}),
        (
            "stock_lot",
            {
                "lot_id": 1,
                "lot_ref": "b-late",
                "prod_id": 1,
                "qty_units": 10,
                "arrival_date": "2024-07-01",
                "created_at": "2024-05-01 10:00:00",
            },
        ),
        (
            "stock_lot",
            {
                "lot_id": 2,
                "lot_ref": "b-now",
                "prod_id": 1,
                "qty_units": 10,
                "arrival_date": None,
                "created_at": "2024-05-01 10:00:00",
            },
        ),
        ("cust_order_line", {"line_id": 1, "order_no": "order-1", "prod_id": 1, "qty_units": 3}),
        (
            "lot_allocation",
            {"alloc_id": 1, "lot_id": 2, "line_id": 1, "allocated_at": "2024-05-01 10:00:01"},
        ),
    ]
    return [message(t, "c", None, row, seq) for seq, (t, row) in enumerate(rows, first_seq)]


class FlakyCommitUnitOfWork(SqlAlchemyUnitOfWork):
    """Commits fail like a lost database while ``failing`` is set."""

    failing = False

    def _commit(self) -> None:
        if self.failing:
            self.connection.rollback()
            raise OperationalError("COMMIT", {}, Exception("server closed the connection"))
        super()._commit()


@pytest.fixture
def new_db_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'new.db'}"
    upgrade_database(url)
    return url


@pytest.fixture
def uow(new_db_url: str) -> Iterator[FlakyCommitUnitOfWork]:
    uow = FlakyCommitUnitOfWork(create_engine(new_db_url, for_writes=True))
    yield uow
    uow.close()


@pytest.fixture
def bus(uow: FlakyCommitUnitOfWork) -> MessageBus:
    return bootstrap(uow=uow)


@pytest.fixture
def publisher(memory_broker_url: str) -> Iterator[Broker]:
    b = broker.connect(memory_broker_url)
    yield b
    b.close()


@pytest.fixture
def make_consumer(bus: MessageBus, memory_broker_url: str) -> Iterator[Callable[..., Consumer]]:
    consumers: list[Consumer] = []

    def make(**options: Any) -> Consumer:
        factory = options.pop("broker_factory", lambda: broker.connect(memory_broker_url))
        consumer = Consumer(bus, factory, QUEUE, **options)
        consumer.connect()
        consumers.append(consumer)
        return consumer

    yield make
    for consumer in consumers:
        consumer.close()


@pytest.fixture
def consumer(make_consumer: Callable[..., Consumer]) -> Consumer:
    return make_consumer()


def allocations(new_db_url: str, orderid: str) -> list[Allocation]:
    read_model = open_read_model(new_db_url)
    try:
        return read_model.allocations_for(orderid)
    finally:
        read_model.close()


def count(uow: SqlAlchemyUnitOfWork, table: Any) -> int:
    with uow.engine.connect() as connection:
        return connection.scalar(select(func.count()).select_from(table)) or 0


def drain(b: Broker, queue: str) -> list[Message]:
    deliveries = b.get_batch(queue, 100, 0.01)
    if deliveries:
        b.ack(deliveries[-1].delivery_tag, multiple=True)
    return [d.message for d in deliveries]


def test_a_batch_is_applied_in_one_go_then_acked(
    consumer: Consumer, publisher: Broker, new_db_url: str
) -> None:
    publisher.publish("legacy.cdc", allocation_story())
    assert consumer.run_once() == 5
    assert allocations(new_db_url, "order-1") == [Allocation("LAMP", "b-now")]
    consumer.close()  # anything unacked would go back to the queue now
    assert publisher.queue_depth(QUEUE) == 0


def test_a_redelivered_change_has_no_effect(
    consumer: Consumer, publisher: Broker, uow: SqlAlchemyUnitOfWork, new_db_url: str
) -> None:
    publisher.publish("legacy.cdc", allocation_story())
    consumer.run_once()
    publisher.publish("legacy.cdc", allocation_story())  # the relay re-sent everything
    assert consumer.run_once() == 5
    with uow:
        lamp = uow.products.get("LAMP")
        assert lamp is not None
        assert lamp.version_number == 3  # two batches and one allocation, once each
        assert lamp.batch("b-now").available_quantity == 7  # type: ignore[union-attr]
    assert count(uow, orm.anomaly) == 0
    assert allocations(new_db_url, "order-1") == [Allocation("LAMP", "b-now")]


def test_a_batch_committed_but_not_acked_is_skipped_when_redelivered(
    make_consumer: Callable[..., Consumer],
    memory_broker_url: str,
    publisher: Broker,
    uow: SqlAlchemyUnitOfWork,
) -> None:
    class AckFails:
        def __init__(self, inner: Broker) -> None:
            self.inner = inner

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

        def ack(self, delivery_tag: int, multiple: bool = False) -> None:
            raise BrokerError("connection lost")

    crashing = make_consumer(broker_factory=lambda: AckFails(broker.connect(memory_broker_url)))
    publisher.publish("legacy.cdc", allocation_story())
    with pytest.raises(BrokerError):
        crashing.run_once()
    crashing.close()
    assert publisher.queue_depth(QUEUE) == 5  # redelivered...
    assert make_consumer().run_once() == 5
    with uow:
        lamp = uow.products.get("LAMP")
        assert lamp is not None and lamp.version_number == 3  # ...without a second effect


def test_an_unparseable_message_is_dead_lettered_and_the_rest_applied(
    consumer: Consumer,
    publisher: Broker,
    new_db_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    story = allocation_story()
    garbage = Message("stock_lot.c", b"{not json", "garbage-1", headers={"x-legacy-seq": 99})
    publisher.publish("legacy.cdc", [*story[:3], garbage, *story[3:]])
    with caplog.at_level(logging.WARNING, logger="new_domain"):
        assert consumer.run_once() == 6
    assert allocations(new_db_url, "order-1") == [Allocation("LAMP", "b-now")]
    [dead] = drain(publisher, f"{QUEUE}.dlq")
    assert (dead.body, dead.message_id, dead.routing_key) == (
        garbage.body,
        "garbage-1",
        "stock_lot.c",
    )
    assert dead.headers["x-error-type"] == "MalformedChange"
    assert "not JSON" in dead.headers["x-error"]
    assert "\n" not in dead.headers["x-error"]
    assert dead.headers["x-attempts"] == 1
    assert dead.headers["x-first-failed-at"].startswith("20")
    assert dead.headers["x-legacy-seq"] == 99
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "garbage-1" in warning.getMessage() and "not JSON" in warning.getMessage()
    consumer.close()
    assert publisher.queue_depth(QUEUE) == 0


def test_a_change_that_fails_when_applied_alone_is_dead_lettered(
    consumer: Consumer, publisher: Broker, new_db_url: str, uow: SqlAlchemyUnitOfWork
) -> None:
    story = allocation_story()
    orphan = message(
        "lot_allocation",
        "c",
        None,
        {"alloc_id": 9, "lot_id": 2, "line_id": 404, "allocated_at": "2024-05-01 10:00:02"},
        6,
    )
    publisher.publish("legacy.cdc", [*story, orphan])
    assert consumer.run_once() == 6
    assert allocations(new_db_url, "order-1") == [Allocation("LAMP", "b-now")]
    [dead] = drain(publisher, f"{QUEUE}.dlq")
    assert dead.message_id == orphan.message_id
    assert dead.headers["x-error-type"] == "UnknownLegacyRow"
    assert dead.headers["x-attempts"] == 3  # the default --max-attempts
    with uow:  # the position passed it: a replay applies exactly the dead ones
        assert uow.positions.get(f"legacy/main/{INSTALL}") == 6
        assert uow.dead_letters.open_state(f"legacy/main/{INSTALL}", 6) == "dead"


def test_nothing_is_acked_when_the_commit_fails(
    make_consumer: Callable[..., Consumer],
    publisher: Broker,
    uow: FlakyCommitUnitOfWork,
    new_db_url: str,
) -> None:
    consumer = make_consumer(db_retry_timeout=0)
    publisher.publish("legacy.cdc", allocation_story())
    uow.failing = True
    with pytest.raises(DatabaseUnavailable):
        consumer.run_once()
    assert publisher.queue_depth(QUEUE) == 5
    assert publisher.queue_depth(f"{QUEUE}.dlq") == 0
    assert allocations(new_db_url, "order-1") == []
    assert count(uow, orm.applied_change_position) == 0

    uow.failing = False
    assert consumer.run_once() == 5
    assert allocations(new_db_url, "order-1") == [Allocation("LAMP", "b-now")]


def test_a_short_database_outage_is_retried_in_place(
    make_consumer: Callable[..., Consumer], publisher: Broker, uow: FlakyCommitUnitOfWork
) -> None:
    consumer = make_consumer(db_retry_timeout=30)
    publisher.publish("legacy.cdc", allocation_story())
    uow.failing = True
    original = uow._begin
    attempts = []

    def begin() -> None:
        attempts.append(1)
        if len(attempts) == 3:
            uow.failing = False  # the database is back for the third attempt
        original()

    uow._begin = begin  # type: ignore[method-assign]
    assert consumer.run_once() == 5
    assert len(attempts) == 3
    assert count(uow, orm.applied_change_position) == 1


def test_heartbeats_are_acked_without_effect(
    consumer: Consumer, publisher: Broker, uow: SqlAlchemyUnitOfWork
) -> None:
    publisher.publish("legacy.cdc", [Message("heartbeat", b"{}", "hb-1", type="heartbeat")])
    assert consumer.run_once() == 1
    consumer.close()
    assert publisher.queue_depth(QUEUE) == 0
    assert publisher.queue_depth(f"{QUEUE}.dlq") == 0
    assert count(uow, orm.applied_change_position) == 0


def test_run_consumes_until_stopped_and_survives_a_broker_outage(
    make_consumer: Callable[..., Consumer],
    memory_broker_url: str,
    publisher: Broker,
    new_db_url: str,
) -> None:
    connects: list[int] = []

    def flaky_factory() -> Broker:
        connects.append(1)
        if len(connects) == 2:
            raise BrokerError("connection refused")
        return broker.connect(memory_broker_url)

    consumer = make_consumer(broker_factory=flaky_factory, reconnect_delay=0.01)
    consumer.close()  # the next connect fails: run() has to retry through the factory
    stop = threading.Event()
    thread = threading.Thread(target=consumer.run, args=(stop,))
    thread.start()
    try:
        publisher.publish("legacy.cdc", allocation_story())
        deadline = time.monotonic() + 10
        while allocations(new_db_url, "order-1") == [] and time.monotonic() < deadline:
            stop.wait(0.02)
        assert allocations(new_db_url, "order-1") == [Allocation("LAMP", "b-now")]
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()
    assert len(connects) >= 3


def test_run_ends_at_once_when_the_broker_refuses_and_never_says_it_consumes(
    bus: MessageBus, caplog: pytest.LogCaptureFixture
) -> None:
    attempts: list[int] = []

    def refusing() -> Broker:
        attempts.append(1)
        raise broker.BrokerRefused("RabbitMQ at h:5672 refused the connection: ACCESS_REFUSED")

    consumer = Consumer(bus, refusing, QUEUE, reconnect_delay=0.01)
    caplog.set_level(logging.INFO, logger="new_domain")

    with pytest.raises(broker.BrokerRefused):
        consumer.run(threading.Event())

    assert attempts == [1]
    assert not [r for r in caplog.records if "consuming" in r.getMessage()]


def test_readiness_is_logged_once_connected_and_a_reconnection_is_logged(
    bus: MessageBus, memory_broker_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    attempts: list[int] = []

    def flaky() -> Broker:
        attempts.append(1)
        if len(attempts) in (1, 3):
            raise BrokerError("connection refused")
        return broker.connect(memory_broker_url)

    consumer = Consumer(bus, flaky, QUEUE, reconnect_delay=0.01, batch_timeout=0.01)
    caplog.set_level(logging.INFO, logger="new_domain")
    stop = threading.Event()
    thread = threading.Thread(target=consumer.run, args=(stop,))
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while len(attempts) < 2 and time.monotonic() < deadline:
            stop.wait(0.01)
        consumer.close()  # the connection is lost: the next round reconnects (after a failure)
        while len(attempts) < 4 and time.monotonic() < deadline:
            stop.wait(0.01)
        while not any("reconnected" in r.getMessage() for r in caplog.records):
            assert time.monotonic() < deadline, "no reconnection logged"
            stop.wait(0.01)
    finally:
        stop.set()
        thread.join(10)
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("new_domain")]
    ready = [m for m in messages if m.startswith("consuming")]
    assert ready == [f"consuming {QUEUE} (connected to the broker)"]
    first_failure = next(i for i, m in enumerate(messages) if "broker unavailable" in m)
    assert first_failure < messages.index(ready[0])
    assert f"reconnected to the broker: consuming {QUEUE} again" in messages
