"""`strangler status` against PostgreSQL and RabbitMQ: lag, queue depth, dead letters."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

import broker
from broker import Message
from new_domain import Consumer, bootstrap, upgrade_database
from new_domain.entrypoints.commands import status
from tests.integration.consumer_streams import LegacyShopStream
from tests.services import unique_name

pytestmark = [pytest.mark.postgres, pytest.mark.rabbitmq]


def test_status_shows_lag_queue_depth_and_dead_letters(pg_url: str, amqp_url: str) -> None:
    upgrade_database(pg_url)
    queue, exchange = unique_name("test_status_q"), unique_name("test_status_cdc")
    bus = bootstrap(pg_url)
    consumer = Consumer(
        bus, lambda: broker.connect(amqp_url), queue, exchange=exchange, batch_timeout=0.05
    )
    publisher = broker.connect(amqp_url)
    try:
        consumer.connect()
        stream = LegacyShopStream()
        stream.add_batch("b1", "LAMP", 10, None)
        publisher.publish(exchange, [*stream.messages, Message("stock_lot.c", b"[]", "bad-1")])
        taken = 0
        while taken < 3:
            taken += consumer.run_once()
        stream.allocate("o1", "LAMP", 1)
        env = {"NEW_DB_URL": pg_url, "BROKER_URL": amqp_url}
        running = CliRunner().invoke(status, ["--queue", queue], env=env)
        assert f"consumer        connected (1 on {queue})" in running.output, running.output
        consumer.close()  # stopped: what comes now waits in the queue
        publisher.publish(exchange, stream.messages[2:])

        result = CliRunner().invoke(
            status, ["--queue", queue], env={"NEW_DB_URL": pg_url, "BROKER_URL": amqp_url}
        )
        assert result.exit_code == 0, result.output
        lines = result.output.splitlines()
        assert lines[0].startswith("new database") and "(migrated)" in lines[0]
        assert lines[1].startswith("lag ") and "s behind legacy" in lines[1]
        assert f"{queue}: 2 message(s) waiting" in result.output
        assert f"1 in {queue}.dlq (1 dead in the new database)" in result.output
        assert "outbox          1 event(s) not published yet" in result.output  # BatchCreated
        assert (
            f"consumer        none connected to {queue} (start 'strangler consume')"
            in result.output
        )
    finally:
        consumer.close()
        bus.uow.close()
        for name in (queue, f"{queue}.dlq", f"{exchange}.unrouted"):
            publisher.delete_queue(name)
        publisher.close()
