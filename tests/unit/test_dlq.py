"""Dead letters: attempts counted by the consumer, reasons in headers, a failing message
never holding the others back, and replays that apply dead positions exactly once.
In-process broker, SQLite new database."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

import broker
from broker import Broker, Message
from new_domain import Consumer, bootstrap, open_read_model
from new_domain.adapters import orm
from new_domain.adapters.database import create_engine
from new_domain.domain import commands
from new_domain.entrypoints.dead_letter_queue import peek, replay
from new_domain.ingest import Interrupted
from new_domain.service_layer.messagebus import MessageBus
from new_domain.service_layer.unit_of_work import SqlAlchemyUnitOfWork
from tests.integration.consumer_streams import LegacyShopStream, migrated_sqlite_url

QUEUE = "new_domain.legacy_cdc"


class Fault:
    """Makes the handler of ``CreateBatch`` fail for one batch reference while on."""

    def __init__(self, bus: MessageBus, ref: str, times: int | None = None) -> None:
        self.on = True
        self.calls = 0
        original = bus.command_handlers[commands.CreateBatch]

        def handler(command: commands.CreateBatch) -> Any:
            if self.on and command.ref == ref and (times is None or self.calls < times):
                self.calls += 1
                raise RuntimeError(f"cannot store batch {ref}\n(second line)")
            return original(command)

        bus.command_handlers[commands.CreateBatch] = handler  # type: ignore[index]


@pytest.fixture
def new_db_url(tmp_path: Path) -> str:
    return migrated_sqlite_url(tmp_path)


@pytest.fixture
def uow(new_db_url: str) -> Iterator[SqlAlchemyUnitOfWork]:
    uow = SqlAlchemyUnitOfWork(create_engine(new_db_url, for_writes=True))
    yield uow
    uow.close()


@pytest.fixture
def bus(uow: SqlAlchemyUnitOfWork) -> MessageBus:
    return bootstrap(uow=uow)


@pytest.fixture
def publisher(memory_broker_url: str) -> Iterator[Broker]:
    b = broker.connect(memory_broker_url)
    yield b
    b.close()


@pytest.fixture
def make_consumer(bus: MessageBus, memory_broker_url: str) -> Iterator[Callable[..., Consumer]]:
    made: list[Consumer] = []

    def make(**options: Any) -> Consumer:
        options.setdefault("retry_backoff", 0.001)
        options.setdefault("batch_timeout", 0.02)
        consumer = Consumer(bus, lambda: broker.connect(memory_broker_url), QUEUE, **options)
        consumer.connect()
        made.append(consumer)
        return consumer

    yield make
    for consumer in made:
        consumer.close()


def story() -> LegacyShopStream:
    """Two lots; orders on both; the second lot's quantity changes afterwards."""
    stream = LegacyShopStream()
    stream.add_batch("good", "LAMP", 10, None)
    stream.add_batch("bad", "CHAIR", 10, None)
    stream.allocate("o1", "LAMP", 1)
    stream.allocate("o2", "CHAIR", 2)  # fails too: its lot never got created
    stream.change_quantity(2, 7)  # of "bad": an update of a row never created
    stream.allocate("o3", "LAMP", 3)
    return stream


def bad_lot(stream: LegacyShopStream) -> Message:
    """The creation of the lot the fault is about."""
    return next(m for m in stream.messages if m.routing_key == "stock_lot.c" and b'"bad"' in m.body)


def drain(b: Broker, queue: str) -> list[Message]:
    deliveries = peek(b, queue, 1000)
    if deliveries:
        b.ack(deliveries[-1].delivery_tag, multiple=True)
    return [d.message for d in deliveries]


def allocations(new_db_url: str, orderid: str) -> list[str]:
    with open_read_model(new_db_url) as read_model:
        return [a.batchref for a in read_model.allocations_for(orderid)]


