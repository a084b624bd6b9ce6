"""Batches: bounded by size and time, one transaction and one ack each, ending with a
legacy transaction. In-process broker, SQLite new database."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import broker
from broker import Broker, Message
from new_domain import Consumer, bootstrap, open_read_model
from new_domain.adapters.database import create_engine
from new_domain.service_layer.unit_of_work import SqlAlchemyUnitOfWork
from tests.integration.consumer_streams import LegacyShopStream, migrated_sqlite_url

QUEUE = "new_domain.legacy_cdc"


class CountingUnitOfWork(SqlAlchemyUnitOfWork):
    commits = 0

    def _commit(self) -> None:
        super()._commit()
        self.commits += 1


class CountingBroker:
    """A broker that counts acknowledgements."""

    def __init__(self, inner: Broker, acks: list[tuple[int, bool]]) -> None:
        self.inner = inner
        self.acks = acks

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def ack(self, delivery_tag: int, multiple: bool = False) -> None:
        self.acks.append((delivery_tag, multiple))
        self.inner.ack(delivery_tag, multiple)


@pytest.fixture
def new_db_url(tmp_path: Path) -> str:
    return migrated_sqlite_url(tmp_path)


@pytest.fixture
def uow(new_db_url: str) -> Iterator[CountingUnitOfWork]:
    uow = CountingUnitOfWork(create_engine(new_db_url, for_writes=True))
    yield uow
    uow.close()


@pytest.fixture
def publisher(memory_broker_url: str) -> Iterator[Broker]:
    b = broker.connect(memory_broker_url)
    yield b
    b.close()


@pytest.fixture
def acks() -> list[tuple[int, bool]]:
    return []


@pytest.fixture
def make_consumer(
    uow: CountingUnitOfWork, memory_broker_url: str, acks: list[tuple[int, bool]]
) -> Iterator[Callable[..., Consumer]]:
    made: list[Consumer] = []

    def make(**options: Any) -> Consumer:
        factory = lambda: CountingBroker(broker.connect(memory_broker_url), acks)  # noqa: E731
        consumer = Consumer(bootstrap(uow=uow), factory, QUEUE, **options)  # type: ignore[arg-type]
        consumer.connect()
        made.append(consumer)
        return consumer

    yield make
    for consumer in made:
        consumer.close()


def transaction_of(message: Message) -> dict[str, Any]:
    block: dict[str, Any] = json.loads(message.body)["transaction"]
    return block


def test_batches_are_bounded_by_size_and_end_with_a_legacy_transaction(
    make_consumer: Callable[..., Consumer],
    publisher: Broker,
    uow: CountingUnitOfWork,
    acks: list[tuple[int, bool]],
    new_db_url: str,
) -> None:
    stream = LegacyShopStream(seed=3)
    stream.busy_day(1000, products=5, lots_per_product=3)
    consumer = make_consumer(batch_size=100, batch_timeout=0.05)
    publisher.publish("legacy.cdc", stream.messages)
    sizes = []
    while (taken := consumer.run_once()) > 0:
        sizes.append(taken)
    assert sum(sizes) == len(stream.messages)
    assert all(size <= 100 for size in sizes)
    ends = [stream.messages[sum(sizes[: i + 1]) - 1] for i in range(len(sizes))]
    assert all(transaction_of(m)["last"] for m in ends)
    assert uow.commits == len(sizes)  # one database transaction per batch...
    assert len(acks) == len(sizes) and all(multiple for _, multiple in acks)  # ...one ack
    with open_read_model(new_db_url) as read_model:
        expected = stream.expected_allocations()
        for orderid in list(expected)[:50]:
            assert [(a.sku, a.batchref) for a in read_model.allocations_for(orderid)] == (
                expected[orderid]
            )
    assert publisher.queue_depth(QUEUE) == 0


def test_what_arrived_is_applied_when_the_batch_timeout_passes(
    make_consumer: Callable[..., Consumer], publisher: Broker, uow: CountingUnitOfWork
) -> None:
    stream = LegacyShopStream()
    stream.add_batch("b1", "LAMP", 10, None)
    consumer = make_consumer(batch_size=500, batch_timeout=0.05)
    publisher.publish("legacy.cdc", stream.messages)
    assert consumer.run_once() == 2
    assert uow.commits == 1


class PollRecordingBroker(CountingBroker):
    """Records how long each ``get_batch`` was allowed to wait; never waits itself."""

    def __init__(self, inner: Broker, acks: list[tuple[int, bool]], waits: list[float]) -> None:
        super().__init__(inner, acks)
        self.waits = waits

    def get_batch(self, queue: str, max_messages: int, timeout: float) -> Any:
        self.waits.append(timeout)
        return self.inner.get_batch(queue, max_messages, 0)


def test_a_whole_transaction_is_applied_when_nothing_more_is_ready(
    uow: CountingUnitOfWork,
    memory_broker_url: str,
    publisher: Broker,
    acks: list[tuple[int, bool]],
) -> None:
    stream = LegacyShopStream()
    stream.add_batch("b1", "LAMP", 10, None)
    waits: list[float] = []
    factory = lambda: PollRecordingBroker(broker.connect(memory_broker_url), acks, waits)  # noqa: E731
    consumer = Consumer(bootstrap(uow=uow), factory, QUEUE, batch_size=500, batch_timeout=60)  # type: ignore[arg-type]
    consumer.connect()
    try:
        publisher.publish("legacy.cdc", stream.messages)
        assert consumer.run_once() == 2
    finally:
        consumer.close()
    assert waits[0] == pytest.approx(60, abs=1)  # nothing pending: wait for the first
    assert waits[1:] == [0.0]  # a whole transaction in hand: only what is ready now


def test_an_unfinished_legacy_transaction_waits_for_its_last_event(
    make_consumer: Callable[..., Consumer],
    publisher: Broker,
    uow: CountingUnitOfWork,
    new_db_url: str,
) -> None:
    stream = LegacyShopStream()
    stream.add_batch("b1", "LAMP", 10, None)
    stream.allocate("o1", "LAMP", 2)
    first, allocation = stream.messages[:3], stream.messages[3]
    assert not transaction_of(first[-1])["last"]
    consumer = make_consumer(batch_size=500, batch_timeout=0.02, transaction_hold=30)
    publisher.publish("legacy.cdc", first)
    assert consumer.run_once() == 2  # the batch's transaction, not the open one
    assert consumer.run_once() == 0  # the order line waits for the rest of its transaction
    publisher.publish("legacy.cdc", [allocation])
    assert consumer.run_once() == 2  # line and allocation: one legacy transaction...
    assert uow.commits == 2  # ...in one database transaction
    with open_read_model(new_db_url) as read_model:
        assert [a.batchref for a in read_model.allocations_for("o1")] == ["b1"]


def test_an_unfinished_transaction_is_applied_after_the_hold(
    make_consumer: Callable[..., Consumer], publisher: Broker
) -> None:
    stream = LegacyShopStream()
    stream.add_batch("b1", "LAMP", 10, None)
    stream.allocate("o1", "LAMP", 2)
    consumer = make_consumer(batch_size=500, batch_timeout=0.02, transaction_hold=0.05)
    publisher.publish("legacy.cdc", stream.messages[2:3])  # the line, never its allocation
    publisher.publish("legacy.cdc", stream.messages[:2])
    taken = 0
    for _ in range(20):
        taken += consumer.run_once()
        if taken == 3:
            break
    assert taken == 3
    consumer.close()
    assert publisher.queue_depth(QUEUE) == 0


def test_the_simulated_streams_follow_the_published_schemas() -> None:
    import jsonschema

    schemas = Path(__file__).resolve().parents[2] / "docs" / "schemas"
    change = jsonschema.Draft202012Validator(
        json.loads((schemas / "legacy-cdc-change.schema.json").read_text())
    )
    heartbeat = json.loads((schemas / "legacy-cdc-heartbeat.schema.json").read_text())
    stream = LegacyShopStream()
    stream.busy_day(300, products=3, lots_per_product=2)
    stream.snapshot()
    for message in stream.messages:
        change.validate(json.loads(message.body))
    jsonschema.validate(json.loads(stream.heartbeat().body), heartbeat)
