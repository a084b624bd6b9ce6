"""The shard router and sharded consumers, with the in-process broker and SQLite: a busy
legacy stream routed to 4 product shards and applied by 4 shard consumers ends up
exactly as one consumer applying it unsharded leaves the new database, with each
product's domain events in the same order; a router killed between publishing and
storing loses and doubles nothing; forged and foreign messages are refused."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from sqlalchemy import select

import broker
from broker import Broker, Message, QueueSpec
from new_domain import Consumer, bootstrap
from new_domain.adapters import orm
from new_domain.adapters.database import create_engine
from new_domain.adapters.rebuild import reset_for_snapshot
from new_domain.adapters.shard_routes import ShardRouteStore, ShardsNotDrained
from new_domain.entrypoints.shard_router import ShardCountChanged, ShardRouter
from new_domain.ingest.shards import Shard, shard_exchange, shard_of
from tests.integration.consumer_streams import LegacyShopStream, migrated_sqlite_url

EXCHANGE = "legacy.cdc"
QUEUE = "new_domain.legacy_cdc"
SHARDS = 4
SCHEMA = Path(__file__).resolve().parents[2] / "docs/schemas/legacy-cdc-change.schema.json"


class Pipeline:
    """Router (optional) and consumers on one new database, all on one memory broker."""

    def __init__(self, url: str, broker_url: str, shards: int | None) -> None:
        self.url, self.broker_url = url, broker_url
        self.engine = create_engine(url, for_writes=True)
        self.router: ShardRouter | None = None
        if shards is not None:
            self.router = self.make_router(shards)
        targets = [None] if shards is None else Shard.all(shards)
        self.consumers = [
            Consumer(bootstrap(url), self.connect, QUEUE, shard=shard) for shard in targets
        ]
        for consumer in self.consumers:
            consumer.connect()

    def make_router(self, shards: int, **options: Any) -> ShardRouter:
        router = ShardRouter(
            bootstrap(self.url).uow,
            ShardRouteStore(self.engine),
            self.connect,
            shards,
            QUEUE,
            batch_size=options.pop("batch_size", 300),
            **options,
        )
        router.run_once()  # declares its queue and the shards
        return router

    def connect(self) -> Broker:
        return broker.connect(self.broker_url)

    def run(self) -> None:
        """Route and apply until nothing moves."""
        while True:
            moved = self.router.run_once() if self.router else 0
            for consumer in self.consumers:
                moved += consumer.run_once()
            if not moved:
                return

    def close(self) -> None:
        if self.router:
            self.router.close()
        for consumer in self.consumers:
            consumer.close()
        self.engine.dispose()

    def state(self) -> dict[str, Any]:
        """The new domain's state, and each product's domain events in order."""
        with self.engine.connect() as connection:

            def rows(table: Any, *order: Any) -> list[tuple[Any, ...]]:
                return [tuple(r) for r in connection.execute(select(table).order_by(*order))]

            batches = orm.batches
            columns = [c for c in batches.c if c.name != "id"]  # numbered in applying order
            events: dict[str, list[tuple[str, str]]] = {}
            query = select(orm.outbox.c.event_type, orm.outbox.c.body).order_by(orm.outbox.c.id)
            for event_type, body in connection.execute(query):
                event = json.loads(body)
                data = event["data"]
                key = data.get("orderid") or data.get("ref") or data.get("batchref") or ""
                cause = str(event["legacy_change"])  # the legacy change, sharded or not
                events.setdefault(data.get("sku", ""), []).append((event_type, str(key), cause))
            return {
                "products": rows(orm.products, orm.products.c.sku),
                "batches": [
                    tuple(r)
                    for r in connection.execute(select(*columns).order_by(batches.c.reference))
                ],
                "allocations": rows(
                    orm.batch_allocations, *orm.batch_allocations.primary_key.columns
                ),
                "view": rows(orm.allocations_view, *orm.allocations_view.primary_key.columns),
                "events": events,
            }


@pytest.fixture
def stream() -> LegacyShopStream:
    legacy = LegacyShopStream(seed=5)
    legacy.busy_day(2500, products=12, lots_per_product=3)
    with legacy.echo("POST /allocate", "allocated", "SKU-003", decision_id="d-7"):
        legacy.allocate("order-echo-1", "SKU-003", 1)
    legacy.fence(2)
    for n in range(300):  # orders spanning products in one legacy transaction each
        legacy.allocate(f"order-late-{n}", f"SKU-{n % 12:03d}", 1)
    with legacy.echo("POST /allocate", "allocated", "SKU-007", decision_id="d-8"):
        legacy.allocate("order-echo-2", "SKU-007", 2)
    return legacy


@pytest.fixture
def pipelines(tmp_path: Path, memory_broker_url: str) -> Iterator[Callable[..., Pipeline]]:
    made: list[Pipeline] = []

    def make(name: str, shards: int | None) -> Pipeline:
        folder = tmp_path / name
        folder.mkdir()
        pipeline = Pipeline(migrated_sqlite_url(folder), f"{memory_broker_url}-{name}", shards)
        made.append(pipeline)
        return pipeline

    yield make
    for pipeline in made:
        pipeline.close()


def publish(pipeline: Pipeline, messages: list[Message]) -> None:
    publisher = pipeline.connect()
    try:
        publisher.publish(EXCHANGE, messages)
    finally:
        publisher.close()


def test_four_shards_end_exactly_as_one_consumer_with_each_products_events_in_order(
    stream: LegacyShopStream, pipelines: Callable[..., Pipeline]
) -> None:
    single, sharded = pipelines("single", None), pipelines("sharded", SHARDS)
    tap = sharded.connect()
    tap.declare_queue(QueueSpec("tap", [(shard_exchange(QUEUE), "#")]))
    for pipeline in (single, sharded):
        publish(pipeline, stream.messages)
        pipeline.run()
    routed = [d.message for d in tap.get_batch("tap", 100_000, 0.1)]
    tap.close()
    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text()))
    changes = [json.loads(m.body) for m in routed if m.type != "heartbeat"]
    assert len(changes) >= len(stream.messages)
    for change in changes[::7]:
        validator.validate(change)
    expected = single.state()
    assert len(expected["allocations"]) > 500 and len(expected["events"]) == 12
    assert sharded.state() == expected
    with sharded.engine.connect() as connection:
        positions = dict(
            connection.execute(
                select(orm.applied_change_position.c.stream, orm.applied_change_position.c.position)
            ).all()
        )
    shard_streams = sorted(s for s in positions if "#" in s)
    assert [s.rpartition("#")[2] for s in shard_streams] == [f"{k}/4" for k in range(4)]
    assert sum(positions[s] for s in shard_streams) >= len(stream.messages)  # fence: to all
    assert {shard_of(f"SKU-{p:03d}", SHARDS) for p in range(12)} == set(range(SHARDS))


def test_a_router_killed_after_publishing_and_before_storing_loses_and_doubles_nothing(
    stream: LegacyShopStream, pipelines: Callable[..., Pipeline]
) -> None:
    single, sharded = pipelines("single", None), pipelines("sharded", SHARDS)
    publish(single, stream.messages)
    single.run()
    publish(sharded, stream.messages)
    router = sharded.router
    assert router is not None
    saves = 0
    real_save = router.store.save

    def dying_save(state: Any) -> None:
        nonlocal saves
        saves += 1
        if saves % 3 == 0:  # every third batch: published and confirmed, never stored
            raise KeyboardInterrupt("killed")
        real_save(state)

    router.store.save = dying_save  # type: ignore[method-assign]
    for _ in range(200):
        try:
            if not router.run_once():
                break
        except KeyboardInterrupt:
            router.close()  # the connection goes: the batch is redelivered
    router.store.save = real_save  # type: ignore[method-assign]
    assert saves >= 6
    sharded.run()
    assert sharded.state() == single.state()


def test_a_forged_jump_and_a_debezium_change_are_dead_lettered_and_routing_goes_on(
    pipelines: Callable[..., Pipeline],
) -> None:
    legacy = LegacyShopStream(seed=3)
    legacy.busy_day(200, products=4, lots_per_product=2)
    sharded = pipelines("sharded", SHARDS)
    publish(sharded, legacy.messages[:100])
    sharded.run()
    forged = json.loads(legacy.messages[100].body)
    forged["source"].update(seq=10**9, change_id=10**9)
    debezium = {
        **json.loads(legacy.messages[100].body),
        "source": {"connector": "postgresql", "name": "dbz", "db": "shop", "table": "stock_lot",
                   "lsn": 123, "txId": 9, "sequence": '[null,"123"]', "snapshot": "false",
                   "ts_ms": 1},
    }  # fmt: skip
    publish(
        sharded,
        [
            Message("x", json.dumps(forged).encode(), f"{legacy.install}:{10**9}"),
            Message("x", json.dumps(debezium).encode(), "dbz-1"),
            *legacy.messages[100:],
        ],
    )
    sharded.run()
    admin = sharded.connect()
    try:
        dead = admin.get_batch(f"{QUEUE}.dlq", 10, 0.1)
    finally:
        admin.close()
    reasons = sorted(d.message.headers.get("x-error-type", "") for d in dead)
    assert len(dead) == 2, reasons
    assert {d.message.message_id for d in dead} == {f"{legacy.install}:{10**9}", "dbz-1"}
    single = pipelines("single", None)
    publish(single, legacy.messages)
    single.run()
    assert sharded.state() == single.state()


def test_the_router_refuses_another_shard_count_until_told_and_the_old_shards_are_drained(
    pipelines: Callable[..., Pipeline],
) -> None:
    legacy = LegacyShopStream(seed=4)
    legacy.busy_day(300, products=6, lots_per_product=2)
    sharded = pipelines("sharded", 2)
    publish(sharded, legacy.messages[:150])
    assert sharded.router is not None
    sharded.router.run_once()  # routed, not applied: the 2 shard queues hold them
    with pytest.raises(ShardCountChanged, match="--reshard"):
        sharded.make_router(3)
    with pytest.raises(ShardCountChanged, match="still holds"):
        sharded.make_router(3, reshard=True)
    sharded.run()  # the old shards drain
    sharded.router.close()
    sharded.router = sharded.make_router(3, reshard=True)
    for consumer in sharded.consumers:
        consumer.close()
    sharded.consumers = [
        Consumer(bootstrap(sharded.url), sharded.connect, QUEUE, shard=s) for s in Shard.all(3)
    ]
    publish(sharded, legacy.messages[150:])
    sharded.run()
    single = pipelines("single", None)
    publish(single, legacy.messages)
    single.run()
    assert sharded.state() == single.state()


def test_a_standby_router_taking_over_reads_the_routing_again_before_it_publishes(
    stream: LegacyShopStream, pipelines: Callable[..., Pipeline]
) -> None:
    single, sharded = pipelines("single", None), pipelines("sharded", SHARDS)
    publish(single, stream.messages)
    single.run()
    standby = sharded.make_router(SHARDS)  # loaded the (empty) routing, then waited
    publish(sharded, stream.messages[:2000])
    sharded.run()  # the active router routes the first part
    assert sharded.router is not None
    sharded.router.close()  # ... and dies
    sharded.router = standby
    publish(sharded, stream.messages[2000:])
    sharded.run()
    assert sharded.state() == single.state()


def test_one_consumer_hands_over_to_shards_and_takes_the_stream_back(
    stream: LegacyShopStream, pipelines: Callable[..., Pipeline]
) -> None:
    """One consumer applies the first part (and is stopped); the router starts where it
    left off with the keys it learnt; the shards apply the middle; `--unshard` gives the
    stream back to one consumer, which applies the rest: as if one consumer did it all."""
    single = pipelines("single", None)
    publish(single, stream.messages)
    single.run()
    mixed = pipelines("mixed", None)
    alone = mixed.consumers[0]
    publish(mixed, stream.messages[:1500])
    mixed.run()
    alone.close()
    mixed.router = mixed.make_router(SHARDS)
    shard_consumers = [
        Consumer(bootstrap(mixed.url), mixed.connect, QUEUE, shard=s) for s in Shard.all(SHARDS)
    ]
    mixed.consumers = shard_consumers
    publish(mixed, stream.messages[1000:3000])  # overlapping re-sends included
    mixed.run()
    with pytest.raises(ShardsNotDrained):
        publish(mixed, stream.messages[3000:3100])
        mixed.router.run_once()
        mixed.router.close()
        ShardRouteStore(mixed.engine).unshard()
    mixed.run()
    mixed.router.close()
    mixed.router = None
    routed = ShardRouteStore(mixed.engine).unshard()
    assert list(routed.values()) == [3100]
    for consumer in shard_consumers:
        consumer.close()
    mixed.consumers = [Consumer(bootstrap(mixed.url), mixed.connect, QUEUE)]
    publish(mixed, stream.messages[3000:])
    mixed.run()
    assert mixed.state() == single.state()


def test_a_snapshot_is_loaded_shard_by_shard_and_the_heartbeat_ends_it_on_every_shard(
    pipelines: Callable[..., Pipeline],
) -> None:
    """Rows legacy had before capture come as the bridge's snapshot reads, then its
    heartbeat (to every shard), then live changes: four shards load and follow it as one
    consumer does."""
    legacy = LegacyShopStream(seed=9)
    legacy.busy_day(800, products=8, lots_per_product=2)  # before capture: not in the stream
    legacy.messages.clear()
    legacy.snapshot()
    legacy.messages.append(legacy.heartbeat())
    for n in range(400):
        legacy.allocate(f"after-{n}", f"SKU-{n % 8:03d}", 1)
    for line in list(legacy.lines.values())[:50]:
        if line.lot_id is not None:
            legacy.deallocate(line.line_id)
    single, sharded = pipelines("single", None), pipelines("sharded", SHARDS)
    for pipeline in (single, sharded):
        publish(pipeline, legacy.messages)
        pipeline.run()
    expected = single.state()
    assert len(expected["allocations"]) > 300
    assert sharded.state() == expected
    with sharded.engine.connect() as connection:
        table = orm.applied_change_position
        states = dict(connection.execute(select(table.c.stream, table.c.snapshot_state)).all())
    assert len(states) == SHARDS and set(states.values()) == {None}  # none left loading


def test_after_a_rebuild_from_a_snapshot_a_shard_without_rows_in_it_applies_what_comes(
    pipelines: Callable[..., Pipeline],
) -> None:
    """`strangler rebuild --from-snapshot` makes every shard await the next snapshot; the
    router starts each shard's part of it with a read of the kit's own table, so a shard
    none of whose products has a row in the snapshot does not skip what comes after."""
    legacy = LegacyShopStream(seed=12)
    legacy.busy_day(300, products=2, lots_per_product=2)  # 2 products: 2 of 4 shards, or 1
    legacy.fence(1)  # to every shard: each has a stream, which the reset makes await
    sharded, single = pipelines("sharded", SHARDS), pipelines("single", None)
    for pipeline in (single, sharded):
        publish(pipeline, legacy.messages)
        pipeline.run()
        reset_for_snapshot(pipeline.engine, lambda _: None)
    mark = len(legacy.messages)
    legacy.snapshot()
    legacy.messages.append(legacy.heartbeat())
    empty = [n for n in range(40) if shard_of(f"NEW-{n}", SHARDS) not in
             {shard_of("SKU-000", SHARDS), shard_of("SKU-001", SHARDS)}][:3]  # fmt: skip
    for n in empty:
        legacy.add_batch(f"new-{n}", f"NEW-{n}", 10, None)
        legacy.allocate(f"new-order-{n}", f"NEW-{n}", 2)
    for pipeline in (single, sharded):
        publish(pipeline, legacy.messages[mark:])
        pipeline.run()
    expected = single.state()
    assert {f"NEW-{n}" for n in empty} <= {row[0] for row in expected["products"]}
    assert sharded.state() == expected


def test_a_move_settles_only_once_its_fence_came_back_through_every_shard(
    pipelines: Callable[..., Pipeline],
) -> None:
    """A fence goes to every shard; the write group goes active when the last shard has
    applied it (each shard has applied legacy's writes of its products from before)."""
    sharded = pipelines("sharded", SHARDS)
    with sharded.engine.begin() as connection:
        connection.execute(
            orm.write_ownership.insert().values(
                group_name="allocation", rule="new", previous_rule="legacy", epoch=2,
                state="moving", changed_at=datetime.now(UTC), changed_by="test",
            )
        )  # fmt: skip
    legacy = LegacyShopStream(seed=2)
    legacy.fence(2)
    publish(sharded, legacy.messages)
    assert sharded.router is not None
    sharded.router.run_once()

    def state() -> str:
        with sharded.engine.connect() as connection:
            return str(connection.scalar(select(orm.write_ownership.c.state)))

    seen = []
    for consumer in sharded.consumers:
        assert consumer.run_once() == 1  # the fence, in every shard
        seen.append(state())
    assert seen == ["moving"] * (SHARDS - 1) + ["active"]
