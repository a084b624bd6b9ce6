"""Consumers sharded by product on the local 3-node RabbitMQ cluster: `strangler
shard-router --shards 4` and three `strangler consume` processes on the 4 shards (two
active on two shards each, one standby for all), SIGKILLed in turn (and the router once)
while the bridge streams legacy's writes. Every change is applied once, each product's
changes in legacy's commit order (an oracle maps each domain event back to the legacy
position that caused it), no dead letter, and `strangler verify` finds legacy and the
new system equal."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.engine import Engine

import broker
import legacy_bridge
from broker import QueueSpec
from examples.legacy_shop import TABLES
from new_domain import upgrade_database
from new_domain.adapters import orm
from new_domain.entrypoints.topology import declare_shards
from new_domain.ingest.shards import Shard, shard_exchange
from tests.integration.consumer_streams import LegacyWorkload
from tests.integration.test_consumer_kill import (
    Consumers,
    Writer,
    assert_one_event_per_state_change,
    legacy_published,
    relaying,
    unpublished_events,
    verified_summary,
    wait_for,
)
from tests.integration.test_rabbitmq_cluster import dead_letters_waiting, remove_queues
from tests.services import unique_name

pytestmark = [pytest.mark.rabbitmq, pytest.mark.postgres]

ROOT = Path(__file__).resolve().parents[2]
SHARDS = 4
ROUNDS = 12  # about 1,000 changes a round


class Router(Consumers):
    """`strangler shard-router` as a subprocess."""

    command = "from new_domain.entrypoints.shard_commands import shard_router; shard_router()"


def applied_in_shards(new_db: Engine) -> int:
    table = orm.applied_change_position
    with new_db.connect() as connection:
        query = select(func.sum(table.c.position)).where(table.c.stream.like("%#%"))
        return int(connection.scalar(query) or 0)


def routed_position(new_db: Engine) -> int:
    with new_db.connect() as connection:
        return int(connection.scalar(select(func.max(orm.shard_route_position.c.position))) or 0)


def shards_caught_up(new_db: Engine) -> bool:
    with new_db.connect() as connection:
        given = dict(connection.execute(select(orm.shard_route_seq)).all())
        table = orm.applied_change_position
        applied = dict(connection.execute(select(table.c.stream, table.c.position)).all())
    return bool(given) and all(applied.get(stream) == last for stream, last in given.items())


def assert_each_product_in_commit_order(new_db: Engine, routed: dict[str, int]) -> None:
    """Per sku, the legacy positions behind its domain events (their ``legacy_change``,
    the bridge's message id, through the routed messages' ``source.shard``) never go
    back: its changes were applied in legacy's commit order."""
    per_sku: dict[str, list[int]] = {}
    with new_db.connect() as connection:
        rows = connection.execute(select(orm.outbox.c.body).order_by(orm.outbox.c.id))
        for (body,) in rows:
            event = json.loads(body)
            cause = event["legacy_change"]
            assert cause in routed, f"event {event['type']} caused by unknown message {cause}"
            per_sku.setdefault(event["data"]["sku"], []).append(routed[cause])
    assert len(per_sku) >= 10
    for sku, positions in per_sku.items():
        assert positions == sorted(positions), f"{sku}'s changes applied out of order"


def test_three_consumers_on_four_shards_killed_in_turn_keep_each_products_order(
    cluster: str,
    pg_url_factory: Callable[[], str],
    tmp_path: Path,
) -> None:
    legacy_url, new_url = pg_url_factory(), pg_url_factory()
    exchange, queue = unique_name("shard_cdc"), unique_name("shard_q")
    workload = LegacyWorkload(legacy_url)
    legacy_bridge.install(legacy_url, TABLES)
    workload.stock()
    upgrade_database(new_url)
    legacy_db, new_db = create_engine(legacy_url), create_engine(new_url)
    env = {**os.environ, "NEW_DB_URL": new_url, "BROKER_URL": cluster}
    common = ["--queue", queue, "--exchange", exchange]

    def shard_args(*indexes: int) -> list[str]:
        return [*common, *(a for k in indexes for a in ("--shard", f"{k}/{SHARDS}"))]

    router = Router(env, [*common, "--shards", str(SHARDS)], tmp_path / "router.log")
    first = Consumers(env, shard_args(0, 1), tmp_path / "consume-a.log")
    second = Consumers(env, shard_args(2, 3), tmp_path / "consume-b.log")
    standby = Consumers(env, shard_args(0, 1, 2, 3), tmp_path / "consume-c.log")
    everyone = (router, first, second, standby)
    tap = unique_name("shard_tap")  # every routed message, for the oracle
    admin = broker.connect(cluster)
    declare_shards(admin, queue, Shard.all(SHARDS))  # as the router and consumers do
    admin.declare_queue(QueueSpec(tap, [(shard_exchange(queue), "#")]))
    writer = Writer(workload, rounds=ROUNDS)
    try:
        router.start()
        first.start()
        second.start()
        wait_for(lambda: all(admin.queue_consumers(s.queue(queue)) for s in Shard.all(SHARDS)),
                 60, "the shard consumers")  # fmt: skip
        standby.start()  # registered last: the standby of every shard
        wait_for(lambda: standby.log.read_text().count("(connected to the broker)") == 4,
                 60, "the standby")  # fmt: skip
        with relaying(legacy_url, cluster, exchange):
            writer.start()
            for victim, at in ((first, 1500), (router, 3500), (second, 5500), (standby, 7500)):
                wait_for(lambda at=at: applied_in_shards(new_db) >= at, 240, f"{at} applied")
                victim.kill()
                victim.start()  # back as a standby (the router: where it stopped)
            writer.join()
            last = wait_for(lambda: legacy_published(legacy_db), 120, "the relay")
            wait_for(lambda: routed_position(new_db) == last, 180, "the router to catch up")
            wait_for(lambda: shards_caught_up(new_db), 180, "the shards to catch up")
        wait_for(lambda: unpublished_events(new_db) == 0, 60, "the outbox relay")
        for process in everyone:
            assert process.process is not None and process.process.poll() is None
            assert process.stop() == 0, process.log.read_text()[-3000:]
        assert last >= ROUNDS * 900
        assert dead_letters_waiting(queue) == 0
        routed: dict[str, int] = {}
        while deliveries := admin.get_batch(tap, 5000, 0.5):
            for delivery in deliveries:
                body = json.loads(delivery.message.body)
                if "source" in body and "shard" in body["source"]:
                    routed_from = body["source"]["shard"]
                    routed[routed_from["message_id"]] = routed_from["seq"]
            admin.ack(deliveries[-1].delivery_tag, multiple=True)
        assert_each_product_in_commit_order(new_db, routed)
        assert_one_event_per_state_change(legacy_db, new_db)
        summary = verified_summary(workload, env, legacy_url)
        assert " 0 differing, 0 only in legacy, 0 only in the new system, 0 errors" in summary
    finally:
        writer.join()
        for process in everyone:
            process.close()
        admin.delete_queue(tap)
        for shard in Shard.all(SHARDS):
            admin.delete_queue(shard.queue(queue))
        admin.close()
        remove_queues(queue, exchange)
        workload.close()
        legacy_db.dispose()
        new_db.dispose()
