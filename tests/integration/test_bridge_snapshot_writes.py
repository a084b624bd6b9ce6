"""The initial snapshot while legacy writers keep updating, deleting and inserting rows:
the rows a consumer derives from the stream (r as upsert) equal the table, on PostgreSQL
(through RabbitMQ) and MariaDB; no row is read twice."""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

from broker import Broker, QueueSpec, connect
from legacy_bridge import Relay, install, snapshot
from tests.integration.test_bridge_rabbitmq import cdc_exchange, drain_queue
from tests.unit.test_bridge_contract import (
    Workers,
    bodies,
    change_count,
    relay_state,
    replay,
    table_rows,
    take_all,
    wait_until,
)

_UPSERT = {
    "postgresql": "INSERT INTO item VALUES (:id, 1, 'new') ON CONFLICT DO NOTHING",
    "mysql": "INSERT IGNORE INTO item VALUES (:id, 1, 'new')",
}


def seed(engine: Engine, rows: int) -> None:
    with engine.begin() as conn:
        conn.execute(
            text("CREATE TABLE item (id INTEGER PRIMARY KEY, qty INTEGER, label VARCHAR(40))")
        )
        conn.execute(
            text("INSERT INTO item (id, qty, label) VALUES (:id, :qty, :label)"),
            [{"id": i, "qty": i, "label": f"item {i}"} for i in range(1, rows + 1)],
        )
    install(engine, ["item"])


def keep_writing(engine: Engine, rows: int, seed_: int, stop: threading.Event) -> None:
    """Random single-row transactions; updates hold their row lock a moment."""
    rng = random.Random(seed_)
    upsert = text(_UPSERT[engine.dialect.name])
    while not stop.is_set():
        key = rng.randint(1, rows + rows // 10)
        with engine.begin() as conn:
            roll = rng.random()
            if roll < 0.7:
                conn.execute(text("UPDATE item SET qty = qty + 1 WHERE id = :id"), {"id": key})
                time.sleep(rng.uniform(0, 0.002))  # commit later than the id was taken
            elif roll < 0.85:
                conn.execute(text("DELETE FROM item WHERE id = :id"), {"id": key})
            else:
                conn.execute(upsert, {"id": key})


def snapshot_under_writes(engine: Engine, rows: int, relay: Relay, chunk_size: int) -> None:
    """Snapshot ``item`` while 4 writers and the relay run; return when all is confirmed."""
    stop_writers, stop_relay = threading.Event(), threading.Event()
    writers, relay_thread = Workers(), Workers()
    relay_thread.start(relay.run, stop_relay, 0.02)
    for n in range(4):
        writers.start(keep_writing, engine, rows, n, stop_writers)
    try:
        results = snapshot(engine, chunk_size=chunk_size)
        assert results[0].done and results[0].rows > rows // 2
    finally:
        stop_writers.set()
        writers.join()
    try:
        wait_until(lambda: relay_state(engine)["last_confirmed_pos"] == change_count(engine), 60)
    finally:
        stop_relay.set()
        relay_thread.join()


def check_stream(engine: Engine, events: list[dict[str, Any]]) -> None:
    reads = Counter(e["after"]["id"] for e in events if e["op"] == "r")
    assert reads and max(reads.values()) == 1  # no row read twice
    assert Counter(e["op"] for e in events).keys() >= {"r", "u", "d"}
    assert [e["source"]["snapshot"] for e in events].count("last") == 1
    with engine.connect() as conn:
        ops = Counter(conn.execute(text("SELECT op FROM strangler_change")).scalars())
    assert ops["u"] > 100 and ops["d"] > 10  # writers really ran during the snapshot
    derived = replay(events, {"item": "id"})
    assert derived == table_rows(engine, "item", "id")


@pytest.mark.postgres
@pytest.mark.rabbitmq
def test_snapshot_during_writes_converges_on_postgresql(pg_url: str, amqp_url: str) -> None:
    engine = create_engine(pg_url)
    try:
        seed(engine, 5000)
        with cdc_exchange(amqp_url) as (exchange, queue):
            relay = Relay(
                engine,
                broker_factory=lambda: connect(amqp_url),
                exchange=exchange,
                heartbeat_interval=None,
            )
            try:
                snapshot_under_writes(engine, 5000, relay, chunk_size=100)
            finally:
                relay.close()
            messages = drain_queue(amqp_url, queue, change_count(engine))
        check_stream(engine, [json.loads(m.body) for m in messages])
    finally:
        engine.dispose()


@pytest.mark.mariadb
def test_snapshot_during_writes_converges_on_mariadb(
    mariadb_url: str, memory_broker_url: str
) -> None:
    engine = create_engine(mariadb_url)
    broker = connect(memory_broker_url)
    broker.declare_exchange("legacy.cdc", alternate_exchange="legacy.cdc.unrouted")
    broker.declare_queue(QueueSpec("snapshot_q", bindings=[("legacy.cdc", "#")]))
    factory: Callable[[], Broker] = lambda: broker  # noqa: E731
    try:
        seed(engine, 2000)
        relay = Relay(engine, factory(), heartbeat_interval=None)
        try:
            snapshot_under_writes(engine, 2000, relay, chunk_size=100)
        finally:
            relay.close()
        check_stream(engine, bodies(take_all(broker, "snapshot_q")))
    finally:
        broker.close()
        engine.dispose()
