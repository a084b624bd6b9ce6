"""The initial snapshot on SQLite: op r events in chunks, resumable, consistent with the
changes made while it runs (interleaved deterministically between chunks here; the
PostgreSQL and MariaDB suites run writers concurrently)."""

from __future__ import annotations

import importlib
import json
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

from broker import Broker, QueueSpec, connect
from legacy_bridge import Relay, UnknownTable, install, snapshot
from tests.unit.test_bridge_contract import (
    bodies,
    change_count,
    drain_relay,
    envelope_validator,
    replay,
    table_rows,
    take_all,
)

QUEUE = "bridge_snapshot_changes"
snapshot_module = importlib.import_module("legacy_bridge.snapshot")


@pytest.fixture
def broker(memory_broker_url: str) -> Iterator[Broker]:
    broker = connect(memory_broker_url)
    broker.declare_exchange("legacy.cdc", alternate_exchange="legacy.cdc.unrouted")
    broker.declare_queue(QueueSpec(QUEUE, bindings=[("legacy.cdc", "#")]))
    yield broker
    broker.close()


def items_db(path: Path, rows: int) -> Engine:
    engine = create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE item (id INTEGER PRIMARY KEY, qty INTEGER, label TEXT)"))
        conn.execute(
            text(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < :rows)"
                " INSERT INTO item SELECT i, i * 10, 'item ' || i FROM n"
            ),
            {"rows": rows},
        )
    return engine


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = items_db(tmp_path / "items.db", 25)
    install(engine, ["item"])
    yield engine
    engine.dispose()


def published(engine: Engine, broker: Broker) -> list[dict[str, Any]]:
    with Relay(engine, broker) as relay:
        drain_relay(relay)
    return bodies(take_all(broker, QUEUE))


def test_snapshot_publishes_every_row_as_op_r_in_chunks(engine: Engine, broker: Broker) -> None:
    results = snapshot(engine, chunk_size=10)

    assert [(r.table, r.rows, r.total, r.done) for r in results] == [("item", 25, 25, True)]
    events = published(engine, broker)
    validator = envelope_validator()
    for event in events:
        validator.validate(event)
    assert [e["op"] for e in events] == ["r"] * 25
    assert [e["after"]["id"] for e in events] == list(range(1, 26))
    assert events[0]["after"] == {"id": 1, "qty": 10, "label": "item 1"}
    assert all(e["before"] is None for e in events)
    assert [e["source"]["snapshot"] for e in events] == [True] * 24 + ["last"]
    chunks = [e["transaction"] for e in events]
    assert len({c["id"] for c in chunks}) == 3  # one transaction per chunk
    assert [c["total_order"] for c in chunks] == [*range(1, 11), *range(1, 11), *range(1, 6)]
    assert [c["last"] for c in chunks].count(True) == 3


def test_a_done_snapshot_is_not_repeated_unless_restarted(engine: Engine) -> None:
    snapshot(engine, chunk_size=10)
    again = snapshot(engine, chunk_size=10)
    assert again[0].already_done and again[0].rows == 0
    assert change_count(engine) == 25

    restarted = snapshot(engine, chunk_size=100, restart=True)
    assert (restarted[0].rows, restarted[0].total) == (25, 25)
    assert change_count(engine) == 50


def test_an_interrupted_snapshot_resumes_without_gap_or_double(
    engine: Engine, broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_copy = snapshot_module._copy_rows
    calls = []

    def crash_in_third_chunk(*args: Any) -> int:
        calls.append(1)
        copied = real_copy(*args)
        if len(calls) == 3:
            raise KeyboardInterrupt("killed after copying, before the chunk commits")
        return copied

    monkeypatch.setattr(snapshot_module, "_copy_rows", crash_in_third_chunk)
    with pytest.raises(KeyboardInterrupt):
        snapshot(engine, chunk_size=7)
    assert change_count(engine) == 14  # two committed chunks
    monkeypatch.setattr(snapshot_module, "_copy_rows", real_copy)

    resumed = snapshot(engine, chunk_size=7)

    assert (resumed[0].rows, resumed[0].total) == (11, 25)
    events = published(engine, broker)
    assert [e["after"]["id"] for e in events] == list(range(1, 26))


def test_changes_made_between_chunks_converge_with_the_snapshot(
    engine: Engine, broker: Broker
) -> None:
    def write(statement: str) -> None:
        with engine.begin() as conn:
            conn.execute(text(statement))

    writes = iter(
        [
            "UPDATE item SET qty = -1 WHERE id IN (2, 12, 22)",  # read and unread rows
            "DELETE FROM item WHERE id IN (3, 13)",
            "INSERT INTO item VALUES (100, 1, 'new'), (15, 0, 'gap')",
        ]
    )
    write("DELETE FROM item WHERE id = 15")  # before the snapshot: a hole to fill later

    class Interleave:
        def update(self, n: int) -> None:
            statement = next(writes, None)
            if statement:
                write(statement)

        def close(self) -> None:
            return None

    snapshot(engine, chunk_size=5, progress=lambda *_: Interleave())

    events = published(engine, broker)
    assert {e["op"] for e in events} == {"r", "u", "d", "c"}
    assert replay(events, {"item": "id"}) == table_rows(engine, "item", "id")


def test_composite_keys_are_walked_in_key_order(tmp_path: Path, broker: Broker) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'kv.db'}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE kv (a INTEGER, b TEXT, v INTEGER, PRIMARY KEY (a, b))"))
        for a in range(3):
            for b in "xyz":
                conn.execute(text("INSERT INTO kv VALUES (:a, :b, 0)"), {"a": a, "b": b})
    install(engine, ["kv"])
    try:
        assert snapshot(engine, chunk_size=2)[0].rows == 9
        events = published(engine, broker)
    finally:
        engine.dispose()
    keys = [(e["after"]["a"], e["after"]["b"]) for e in events]
    assert keys == [(a, b) for a in range(3) for b in "xyz"]


def test_only_captured_tables_can_be_snapshotted(engine: Engine) -> None:
    with pytest.raises(UnknownTable, match="prod_catalog"):
        snapshot(engine, ["prod_catalog"])


def test_memory_stays_flat_whatever_the_table_size(tmp_path: Path) -> None:
    def peak(rows: int) -> int:
        engine = items_db(tmp_path / f"items{rows}.db", rows)
        install(engine, ["item"])
        snapshot(engine, chunk_size=100)  # warm up caches on a first run
        tracemalloc.start()
        try:
            snapshot(engine, chunk_size=100, restart=True)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
            engine.dispose()

    small, large = peak(500), peak(5_000)  # holding 5,000 rows would take over 1 MB
    assert large < small * 2 + 100 * 1024, (small, large)


def test_progress_rows_are_stored_per_table(engine: Engine) -> None:
    snapshot(engine, chunk_size=10)
    with engine.connect() as conn:
        row = conn.execute(text("SELECT * FROM strangler_snapshot_progress")).mappings().one()
    assert (row["table_name"], row["rows_read"], bool(row["done"])) == ("item", 25, True)
    assert row["next_from"] is None
    assert json.loads(json.dumps(row["table_name"])) == "item"
