"""SQLite specifics of capture and relay (the shared contract is in test_bridge_contract)."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

from broker import Broker, QueueSpec, connect
from examples.legacy_shop import TABLES
from legacy_bridge import Relay, install
from tests.unit.test_bridge_contract import (
    add_product,
    bodies,
    change_count,
    create_legacy_schema,
    drain_relay,
    relay_state,
    take_all,
    wait_until,
)

QUEUE = "bridge_sqlite_changes"


@pytest.fixture
def broker(memory_broker_url: str) -> Iterator[Broker]:
    broker = connect(memory_broker_url)
    # as the relay declares it (declaring the queue first would create it without one)
    broker.declare_exchange("legacy.cdc", alternate_exchange="legacy.cdc.unrouted")
    broker.declare_queue(QueueSpec(QUEUE, bindings=[("legacy.cdc", "#")]))
    yield broker
    broker.close()


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = create_engine(f"sqlite:///{tmp_path / 'shop.db'}")
    create_legacy_schema(engine)
    yield engine
    engine.dispose()


def test_source_names_the_file_and_has_no_schema_or_txid(engine: Engine, broker: Broker) -> None:
    install(engine, TABLES)
    add_product(engine, 1, "SKU-1")
    with Relay(engine, broker) as relay:
        drain_relay(relay)

    source = bodies(take_all(broker, QUEUE))[0]["source"]
    assert (source["connector"], source["db"], source["schema"], source["txid"]) == (
        "sqlite",
        "shop",
        None,
        None,
    )


def test_uncommitted_and_rolled_back_rows_are_not_published(engine: Engine, broker: Broker) -> None:
    install(engine, TABLES)
    with Relay(engine, broker) as relay:
        with engine.connect() as writer:
            writer.execute(text("INSERT INTO prod_catalog (prod_id, prod_code) VALUES (1, 'A')"))
            assert relay.run_once() == 0  # the writer has not committed
            writer.rollback()
        add_product(engine, 2, "B")

        assert drain_relay(relay) == 1

    assert [e["after"]["prod_code"] for e in bodies(take_all(broker, QUEUE))] == ["B"]


def test_blob_columns_are_captured_as_hex_text(engine: Engine, broker: Broker) -> None:
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE pic (pic_id INTEGER PRIMARY KEY, data BLOB)"))
    install(engine, tables=["pic"])
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO pic VALUES (1, x'00ff'), (2, NULL)"))
    with Relay(engine, broker) as relay:
        drain_relay(relay)

    events = bodies(take_all(broker, QUEUE))
    assert [e["after"]["data"] for e in events] == ["\\x00ff", None]


def test_composite_primary_keys_are_reflected(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE kv (a INTEGER, b TEXT, v INTEGER, PRIMARY KEY (b, a))"))
    result = install(engine, tables=["kv"])
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO kv VALUES (1, 'x', 2)"))
        pk = conn.execute(text("SELECT pk FROM strangler_change")).scalar_one()

    assert result.tables[0].primary_key == ("b", "a")
    assert json.loads(pk) == {"b": "x", "a": 1}


def test_table_without_primary_key_is_refused(engine: Engine) -> None:
    from legacy_bridge import UnknownTable

    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE loose (v INTEGER)"))
    with pytest.raises(UnknownTable, match="no primary key"):
        install(engine, tables=["loose"])


def test_run_waits_for_an_unavailable_database(
    tmp_path: Path, broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="legacy_bridge")
    ready = tmp_path / "ready"
    staging = tmp_path / "staging"
    staging.mkdir()
    staged = create_engine(f"sqlite:///{staging / 'shop.db'}")
    create_legacy_schema(staged)
    install(staged, TABLES)
    add_product(staged, 1, "SKU-1")
    staged.dispose()
    relay = Relay(f"sqlite:///{ready / 'shop.db'}", broker, max_backoff=0.05)
    stop = threading.Event()
    worker = threading.Thread(target=relay.run, args=(stop, 0.01))
    worker.start()
    try:
        wait_until(lambda: "legacy database unavailable" in caplog.text)
        staging.rename(ready)  # the database appears while the relay is retrying
        wait_until(lambda: relay.throughput.total == 1)
    finally:
        stop.set()
        worker.join(timeout=10)
        relay.close()
    assert not worker.is_alive()
    assert [e["after"]["prod_code"] for e in bodies(take_all(broker, QUEUE))] == ["SKU-1"]


def test_relay_state_and_changes_survive_many_batches(engine: Engine, broker: Broker) -> None:
    install(engine, TABLES)
    with engine.begin() as conn:
        for i in range(1, 251):
            conn.execute(
                text("INSERT INTO prod_catalog (prod_id, prod_code) VALUES (:i, :c)"),
                {"i": i, "c": f"SKU-{i}"},
            )
    with Relay(engine, broker, batch_size=100) as relay:
        assert [relay.run_once() for _ in range(4)] == [100, 100, 50, 0]

    seqs = [e["source"]["seq"] for e in bodies(take_all(broker, QUEUE))]
    assert seqs == list(range(1, 251))
    assert relay_state(engine)["last_confirmed_pos"] == 250
    assert change_count(engine) == 250
