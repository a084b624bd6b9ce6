"""Debezium's captured records, published the way Debezium Server's RabbitMQ sink does,
consumed into PostgreSQL; ``strangler verify --databases`` then finds the new database
equal to a legacy database holding what the capture ended with.

The sink's defaults: one exchange per topic (``legacy.public.stock_lot``,
``legacy.transaction``, ``__debezium-heartbeat.legacy``), routing key "", persistent,
no ``message_id``, ``content_type`` or ``type``; a tombstone is an empty body. The
consumer binds its queue to those exchanges (``--bind-exchange``). Exchange names get a
unique prefix here so that tests sharing the broker never meet.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pika
import pytest
from click.testing import CliRunner
from sqlalchemy import insert

import broker
from examples.legacy_shop import schema as legacy_schema
from examples.legacy_shop.database import make_engine
from new_domain import Consumer, bootstrap, upgrade_database
from skeleton_app.composition.cli import cli
from tests.services import unique_name
from tests.unit.test_debezium import body, legacy_at_the_end, records

pytestmark = [pytest.mark.postgres, pytest.mark.rabbitmq]


@pytest.fixture
def prefix(amqp_url: str) -> Iterator[str]:
    name = unique_name("test_dbz")
    yield name
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = connection.channel()
        for queue in (f"{name}.q", f"{name}.q.dlq", f"{name}.cdc.unrouted"):
            channel.queue_delete(queue)
        exchanges = {f"{name}.{r['destination']}" for r in records()}
        for exchange in (*exchanges, f"{name}.cdc", f"{name}.cdc.unrouted", f"{name}.q.dlx"):
            channel.exchange_delete(exchange)
    finally:
        connection.close()


def sink_publish(amqp_url: str, prefix: str, sample: list[dict[str, Any]]) -> None:
    """What Debezium Server's RabbitMQ sink sends, record by record, with confirms."""
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        for record in sample:
            channel.basic_publish(
                f"{prefix}.{record['destination']}",
                "",
                body(record),
                pika.BasicProperties(delivery_mode=2),
            )
    finally:
        connection.close()


def legacy_database(url: str, sample: list[dict[str, Any]]) -> None:
    """A legacy shop database holding the rows the capture ended with."""
    engine = make_engine(url)
    legacy_schema.create_schema(engine)
    tables = legacy_at_the_end(sample)

    def micros(value: int) -> datetime:
        return datetime(1970, 1, 1, tzinfo=UTC).replace(tzinfo=None) + timedelta(microseconds=value)

    def days(value: int | None) -> date | None:
        return None if value is None else date(1970, 1, 1) + timedelta(days=value)

    with engine.begin() as connection:
        for name, convert in (
            ("prod_catalog", lambda row: row),
            (
                "stock_lot",
                lambda row: {
                    **row,
                    "arrival_date": days(row["arrival_date"]),
                    "created_at": micros(row["created_at"]),
                },
            ),
            ("cust_order_line", lambda row: row),
            ("lot_allocation", lambda row: {**row, "allocated_at": micros(row["allocated_at"])}),
        ):
            rows = [convert(row) for row in tables[name].values()]
            if rows:
                connection.execute(insert(legacy_schema.metadata.tables[name]), rows)
    engine.dispose()


def test_debezium_server_s_messages_carry_legacy_into_the_new_database(
    amqp_url: str, pg_url_factory: Callable[[], str], prefix: str
) -> None:
    legacy_url, new_url = pg_url_factory(), pg_url_factory()
    sample = records()
    legacy_database(legacy_url, sample)
    upgrade_database(new_url)
    bus = bootstrap(new_url)
    consumer = Consumer(
        bus,
        lambda: broker.connect(amqp_url),
        f"{prefix}.q",
        exchange=f"{prefix}.cdc",
        bind_exchanges=sorted({f"{prefix}.{r['destination']}" for r in sample}),
        batch_timeout=0.05,
        transaction_hold=0.2,
        retry_backoff=0.001,
        max_attempts=1,
    )
    try:
        consumer.connect()  # declares the queue and binds it before anything is published
        sink_publish(amqp_url, prefix, sample)
        sink_publish(amqp_url, prefix, sample)  # and again, as after a restart from old offsets
        check = broker.connect(amqp_url)
        deadline = time.monotonic() + 60
        taken = 0
        while taken < 2 * len(sample):
            assert time.monotonic() < deadline, f"{taken} of {2 * len(sample)} consumed"
            taken += consumer.run_once()
        assert check.queue_depth(f"{prefix}.q.dlq") == 0
        check.close()
    finally:
        consumer.close()
        bus.uow.close()

    env = {"LEGACY_DB_URL": legacy_url, "NEW_DB_URL": new_url}
    result = CliRunner().invoke(cli, ["verify", "--databases"], env=env)
    assert result.exit_code == 0, result.output
    assert result.output.strip().endswith(": equal")
    assert json.loads(sample[0]["value"])["source"]["connector"] == "postgresql"
