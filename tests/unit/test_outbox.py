"""The transactional outbox: one row per state change, written with it; bodies that
follow the published schemas; a relay that publishes each row and marks it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from sqlalchemy import select

import broker
from broker import Broker, BrokerError, Message, QueueSpec
from new_domain import bootstrap, ingest
from new_domain.adapters import orm
from new_domain.adapters.database import create_engine
from new_domain.entrypoints.outbox_relay import OutboxRelay, Pace
from new_domain.ingest import apply_changes
from new_domain.service_layer.messagebus import MessageBus
from new_domain.service_layer.unit_of_work import SqlAlchemyUnitOfWork
from tests.integration.consumer_streams import LegacyShopStream, migrated_sqlite_url

SCHEMAS = Path(__file__).resolve().parents[2] / "docs" / "schemas"
EXCHANGE = "new_domain.events"
KEYS = {
    "BatchCreated": ("batch.created", "new-domain-batch-created"),
    "Allocated": ("allocation.allocated", "new-domain-allocated"),
    "Deallocated": ("allocation.deallocated", "new-domain-deallocated"),
    "BatchQuantityChanged": ("batch.quantity_changed", "new-domain-batch-quantity-changed"),
}


@pytest.fixture
def new_db_url(tmp_path: Path) -> str:
    return migrated_sqlite_url(tmp_path)


@pytest.fixture
def bus(new_db_url: str) -> Iterator[MessageBus]:
    uow = SqlAlchemyUnitOfWork(create_engine(new_db_url, for_writes=True))
    yield bootstrap(uow=uow)
    uow.close()


def changes(messages: list[Message]) -> list[ingest.LegacyChange]:
    return [ingest.parse_change(m.body, m.message_id) for m in messages]


def outbox_rows(new_db_url: str) -> list[dict[str, Any]]:
    engine = create_engine(new_db_url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(select(orm.outbox).order_by(orm.outbox.c.id)).mappings()
            return [dict(row) for row in rows]
    finally:
        engine.dispose()


def a_day() -> LegacyShopStream:
    stream = LegacyShopStream()
    stream.add_batch("b1", "LAMP", 10, None)
    stream.add_batch("b2", "LAMP", 10, "2027-01-01")
    stream.allocate("o1", "LAMP", 6)
    stream.allocate("o2", "LAMP", 3)
    stream.deallocate(stream.line_of("o2"))
    stream.change_quantity(1, 4)  # o1 no longer fits b1: moved to b2
    return stream


def test_each_state_change_writes_one_row_and_a_redelivery_none(
    bus: MessageBus, new_db_url: str
) -> None:
    stream = a_day()
    apply_changes(bus, changes(stream.messages))
    apply_changes(bus, changes(stream.messages))  # all delivered again
    apply_changes(bus, changes(stream.messages[-3:]))  # and the end once more
    rows = outbox_rows(new_db_url)
    assert [(r["event_type"], json.loads(r["body"])["data"]) for r in rows] == [
        ("BatchCreated", {"ref": "b1", "sku": "LAMP", "qty": 10, "eta": None}),
        ("BatchCreated", {"ref": "b2", "sku": "LAMP", "qty": 10, "eta": "2027-01-01"}),
        ("Allocated", {"orderid": "o1", "sku": "LAMP", "qty": 6, "batchref": "b1"}),
        ("Allocated", {"orderid": "o2", "sku": "LAMP", "qty": 3, "batchref": "b1"}),
        ("Deallocated", {"orderid": "o2", "sku": "LAMP", "batchref": "b1"}),
        ("BatchQuantityChanged", {"ref": "b1", "sku": "LAMP", "qty": 4}),
        ("Deallocated", {"orderid": "o1", "sku": "LAMP", "batchref": "b1"}),
        ("Allocated", {"orderid": "o1", "sku": "LAMP", "qty": 6, "batchref": "b2"}),
    ]
    assert len({r["message_id"] for r in rows}) == len(rows)
    assert all(r["published_at"] is None for r in rows)


def test_bodies_follow_the_published_schemas(bus: MessageBus, new_db_url: str) -> None:
    stream = a_day()
    apply_changes(bus, changes(stream.messages))
    rows = outbox_rows(new_db_url)
    assert {r["event_type"] for r in rows} == set(KEYS)
    for row in rows:
        routing_key, schema_name = KEYS[row["event_type"]]
        schema = json.loads((SCHEMAS / f"{schema_name}.schema.json").read_text())
        body = json.loads(row["body"])
        jsonschema.validate(body, schema, format_checker=jsonschema.FormatChecker())
        assert row["routing_key"] == routing_key
        assert body["message_id"] == row["message_id"]
        assert body["legacy_change"].startswith(stream.install)
        assert body["decision"] is None  # mirrored from legacy: no decision of ours


@pytest.fixture
def subscriber(memory_broker_url: str) -> Iterator[Broker]:
    b = broker.connect(memory_broker_url)
    b.declare_queue(QueueSpec("subscriber", [(EXCHANGE, "allocation.*"), (EXCHANGE, "batch.#")]))
    yield b
    b.close()


def received(b: Broker) -> list[Message]:
    deliveries = b.get_batch("subscriber", 1000, 0.01)
    if deliveries:
        b.ack(deliveries[-1].delivery_tag, multiple=True)
    return [d.message for d in deliveries]


def test_the_relay_publishes_every_row_once_and_marks_it(
    bus: MessageBus, new_db_url: str, memory_broker_url: str, subscriber: Broker
) -> None:
    apply_changes(bus, changes(a_day().messages))
    engine = create_engine(new_db_url, for_writes=True)
    relay = OutboxRelay(engine, lambda: broker.connect(memory_broker_url), batch_size=4)
    try:
        assert relay.drain() == 8
        assert relay.drain() == 0
    finally:
        relay.close()
        engine.dispose()
    rows = outbox_rows(new_db_url)
    messages = received(subscriber)
    assert [m.message_id for m in messages] == [r["message_id"] for r in rows]
    assert [m.type for m in messages] == [r["event_type"] for r in rows]
    assert [m.routing_key for m in messages] == [r["routing_key"] for r in rows]
    assert all(r["published_at"] is not None for r in rows)


def test_a_relay_that_fails_before_marking_publishes_the_same_ids_again(
    bus: MessageBus, new_db_url: str, memory_broker_url: str, subscriber: Broker
) -> None:
    apply_changes(bus, changes(a_day().messages))
    engine = create_engine(new_db_url, for_writes=True)

    class LosesConfirms:
        """Publishes, then loses the connection before the confirms are seen."""

        def __init__(self) -> None:
            self.inner = broker.connect(memory_broker_url)

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

        def publish(self, exchange: str, messages: Any) -> None:
            self.inner.publish(exchange, messages)
            raise BrokerError("connection lost")

    crashing = OutboxRelay(engine, LosesConfirms)  # type: ignore[arg-type]
    with pytest.raises(BrokerError):
        crashing.run_once()
    crashing.close()
    relay = OutboxRelay(engine, lambda: broker.connect(memory_broker_url))
    try:
        assert relay.drain() == 8
    finally:
        relay.close()
        engine.dispose()
    ids = [m.message_id for m in received(subscriber)]
    assert len(ids) == 16 and len(set(ids)) == 8  # at least once; duplicates share an id


def test_the_relay_waits_a_few_milliseconds_while_events_come_then_backs_off() -> None:
    now = [0.0]
    pace = Pace(poll_interval=0.1, fast=0.005, linger=1.0, clock=lambda: now[0])

    assert pace.next_wait(0) == 0.1  # idle from the start: one look per poll interval
    assert pace.next_wait(3) == 0.005  # published: look again soon
    now[0] = 0.5
    assert pace.next_wait(0) == 0.005  # still within the linger
    now[0] = 1.2
    waits = [pace.next_wait(0) for _ in range(6)]
    assert waits == [0.01, 0.02, 0.04, 0.08, 0.1, 0.1]  # doubling up to the poll interval
    assert pace.next_wait(1) == 0.005