def dead_letter_rows(uow: SqlAlchemyUnitOfWork) -> list[tuple[str, str, int]]:
    t = orm.dead_letter
    with uow.engine.connect() as connection:
        rows = connection.execute(select(t.c.message_id, t.c.state, t.c.attempts).order_by(t.c.id))
        return [tuple(row) for row in rows]  # type: ignore[misc]


def test_a_failing_message_is_retried_alone_then_dead_lettered_while_the_rest_applies(
    make_consumer: Callable[..., Consumer],
    bus: MessageBus,
    publisher: Broker,
    uow: SqlAlchemyUnitOfWork,
    new_db_url: str,
) -> None:
    fault = Fault(bus, "bad")
    stream = story()
    consumer = make_consumer(max_attempts=3)
    publisher.publish("legacy.cdc", stream.messages)
    assert consumer.run_once() == len(stream.messages)
    assert allocations(new_db_url, "o1") == ["good"]
    assert allocations(new_db_url, "o3") == ["good"]  # after the failures, in order
    assert allocations(new_db_url, "o2") == []
    dead = drain(publisher, f"{QUEUE}.dlq")
    lot = bad_lot(stream)
    assert [m.message_id for m in dead][0] == lot.message_id
    assert fault.calls == 3  # once in the batch, twice alone
    first = dead[0].headers
    assert first["x-error-type"] == "RuntimeError"
    assert first["x-error"] == "cannot store batch bad (second line)"
    assert first["x-attempts"] == 3
    assert first["x-first-failed-at"].startswith("20")
    assert first["x-legacy-seq"] == 4  # the original headers are kept
    assert dead[0].body == lot.body and dead[0].routing_key == lot.routing_key
    assert {m.headers["x-error-type"] for m in dead[1:]} == {"UnknownLegacyRow"}
    assert all(state == "dead" for _, state, _ in dead_letter_rows(uow))
    consumer.close()
    assert publisher.queue_depth(QUEUE) == 0


def test_a_message_that_succeeds_when_retried_is_applied_once(
    make_consumer: Callable[..., Consumer],
    bus: MessageBus,
    publisher: Broker,
    uow: SqlAlchemyUnitOfWork,
    new_db_url: str,
) -> None:
    fault = Fault(bus, "bad", times=1)
    stream = story()
    consumer = make_consumer(max_attempts=3)
    publisher.publish("legacy.cdc", stream.messages)
    assert consumer.run_once() == len(stream.messages)
    assert fault.calls == 1
    assert allocations(new_db_url, "o2") == ["bad"]
    assert publisher.queue_depth(f"{QUEUE}.dlq") == 0
    assert dead_letter_rows(uow) == [(bad_lot(stream).message_id, "resolved", 1)]
    with uow:
        chair = uow.products.get("CHAIR")
        assert chair is not None and chair.batch("bad").purchased_quantity == 7  # type: ignore[union-attr]


def test_attempts_are_counted_across_redeliveries_and_restarts(
    make_consumer: Callable[..., Consumer],
    bus: MessageBus,
    publisher: Broker,
    uow: SqlAlchemyUnitOfWork,
) -> None:
    Fault(bus, "bad")
    stream = story()
    stop = threading.Event()
    first = make_consumer(max_attempts=4)
    first.failures.stop = stop  # as run(stop) does
    publisher.publish("legacy.cdc", stream.messages)
    original = first.failures._record_failure

    def record_then_stop(*args: Any) -> Any:
        row = original(*args)
        if row.attempts == 2:
            stop.set()  # SIGTERM while the message is being retried
        return row

    first.failures._record_failure = record_then_stop  # type: ignore[method-assign]
    with pytest.raises(Interrupted):
        first.run_once()
    first.close()
    assert publisher.queue_depth(QUEUE) == len(stream.messages)  # all handed back
    assert dead_letter_rows(uow) == [(bad_lot(stream).message_id, "retrying", 2)]

    second = make_consumer(max_attempts=4)
    assert second.run_once() == len(stream.messages)
    [dead, *_] = drain(publisher, f"{QUEUE}.dlq")
    assert dead.message_id == bad_lot(stream).message_id
    assert dead.headers["x-attempts"] == 4  # 2 before the restart, 2 after


