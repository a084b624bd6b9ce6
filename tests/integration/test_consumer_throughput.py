"""Throughput of the consumer on PostgreSQL and RabbitMQ, as a guard against a return of
per-change round trips (those made it about 500 changes/s)."""

from __future__ import annotations

import time

import pytest

import broker
from new_domain import Consumer, bootstrap, open_read_model, upgrade_database
from tests.integration.consumer_streams import LegacyShopStream
from tests.services import unique_name

pytestmark = [pytest.mark.postgres, pytest.mark.rabbitmq]

CHANGES = 10_000
FLOOR = 1_500  # changes/s; several times that on an idle two-core machine


def test_a_backlog_is_applied_in_batches_well_above_the_floor(pg_url: str, amqp_url: str) -> None:
    upgrade_database(pg_url)
    stream = LegacyShopStream(seed=2)
    stream.busy_day(CHANGES)
    queue, exchange = unique_name("test_rate_q"), unique_name("test_rate_cdc")
    bus = bootstrap(pg_url)
    consumer = Consumer(bus, lambda: broker.connect(amqp_url), queue, exchange=exchange)
    publisher = broker.connect(amqp_url)
    try:
        consumer.connect()
        publisher.publish(exchange, stream.messages)
        started, taken = time.perf_counter(), 0
        while taken < len(stream.messages):
            taken += consumer.run_once()
        rate = taken / (time.perf_counter() - started)
        print(f"consumer: {taken} changes at {rate:.0f}/s")
        assert rate > FLOOR
        with open_read_model(pg_url) as read_model:
            expected = stream.expected_allocations()
            found = read_model.allocations_by_order(expected)
            assert {o: [(a.sku, a.batchref) for a in rows] for o, rows in found.items()} == expected
    finally:
        consumer.close()
        bus.uow.close()
        for name in (queue, f"{queue}.dlq", f"{exchange}.unrouted"):
            publisher.delete_queue(name)
        publisher.close()
