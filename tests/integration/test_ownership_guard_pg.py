"""Echoes, fences and ownership violations through the real consumer, RabbitMQ and
PostgreSQL: a takeover's fence settles the move, the new system's decisions come back
as echoes (one of them split across batches, everything redelivered) and apply
nothing, legacy's own write to an owned product is a violation, and the operator sees
and resolves it with `strangler status` and `strangler ownership`."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from click.testing import CliRunner
from prometheus_client import REGISTRY
from sqlalchemy import select

import broker
from broker import Broker
from new_domain import Allocation, Consumer, bootstrap, open_read_model, upgrade_database
from new_domain.adapters import orm
from new_domain.adapters.database import create_engine
from new_domain.adapters.ownership import move_ownership
from new_domain.domain import commands
from new_domain.domain.ownership import State
from new_domain.entrypoints.commands import ownership, status
from new_domain.ingest.decisions import ADD_BATCH, ALLOCATE
from tests.integration.consumer_streams import LegacyShopStream
from tests.services import unique_name
from tests.unit.test_ownership_guard import GROUP, LEGACY_OWNED, OWNED

pytestmark = [pytest.mark.postgres, pytest.mark.rabbitmq]


@pytest.fixture
def exchange() -> str:
    return unique_name("test_guard_cdc")


@pytest.fixture
def rabbit(amqp_url: str, queue_name: str, exchange: str) -> Iterator[Broker]:
    connection = broker.connect(amqp_url)
    yield connection
    for queue in (queue_name, f"{queue_name}.dlq", f"{exchange}.unrouted"):
        connection.delete_queue(queue)
    connection.close()


@pytest.fixture
def consumer(pg_url: str, amqp_url: str, queue_name: str, exchange: str) -> Iterator[Consumer]:
    upgrade_database(pg_url)
    bus = bootstrap(pg_url)
    consumer = Consumer(
        bus,
        lambda: broker.connect(amqp_url),
        queue_name,
        exchange=exchange,
        batch_size=100,
        batch_timeout=0.05,
        transaction_hold=0.05,  # an unfinished legacy transaction is applied at once
    )
    consumer.connect()
    yield consumer
    consumer.close()
    bus.uow.close()


def consume(consumer: Consumer, count: int) -> None:
    """Run the consumer until it has acknowledged ``count`` deliveries."""
    taken, deadline = 0, time.monotonic() + 20
    while taken < count:
        assert time.monotonic() < deadline, f"acknowledged {taken} of {count}"
        taken += consumer.run_once()
    assert taken == count


def rows(pg_url: str, table: Any) -> list[Any]:
    engine = create_engine(pg_url)
    try:
        with engine.connect() as connection:
            return list(connection.execute(select(table).order_by(table.c.id)).mappings())
    finally:
        engine.dispose()


def counted(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


def test_echoes_fences_and_violations_through_the_consumer(
    consumer: Consumer, rabbit: Broker, exchange: str, queue_name: str, pg_url: str, amqp_url: str
) -> None:
    stream = LegacyShopStream()
    stream.add_batch("b-own", OWNED, 10, None)
    stream.add_batch("b-leg", LEGACY_OWNED, 10, None)
    rabbit.publish(exchange, stream.messages)
    consume(consumer, len(stream.messages))

    engine = create_engine(pg_url)
    try:
        with engine.begin() as connection:  # the route table's move: a takeover
            moved = move_ownership(connection, GROUP, "canary 50", "alice")
    finally:
        engine.dispose()
    assert moved.state is State.MOVING
    published = len(stream.messages)
    stream.fence(moved.epoch)
    rabbit.publish(exchange, stream.messages[published:])
    consume(consumer, 1)
    with open_read_model(pg_url) as read_model:
        settled = read_model.write_ownership(GROUP)
    assert (settled.state, settled.epoch, str(settled.rule)) == (State.ACTIVE, 1, "canary 50")

    consumer.bus.handle(commands.Allocate("o1", OWNED, 2))  # the new system decides
    consumer.bus.handle(commands.Allocate("o4", OWNED, 1))
    with consumer.bus.uow as uow:
        decided = uow.products.get(OWNED)
        assert decided is not None
        version = decided.version_number
    violations, anomalies = (
        counted("strangler_ownership_violations_total", {"group": GROUP}),
        counted("strangler_echo_anomalies_total"),
    )
    published = len(stream.messages)
    with stream.echo(ALLOCATE, "allocated to b-own", OWNED, decision_id="d-1"):
        stream.allocate("o1", OWNED, 2)
    with stream.echo(ALLOCATE, "allocated to b-elsewhere", OWNED, decision_id="d-4"):
        stream.allocate("o4", OWNED, 1)  # legacy's rows show b-own
    stream.allocate("o2", OWNED, 1)  # legacy wrote on its own
    stream.allocate("o3", LEGACY_OWNED, 1)  # legacy's product
    fresh = stream.messages[published:]
    rabbit.publish(exchange, fresh[:2])  # the first echo arrives unfinished: marker, line
    consume(consumer, 2)
    rabbit.publish(exchange, fresh[2:])
    consume(consumer, len(fresh) - 2)
    rabbit.publish(exchange, stream.messages)  # and everything once more
    consume(consumer, len(stream.messages))

    with open_read_model(pg_url) as read_model:
        assert read_model.allocations_for("o1") == [Allocation(OWNED, "b-own")]
        assert read_model.allocations_for("o4") == [Allocation(OWNED, "b-own")]
        assert read_model.allocations_for("o2") == []  # not applied
        assert read_model.allocations_for("o3") == [Allocation(LEGACY_OWNED, "b-leg")]
        parity = read_model.decision_parity()
    assert {route: (c.agree, c.differ) for route, c in parity.items()} == {
        ADD_BATCH: (2, 0),
        ALLOCATE: (1, 0),  # o3 only: echoes and violations are no legacy decision
    }
    with consumer.bus.uow as uow:
        product = uow.products.get(OWNED)
        assert product is not None and product.version_number == version  # nothing twice

    violation_rows = rows(pg_url, orm.ownership_violation)
    o2 = fresh[-4:-2]
    assert [(v["group_name"], v["sku"], v["change_id"]) for v in violation_rows] == [
        (GROUP, OWNED, m.message_id) for m in o2
    ]
    [anomaly] = rows(pg_url, orm.echo_anomaly)
    assert (anomaly["decision_id"], anomaly["expected"], anomaly["found"]) == (
        "d-4",
        "POST /allocate: allocated to b-elsewhere",
        "POST /allocate: allocated to b-own",
    )
    assert counted("strangler_ownership_violations_total", {"group": GROUP}) == violations + 2
    assert counted("strangler_echo_anomalies_total") == anomalies + 1

    env = {"NEW_DB_URL": pg_url, "BROKER_URL": amqp_url}
    shown = CliRunner().invoke(status, ["--queue", queue_name], env=env)
    assert shown.exit_code == 0, shown.output
    assert "ownership       allocation: canary 50, epoch 1, active since" in shown.output
    assert "2 ownership violation(s) and 1 echo anomaly(ies) unresolved" in shown.output

    listed = CliRunner().invoke(ownership, ["violations"], env=env)
    assert listed.exit_code == 0, listed.output
    assert f"change {o2[0].message_id}" in listed.output
    assert listed.output.splitlines()[-1] == "2 unresolved ownership violation(s)"
    first = str(violation_rows[0]["id"])
    resolve = ["resolve", "violation", first, "--by", "alice", "--reason", "legacy job stopped"]
    done = CliRunner().invoke(ownership, resolve, env=env)
    assert done.exit_code == 0, done.output
    again = CliRunner().invoke(ownership, resolve, env=env)
    assert again.exit_code == 1
    assert len(again.output.splitlines()) == 1 and "was resolved at" in again.output
    listed = CliRunner().invoke(ownership, ["violations", "--all"], env=env)
    assert "resolved" in listed.output and "by alice: legacy job stopped" in listed.output
    assert listed.output.splitlines()[-1] == "1 unresolved ownership violation(s)"
    shown_anomalies = CliRunner().invoke(ownership, ["anomalies"], env=env)
    assert "expected: POST /allocate: allocated to b-elsewhere" in shown_anomalies.output
    assert rabbit.queue_depth(f"{queue_name}.dlq") == 0
