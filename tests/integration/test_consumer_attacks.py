"""Forged and hostile messages on ``legacy.cdc``, against PostgreSQL and RabbitMQ.

- A forged change carrying the real stream's identity and a huge ``source.seq`` used
  to become the stream's position, after which every real change was skipped as
  "already applied" with nothing logged. Now a change of a stream with dense positions
  must come right after the last one applied: the forged one is dead-lettered at once
  with the reason, counted, and the position stays.
- Messages whose dead-letter record could not be stored (an AMQP ``type`` over 64
  characters, a ``content_type`` over 128, a ``source.seq`` of 2^63, NUL in strings, a
  255-character message id) used to wedge the consumer: nothing acked, nothing
  dead-lettered, forever. Now every one reaches the dead-letter queue with its raw body
  and the stream goes on.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

import broker
from broker import Broker, Message
from new_domain import Consumer, bootstrap, metrics, open_read_model, upgrade_database
from new_domain.adapters.database import create_engine
from tests.integration.consumer_streams import INSTALL, LegacyShopStream
from tests.services import unique_name

pytestmark = [pytest.mark.postgres, pytest.mark.rabbitmq]


@pytest.fixture
def names() -> dict[str, str]:
    return {"exchange": unique_name("test_attack_cdc"), "queue": unique_name("test_attack_q")}


@pytest.fixture
def rabbit(amqp_url: str, names: dict[str, str]) -> Iterator[Broker]:
    connection = broker.connect(amqp_url)
    yield connection
    for name in (names["queue"], f"{names['queue']}.dlq", f"{names['exchange']}.unrouted"):
        connection.delete_queue(name)
    connection.close()


@pytest.fixture
def consumer(pg_url: str, amqp_url: str, names: dict[str, str]) -> Iterator[Consumer]:
    upgrade_database(pg_url)
    bus = bootstrap(pg_url)
    consumer = Consumer(
        bus,
        lambda: broker.connect(amqp_url),
        names["queue"],
        exchange=names["exchange"],
        batch_timeout=0.05,
        retry_backoff=0.001,
        db_retry_timeout=5.0,
    )
    consumer.connect()
    yield consumer
    consumer.close()
    bus.uow.close()


def deliver(rabbit: Broker, consumer: Consumer, exchange: str, messages: list[Message]) -> None:
    """Publish ``messages`` and consume until every one was acknowledged."""
    rabbit.publish(exchange, messages)
    taken = 0
    while taken < len(messages):
        taken += consumer.run_once()


def allocations(url: str, orderid: str) -> list[tuple[str, str]]:
    with open_read_model(url) as read_model:
        return [(a.sku, a.batchref) for a in read_model.allocations_for(orderid)]


def stored_position(url: str, stream: str) -> int | None:
    engine = create_engine(url)
    try:
        with engine.connect() as c:
            row = c.exec_driver_sql(
                "SELECT position FROM applied_change_position WHERE stream = %(s)s", {"s": stream}
            ).one_or_none()
        return None if row is None else int(row[0])
    finally:
        engine.dispose()


def dead_letters(rabbit: Broker, queue: str, expected: int) -> list[Message]:
    """The dead-letter queue's messages, once ``expected`` of them are there (they were
    published with confirms before the originals were acked, so they are)."""
    assert rabbit.queue_depth(f"{queue}.dlq") == expected
    taken: list[Message] = []
    while len(taken) < expected:  # a get may hand over fewer than are ready
        # the window counts what was handed over and not acked yet: ask for all of them
        got = rabbit.get_batch(f"{queue}.dlq", expected, 1.0)
        assert got, f"{len(taken)} of {expected} dead letters taken"
        taken += [d.message for d in got]
    return taken


def forged(seq: int, table: str = "audit_log") -> Message:
    """A no-op change with the real stream's identity (its install id) and position ``seq``."""
    body = {
        "before": None,
        "after": {"id": 1},
        "op": "c",
        "ts_ms": 1,
        "source": {"name": "legacy", "db": "shop", "table": table, "seq": seq, "change_id": seq},
    }
    return Message(f"{table}.c", json.dumps(body).encode(), f"{INSTALL}:{seq}")


def test_a_forged_position_is_dead_lettered_and_never_becomes_the_streams_position(
    pg_url: str, names: dict[str, str], rabbit: Broker, consumer: Consumer
) -> None:
    stream = LegacyShopStream()
    stream.add_batch("b1", "LAMP", 100, None)
    stream.allocate("o1", "LAMP", 2)
    deliver(rabbit, consumer, names["exchange"], stream.messages)
    key = f"legacy/shop/{INSTALL}"
    before = stored_position(pg_url, key)
    assert before == len(stream.messages)
    refused = metrics.OUT_OF_SEQUENCE._value.get()

    deliver(rabbit, consumer, names["exchange"], [forged(10**12)])
    assert stored_position(pg_url, key) == before  # the position did not move
    assert metrics.OUT_OF_SEQUENCE._value.get() == refused + 1

    real = len(stream.messages)
    stream.allocate("o2", "LAMP", 3)  # the real stream goes on
    deliver(rabbit, consumer, names["exchange"], stream.messages[real:])
    assert allocations(pg_url, "o2") == [("LAMP", "b1")]  # applied, not skipped
    assert stored_position(pg_url, key) == len(stream.messages)

    [dead] = dead_letters(rabbit, names["queue"], 1)
    assert dead.message_id == f"{INSTALL}:{10**12}"
    assert dead.headers["x-error-type"] == "OutOfSequence"
    assert f"expected {before + 1}" in dead.headers["x-error"]


def poison() -> list[Message]:
    """Messages whose dead-letter record does not fit the table as they are (each at a
    position of its own in a stream of its own, so none is a redelivery of another)."""

    def body(seq: int, **source: Any) -> bytes:
        envelope = {
            "before": None,
            "after": {"alloc_id": 1, "lot_id": 999, "line_id": 999, "allocated_at": None},
            "op": "c",
            "source": {"name": "legacy", "db": "other", "table": "lot_allocation", "seq": seq},
        }
        envelope["source"].update(source)
        return json.dumps(envelope).encode()

    return [
        Message("lot_allocation.c", body(1), "long-type", type="t" * 100),
        Message("lot_allocation.c", body(2), "long-content-type", content_type="c" * 200),
        Message("lot_allocation.c", body(2**63), "huge-seq"),
        Message("lot_allocation.c", body(4, table="lot\x00allocation"), "nul-table"),
        Message("lot_allocation.c", body(5), "nul\x00id"),
        Message("lot_allocation.c", body(6), "i" * 255, headers={"x-note": "nul\x00here"}),
    ]


def test_every_hostile_message_reaches_the_dead_letter_queue_and_the_stream_goes_on(
    pg_url: str, names: dict[str, str], rabbit: Broker, consumer: Consumer
) -> None:
    stream = LegacyShopStream()
    stream.add_batch("b1", "LAMP", 100, None)
    messages = poison()
    deliver(rabbit, consumer, names["exchange"], [*messages, *stream.messages])
    real = len(stream.messages)
    stream.allocate("o1", "LAMP", 2)
    deliver(rabbit, consumer, names["exchange"], stream.messages[real:])
    assert allocations(pg_url, "o1") == [("LAMP", "b1")]

    dead = dead_letters(rabbit, names["queue"], len(messages))
    assert sorted(m.body for m in dead) == sorted(m.body for m in messages)  # raw bodies kept
    assert all(m.headers.get("x-error") for m in dead)
