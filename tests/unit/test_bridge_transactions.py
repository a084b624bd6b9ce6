"""Transaction blocks and whole-transaction claims, on SQLite (commit groups)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

from broker import Broker, QueueSpec, connect
from examples.legacy_shop import TABLES
from legacy_bridge import Relay, install
from legacy_bridge.change_log import _in_commit_order, _Pending
from tests.unit.test_bridge_contract import (
    add_product,
    bodies,
    create_legacy_schema,
    drain_relay,
    envelope_validator,
    publish_available,
    relay_state,
    take_all,
)

QUEUE = "bridge_tx_changes"


@pytest.fixture
def broker(memory_broker_url: str) -> Iterator[Broker]:
    broker = connect(memory_broker_url)
    broker.declare_exchange("legacy.cdc", alternate_exchange="legacy.cdc.unrouted")
    broker.declare_queue(QueueSpec(QUEUE, bindings=[("legacy.cdc", "#")]))
    yield broker
    broker.close()


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = create_engine(f"sqlite:///{tmp_path / 'shop.db'}")
    create_legacy_schema(engine)
    install(engine, TABLES)
    yield engine
    engine.dispose()


def insert_lot(conn: object, lot_id: int, prod_id: int) -> None:
    conn.execute(  # type: ignore[attr-defined]
        text(
            "INSERT INTO stock_lot (lot_id, lot_ref, prod_id, qty_units, created_at)"
            " VALUES (:i, :r, :p, 5, '2024-01-01 00:00:00')"
        ),
        {"i": lot_id, "r": f"LOT-{lot_id}", "p": prod_id},
    )


def test_events_carry_their_transaction_and_place_in_it(engine: Engine, broker: Broker) -> None:
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO prod_catalog (prod_id, prod_code) VALUES (1, 'A')"))
        insert_lot(conn, 1, 1)
        insert_lot(conn, 2, 1)
    with Relay(engine, broker) as relay:
        publish_available(relay)
        add_product(engine, 2, "B")
        drain_relay(relay)

    events = bodies(take_all(broker, QUEUE))
    validator = envelope_validator()
    for event in events:
        validator.validate(event)
    blocks = [e["transaction"] for e in events]
    first, second = blocks[0]["id"], blocks[3]["id"]
    assert first != second
    assert [(b["id"], b["total_order"], b["data_collection_order"], b["last"]) for b in blocks] == [
        (first, 1, 1, False),
        (first, 2, 1, False),
        (first, 3, 2, True),
        (second, 1, 1, True),
    ]
    assert all(e["source"]["txid"] is None for e in events)  # a commit group, not a txid


def test_transactions_committed_between_two_claims_form_one_commit_group(
    engine: Engine, broker: Broker
) -> None:
    add_product(engine, 1, "A")
    add_product(engine, 2, "B")
    with Relay(engine, broker) as relay:
        drain_relay(relay)

    blocks = [e["transaction"] for e in bodies(take_all(broker, QUEUE))]
    assert blocks[0]["id"] == blocks[1]["id"]
    assert [(b["total_order"], b["last"]) for b in blocks] == [(1, False), (2, True)]


def test_a_transaction_larger_than_the_batch_is_claimed_whole(
    engine: Engine, broker: Broker
) -> None:
    with engine.begin() as conn:
        for i in range(1, 6):
            conn.execute(
                text("INSERT INTO prod_catalog (prod_id, prod_code) VALUES (:i, :c)"),
                {"i": i, "c": f"SKU-{i}"},
            )
    with Relay(engine, broker, batch_size=2) as relay:
        assert relay.run_once() == 2
        with engine.connect() as conn:
            claimed = conn.execute(
                text("SELECT count(*) FROM strangler_change WHERE pos IS NOT NULL")
            ).scalar_one()
        assert claimed == 5  # one claim took the whole transaction
        assert relay_state(engine)["last_confirmed_pos"] == 2  # published in batches
        assert [relay.run_once() for _ in range(3)] == [2, 1, 0]

    blocks = [e["transaction"] for e in bodies(take_all(broker, QUEUE))]
    assert [b["total_order"] for b in blocks] == [1, 2, 3, 4, 5]
    assert [b["last"] for b in blocks] == [False, False, False, False, True]


def test_transactions_are_ordered_by_their_last_change() -> None:
    rows = [
        _Pending(1, 10, "a"),  # transaction 10 writes first and last
        _Pending(2, 20, "a"),
        _Pending(3, 20, "b"),
        _Pending(4, None, "a"),  # no transaction id: stands alone
        _Pending(5, 10, "b"),
        _Pending(6, 10, "b"),
    ]

    placed = [
        (row.change_id, order, table_order, last)
        for row, order, table_order, last in _in_commit_order(rows)
    ]

    assert placed == [
        (2, 1, 1, False),
        (3, 2, 1, True),
        (4, None, None, None),
        (1, 1, 1, False),
        (5, 2, 1, False),
        (6, 3, 2, True),
    ]
