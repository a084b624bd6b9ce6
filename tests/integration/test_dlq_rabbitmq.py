"""Dead letters on PostgreSQL and RabbitMQ: a poison message ends in the dead-letter
queue with its reason while every other message is applied; `strangler dlq list` shows
it and `strangler dlq replay` applies it once the cause is fixed."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from click.testing import CliRunner

import broker
from broker import Broker, Message
from new_domain import Consumer, bootstrap, open_read_model, upgrade_database
from new_domain.domain import commands
from new_domain.entrypoints.commands import dlq
from new_domain.service_layer import handlers
from tests.integration.consumer_streams import LegacyShopStream
from tests.services import unique_name

pytestmark = [pytest.mark.postgres, pytest.mark.rabbitmq]


@pytest.fixture
def names() -> dict[str, str]:
    return {"exchange": unique_name("test_dlq_cdc"), "queue": unique_name("test_dlq_q")}


@pytest.fixture
def rabbit(amqp_url: str, names: dict[str, str]) -> Iterator[Broker]:
    connection = broker.connect(amqp_url)
    yield connection
    for name in (names["queue"], f"{names['queue']}.dlq", f"{names['exchange']}.unrouted"):
        connection.delete_queue(name)
    connection.close()


@pytest.fixture
def broken_batch_store(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Storing the batch ``bad`` fails (a bug in the new domain, fixed later)."""
    original = handlers.COMMAND_HANDLERS[commands.CreateBatch]

    def add_batch(command: commands.CreateBatch, uow: Any) -> None:
        if command.ref == "bad":
            raise RuntimeError("batch bad: cannot store\nits eta")
        original(command, uow)

    monkeypatch.setitem(handlers.COMMAND_HANDLERS, commands.CreateBatch, add_batch)
    yield


def the_day() -> LegacyShopStream:
    stream = LegacyShopStream(seed=9)
    stream.busy_day(600, products=6, lots_per_product=3)
    stream.add_batch("bad", "NEW-SKU", 100, None)
    for n in range(3):
        stream.allocate(f"late-{n}", "NEW-SKU", 2)
    stream.busy_day(len(stream.messages) + 200, products=6, lots_per_product=0)
    return stream


def allocations(url: str) -> dict[str, list[tuple[str, str]]]:
    with open_read_model(url) as read_model:
        found = read_model.allocations_by_order(read_model.orderids())
    return {o: [(a.sku, a.batchref) for a in rows] for o, rows in found.items()}


def consume(url: str, amqp_url: str, names: dict[str, str], messages: list[Message]) -> None:
    bus = bootstrap(url)
    consumer = Consumer(
        bus,
        lambda: broker.connect(amqp_url),
        names["queue"],
        exchange=names["exchange"],
        batch_timeout=0.05,
        retry_backoff=0.001,
    )
    try:
        consumer.connect()
        publisher = broker.connect(amqp_url)
        publisher.publish(names["exchange"], messages)
        publisher.close()
        taken = 0
        while taken < len(messages):
            taken += consumer.run_once()
    finally:
        consumer.close()
        bus.uow.close()


def test_a_poison_message_is_dead_lettered_with_its_reason_and_replayed_once_fixed(
    pg_url: str,
    amqp_url: str,
    names: dict[str, str],
    rabbit: Broker,
    broken_batch_store: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    upgrade_database(pg_url)
    stream = the_day()
    garbage = Message("stock_lot.c", b"\xffnot json", "garbage-1", headers={"x-legacy-seq": 0})
    consume(pg_url, amqp_url, names, [*stream.messages, garbage])

    expected = stream.expected_allocations()
    on_bad = {o for o, rows in expected.items() if any(ref == "bad" for _, ref in rows)}
    assert on_bad  # the poison takes these orders with it...
    applied = allocations(pg_url)
    assert {o: r for o, r in expected.items() if o not in on_bad} == applied  # ...only these

    runner = CliRunner()
    env = {"BROKER_URL": amqp_url, "NEW_DB_URL": pg_url}
    listing = runner.invoke(dlq, ["list", "--queue", names["queue"]], env=env)
    assert listing.exit_code == 0, listing.output
    bad_lot = next(
        m for m in stream.messages if b'"bad"' in m.body and m.routing_key == "stock_lot.c"
    )
    lines = listing.output.splitlines()
    assert lines[-1] == f"{len(on_bad) + 2} dead letter(s) in {names['queue']}.dlq"
    [lot_line] = [line for line in lines if line.startswith(bad_lot.message_id)]
    assert "attempts=3" in lot_line
    assert "RuntimeError: batch bad: cannot store its eta" in lot_line
    assert any(line.startswith("garbage-1") and "MalformedChange" in line for line in lines)
    assert sum("UnknownLegacyRow" in line for line in lines) == len(on_bad)

    still_broken = runner.invoke(dlq, ["replay", "--queue", names["queue"]], env=env)
    assert still_broken.exit_code == 1
    assert "failed again" in still_broken.output

    monkeypatch.undo()  # the bug is fixed
    replayed = runner.invoke(
        dlq, ["replay", "--queue", names["queue"], "--id", bad_lot.message_id], env=env
    )
    assert replayed.exit_code == 0, replayed.output
    assert "1 applied" in replayed.output
    everything = runner.invoke(dlq, ["replay", "--queue", names["queue"]], env=env)
    assert everything.exit_code == 1  # the garbage stays garbage
    assert f"{len(on_bad)} applied" in everything.output
    assert allocations(pg_url) == expected
    assert rabbit.queue_depth(f"{names['queue']}.dlq") == 1

    consume(pg_url, amqp_url, names, stream.messages)  # everything redelivered: no change
    assert allocations(pg_url) == expected