def test_replay_applies_dead_positions_below_the_stored_position_exactly_once(
    make_consumer: Callable[..., Consumer],
    bus: MessageBus,
    publisher: Broker,
    uow: SqlAlchemyUnitOfWork,
    new_db_url: str,
    memory_broker_url: str,
) -> None:
    fault = Fault(bus, "bad")
    stream = story()
    consumer = make_consumer(max_attempts=2)
    publisher.publish("legacy.cdc", stream.messages)
    consumer.run_once()
    assert publisher.queue_depth(f"{QUEUE}.dlq") == 3
    with uow:
        assert uow.positions.get(f"legacy/shop/{stream.install}") == len(stream.messages)

    fault.on = False  # the bug is fixed
    replayer = broker.connect(memory_broker_url)
    try:
        report = replay(bus, replayer, QUEUE)
    finally:
        replayer.close()
    assert len(report.applied) == 3 and not report.failed
    assert allocations(new_db_url, "o2") == ["bad"]
    with uow:
        chair = uow.products.get("CHAIR")
        assert chair is not None
        assert chair.batch("bad").purchased_quantity == 7  # type: ignore[union-attr]
        assert chair.version_number == 3  # created, allocated, changed: once each
    assert publisher.queue_depth(f"{QUEUE}.dlq") == 0
    assert {state for _, state, _ in dead_letter_rows(uow)} == {"resolved"}

    publisher.publish("legacy.cdc", stream.messages)  # everything again: nothing changes
    consumer.run_once()
    with uow:
        chair = uow.products.get("CHAIR")
        assert chair is not None and chair.version_number == 3


def test_a_replayed_message_that_fails_again_returns_with_the_new_reason(
    make_consumer: Callable[..., Consumer],
    bus: MessageBus,
    publisher: Broker,
    uow: SqlAlchemyUnitOfWork,
    memory_broker_url: str,
) -> None:
    Fault(bus, "bad")
    stream = story()
    consumer = make_consumer(max_attempts=1)
    publisher.publish("legacy.cdc", stream.messages)
    consumer.run_once()
    lot = bad_lot(stream).message_id
    replayer = broker.connect(memory_broker_url)
    try:
        report = replay(bus, replayer, QUEUE, ids=[lot, "nobody"])
    finally:
        replayer.close()
    assert [message_id for message_id, _ in report.failed] == [lot]
    assert report.not_found == ["nobody"]
    dead = {m.message_id: m for m in drain(publisher, f"{QUEUE}.dlq")}
    assert len(dead) == 3  # the two not chosen stayed, the replayed one came back
    assert dead[lot].headers["x-attempts"] == 2
    assert dead[lot].headers["x-error-type"] == "RuntimeError"


def test_an_undecodable_message_redelivered_after_a_crash_is_dead_lettered_once(
    make_consumer: Callable[..., Consumer], publisher: Broker, uow: SqlAlchemyUnitOfWork
) -> None:
    first = make_consumer()
    publisher.publish("legacy.cdc", [Message("stock_lot.c", b"{not json", "poison-1")])
    connection = first._connected()

    def killed(*args: Any, **kwargs: Any) -> None:
        raise SystemExit("killed after the dead letter was published, before the ack")

    connection.ack = killed  # type: ignore[method-assign]
    with pytest.raises(SystemExit):
        first.run_once()
    first.close()
    assert publisher.queue_depth(QUEUE) == 1  # never acked: it comes again

    second = make_consumer()
    assert second.run_once() == 1
    assert [m.message_id for m in drain(publisher, f"{QUEUE}.dlq")] == ["poison-1"]
    assert publisher.queue_depth(QUEUE) == 0
    assert dead_letter_rows(uow) == [("poison-1", "dead", 2)]
