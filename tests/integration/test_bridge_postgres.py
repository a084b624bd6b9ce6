"""Capture on PostgreSQL: the shared dialect contract plus commit-order cases that only
concurrent writers can produce."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

from broker import Broker, QueueSpec, connect
from legacy_bridge import Relay, install
from tests.services import unique_name
from tests.unit.test_bridge_contract import (
    CaptureContract,
    add_lot,
    add_product,
    bodies,
    create_legacy_schema,
    drain_relay,
    publish_available,
    take_all,
)

pytestmark = pytest.mark.postgres

QUEUE = "bridge_pg_changes"
INSERT_LOT = text(
    "INSERT INTO stock_lot (lot_id, lot_ref, prod_id, qty_units, created_at)"
    " VALUES (:i, :r, :p, 5, now())"
)


class TestPostgresCapture(CaptureContract):
    @pytest.fixture
    def legacy_url(self, pg_url: str) -> str:
        engine = create_engine(pg_url)
        create_legacy_schema(engine)
        engine.dispose()
        return pg_url


@pytest.fixture
def engine(pg_url: str) -> Iterator[Engine]:
    engine = create_engine(pg_url)
    create_legacy_schema(engine)
    install(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def broker(memory_broker_url: str) -> Iterator[Broker]:
    broker = connect(memory_broker_url)
    # as the relay declares it (declaring the queue first would create it without one)
    broker.declare_exchange("legacy.cdc", alternate_exchange="legacy.cdc.unrouted")
    broker.declare_queue(QueueSpec(QUEUE, bindings=[("legacy.cdc", "#")]))
    yield broker
    broker.close()


@pytest.fixture
def relay(engine: Engine, broker: Broker) -> Iterator[Relay]:
    with Relay(engine, broker) as relay:
        yield relay


def lot_ids(events: list[dict[str, object]]) -> list[object]:
    return [
        e["after"]["lot_id"]  # type: ignore[index]
        for e in events
        if e["source"]["table"] == "stock_lot"  # type: ignore[index]
    ]


def test_a_transaction_that_commits_late_is_not_skipped(
    engine: Engine, broker: Broker, relay: Relay
) -> None:
    add_product(engine, 1, "SKU-1")
    drain_relay(relay)
    take_all(broker, QUEUE)
    with engine.connect() as a:
        a.execute(INSERT_LOT, {"i": 1, "r": "LOT-A", "p": 1})  # lower change_id, stays open
        add_lot(engine, 2, "LOT-B", 1, 5)  # B: higher change_id, commits first

        publish_available(relay)
        while_a_was_open = bodies(take_all(broker, QUEUE))
        a.commit()
    drain_relay(relay)
    after_a_committed = bodies(take_all(broker, QUEUE))

    assert 1 not in lot_ids(while_a_was_open)
    every = while_a_was_open + after_a_committed
    assert sorted(lot_ids(every)) == [1, 2]  # A was not skipped, nothing was doubled
    by_lot = {e["after"]["lot_id"]: e["source"] for e in every}
    assert by_lot[1]["change_id"] < by_lot[2]["change_id"]
    seqs = [e["source"]["seq"] for e in every]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


def test_a_change_never_overtakes_a_committed_change_it_depends_on(
    engine: Engine, broker: Broker, relay: Relay
) -> None:
    """T2 took its txid before T1, then wrote a lot for T1's product after T1 committed,
    while an unrelated T4 (txid between the two) is still open. ``txid < xmin`` alone
    would publish T2's lot before T1's product; the prefix rule waits for both."""
    with engine.connect() as t2, engine.connect() as t4:
        t2.execute(text("SELECT pg_current_xact_id()"))
        t4.execute(text("SELECT pg_current_xact_id()"))
        add_product(engine, 1, "SKU-1")  # T1, the newest txid, commits
        t2.execute(INSERT_LOT, {"i": 1, "r": "LOT-1", "p": 1})
        t2.commit()

        publish_available(relay)
        while_t4_was_open = bodies(take_all(broker, QUEUE))
        t4.rollback()
    drain_relay(relay)
    events = while_t4_was_open + bodies(take_all(broker, QUEUE))

    assert [(e["source"]["table"], e["op"]) for e in events] == [
        ("prod_catalog", "c"),
        ("stock_lot", "c"),
    ]
    assert [e["source"]["seq"] for e in events] == [1, 2]


def test_events_carry_txid_schema_and_iso_values(
    engine: Engine, broker: Broker, relay: Relay
) -> None:
    add_product(engine, 1, "SKU-1")
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO stock_lot (lot_id, lot_ref, prod_id, qty_units, arrival_date,"
                " created_at) VALUES (1, 'L', 1, 3, DATE '2024-03-01',"
                " TIMESTAMP '2024-01-02 03:04:05.25')"
            )
        )
        conn.execute(text("UPDATE stock_lot SET qty_units = 4"))
    drain_relay(relay)

    product, lot, update = bodies(take_all(broker, QUEUE))
    assert product["source"]["schema"] == "public"
    assert re.fullmatch(r"\d+", product["source"]["txid"])
    assert lot["source"]["txid"] == update["source"]["txid"] != product["source"]["txid"]
    assert lot["after"]["arrival_date"] == "2024-03-01"
    assert lot["after"]["created_at"] == "2024-01-02T03:04:05.25"


def test_capture_needs_no_privilege_of_the_legacy_role(
    engine: Engine, broker: Broker, relay: Relay
) -> None:
    role = unique_name("legacy_app")
    with engine.begin() as conn:
        conn.execute(text(f"CREATE ROLE {role} NOLOGIN"))
        conn.execute(text(f"GRANT SELECT, INSERT ON prod_catalog TO {role}"))
    try:
        with engine.begin() as conn:
            conn.execute(text(f"SET LOCAL ROLE {role}"))
            conn.execute(text("INSERT INTO prod_catalog (prod_id, prod_code) VALUES (5, 'X')"))
        drain_relay(relay)
        assert bodies(take_all(broker, QUEUE))[0]["after"]["prod_code"] == "X"
    finally:
        with engine.begin() as conn:
            conn.execute(text(f"DROP OWNED BY {role}"))
            conn.execute(text(f"DROP ROLE {role}"))
