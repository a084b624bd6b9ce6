"""`strangler outbox relay` on PostgreSQL and RabbitMQ: other consumers subscribe to the
topic exchange and get each domain event once, with the published schema."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, select

import broker
from broker import QueueSpec
from new_domain import bootstrap, ingest, upgrade_database
from new_domain.adapters import orm
from new_domain.entrypoints.commands import outbox
from new_domain.ingest import apply_changes
from tests.integration.consumer_streams import LegacyShopStream
from tests.services import unique_name

pytestmark = [pytest.mark.postgres, pytest.mark.rabbitmq]

SCHEMAS = Path(__file__).resolve().parents[2] / "docs" / "schemas"
SCHEMA_OF = {
    "BatchCreated": "new-domain-batch-created",
    "Allocated": "new-domain-allocated",
    "Deallocated": "new-domain-deallocated",
    "BatchQuantityChanged": "new-domain-batch-quantity-changed",
}


def test_the_relay_command_publishes_each_event_once_to_subscribers(
    pg_url: str, amqp_url: str
) -> None:
    upgrade_database(pg_url)
    stream = LegacyShopStream(seed=4)
    stream.busy_day(800, products=4, lots_per_product=2)
    bus = bootstrap(pg_url)
    apply_changes(bus, [ingest.parse_change(m.body, m.message_id) for m in stream.messages])
    bus.uow.close()

    exchange, allocations, batches = (
        unique_name("test_events"),
        unique_name("test_allocations"),
        unique_name("test_batches"),
    )
    subscriber = broker.connect(amqp_url)
    subscriber.declare_queue(QueueSpec(allocations, [(exchange, "allocation.*")]))
    subscriber.declare_queue(QueueSpec(batches, [(exchange, "batch.#")]))
    try:
        runner = CliRunner()
        env = {"NEW_DB_URL": pg_url, "BROKER_URL": amqp_url}
        args = ["relay", "--once", "--events-exchange", exchange]
        first = runner.invoke(outbox, args, env=env)
        assert first.exit_code == 0, first.output
        again = runner.invoke(outbox, args, env=env)
        assert again.output.strip() == f"published 0 events to {exchange}"

        engine = create_engine(pg_url)
        with engine.connect() as connection:
            rows = connection.execute(
                select(orm.outbox.c.message_id, orm.outbox.c.event_type, orm.outbox.c.published_at)
            ).all()
        engine.dispose()
        assert first.output.strip() == f"published {len(rows)} events to {exchange}"
        assert all(published_at is not None for _, _, published_at in rows)

        received = []
        for queue in (allocations, batches):
            while deliveries := subscriber.get_batch(queue, 1000, 0.3):
                received += [d.message for d in deliveries]
                subscriber.ack(deliveries[-1].delivery_tag, multiple=True)
        assert sorted(m.message_id for m in received) == sorted(m for m, _, _ in rows)
        assert {m.type for m in received} == set(SCHEMA_OF)
        for message in received:
            body = json.loads(message.body)
            schema = json.loads((SCHEMAS / f"{SCHEMA_OF[message.type]}.schema.json").read_text())
            jsonschema.validate(body, schema, format_checker=jsonschema.FormatChecker())
            assert body["message_id"] == message.message_id
            assert message.headers["x-event-type"] == message.type
    finally:
        subscriber.delete_queue(allocations)
        subscriber.delete_queue(batches)
        subscriber.close()
