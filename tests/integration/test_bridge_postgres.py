"""Capture on PostgreSQL: the shared dialect contract, commit-order cases that only
concurrent writers can produce, NOTIFY wake-ups, transactions, columns, retention, status
and uninstall."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

from broker import Broker, QueueSpec, connect
from examples.legacy_shop import TABLES
from legacy_bridge import Relay, bridge_status, install, uninstall
from legacy_bridge.retention import prune
from tests.services import unique_name
from tests.unit.test_bridge_contract import (
    CaptureContract,
    add_lot,
    add_product,
    bodies,
    check_stop_capture_of_one_table,
    create_legacy_schema,
    drain_relay,
    publish_available,
    relay_state,
    take_all,
    wait_until,
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
    install(engine, TABLES)
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


def run_in_thread(relay: Relay, stop: threading.Event, poll_interval: float) -> threading.Thread:
    worker = threading.Thread(target=relay.run, args=(stop, poll_interval))
    worker.start()
    return worker


def listening(engine: Engine) -> bool:
    with engine.connect() as conn:
        query = text(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND query = 'LISTEN strangler_change'"
        )
        return bool(conn.execute(query).scalar_one())


def trigger_notifies(engine: Engine) -> bool:
    with engine.connect() as conn:
        source = conn.execute(
            text("SELECT prosrc FROM pg_proc WHERE proname = 'strangler_capture'")
        ).scalar_one()
    return "pg_notify" in source


def test_the_trigger_notifies_only_when_installed_with_notify(engine: Engine) -> None:
    assert not trigger_notifies(engine)  # the fixture's install: the default
    assert relay_state(engine)["notify"] is False

    assert install(engine, notify=True).notify
    assert trigger_notifies(engine)
    assert install(engine).notify  # a refresh keeps the choice
    assert trigger_notifies(engine)
    assert relay_state(engine)["notify"] is True

    assert not install(engine, notify=False).notify
    assert not trigger_notifies(engine)


def test_without_notify_the_relay_polls_and_still_publishes_within_its_poll_interval(
    engine: Engine, broker: Broker
) -> None:
    stop = threading.Event()
    with Relay(engine, broker, heartbeat_interval=None) as relay:
        worker = run_in_thread(relay, stop, poll_interval=30.0)
        try:
            for i in range(1, 4):
                add_product(engine, i, f"SKU-{i}")
                # the poll interval is 30 s: only the adaptive look publishes in time
                wait_until(lambda i=i: relay_state(engine)["last_confirmed_pos"] == i, 10)
            assert not listening(engine)
        finally:
            stop.set()
            worker.join(timeout=10)
    assert not worker.is_alive()


def test_the_relay_wakes_on_notify_instead_of_waiting_out_its_poll_interval(
    engine: Engine, broker: Broker
) -> None:
    install(engine, notify=True)
    stop = threading.Event()
    with Relay(engine, broker, heartbeat_interval=None) as relay:
        worker = run_in_thread(relay, stop, poll_interval=30.0)
        try:
            wait_until(lambda: listening(engine))
            latencies = []
            for i in range(1, 4):
                started = time.monotonic()
                add_product(engine, i, f"SKU-{i}")
                wait_until(lambda i=i: relay_state(engine)["last_confirmed_pos"] == i, 5)
                latencies.append(time.monotonic() - started)
        finally:
            stop.set()
            worker.join(timeout=10)
    assert not worker.is_alive()
    assert max(latencies) < 2.0, latencies  # the poll interval is 30 s


def test_concurrent_transactions_are_published_whole_in_commit_order(
    engine: Engine, broker: Broker, relay: Relay
) -> None:
    """A writes, B writes, A writes again, B commits, A commits: B's events come first
    (its last change is older), each transaction's events are consecutive."""
    add_product(engine, 1, "SKU-1")
    drain_relay(relay)
    take_all(broker, QUEUE)
    with engine.connect() as a, engine.connect() as b:
        a.execute(INSERT_LOT, {"i": 1, "r": "A-1", "p": 1})
        b.execute(INSERT_LOT, {"i": 2, "r": "B-1", "p": 1})
        b.execute(INSERT_LOT, {"i": 3, "r": "B-2", "p": 1})
        a.execute(INSERT_LOT, {"i": 4, "r": "A-2", "p": 1})
        b.commit()
        a.commit()
    with Relay(engine, broker, batch_size=1) as small:
        drain_relay(small)  # claims take whole transactions even with batches of one

    events = bodies(take_all(broker, QUEUE))
    assert [e["after"]["lot_ref"] for e in events] == ["B-1", "B-2", "A-1", "A-2"]
    assert [e["source"]["seq"] for e in events] == [2, 3, 4, 5]
    blocks = [e["transaction"] for e in events]
    assert [(b["total_order"], b["data_collection_order"], b["last"]) for b in blocks] == [
        (1, 1, False),
        (2, 2, True),
        (1, 1, False),
        (2, 2, True),
    ]
    assert blocks[0]["id"] == events[0]["source"]["txid"] != blocks[2]["id"]


def test_columns_added_and_dropped_show_up_in_images_at_once(
    engine: Engine, broker: Broker, relay: Relay
) -> None:
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE prod_catalog ADD COLUMN colour TEXT"))
        conn.execute(text("ALTER TABLE prod_catalog DROP COLUMN descr"))
        conn.execute(text("INSERT INTO prod_catalog VALUES (1, 'A', 'red')"))
    drain_relay(relay)
    assert bodies(take_all(broker, QUEUE))[0]["after"] == {
        "prod_id": 1,
        "prod_code": "A",
        "colour": "red",
    }


def test_retention_prunes_confirmed_changes(engine: Engine, broker: Broker, relay: Relay) -> None:
    for i in range(1, 5):
        add_product(engine, i, f"SKU-{i}")
    drain_relay(relay)
    add_product(engine, 5, "SKU-5")  # pending

    assert prune(engine, retention=60) == 0
    assert prune(engine, retention=60, now=datetime.now(UTC) + timedelta(minutes=2)) == 4
    with engine.connect() as conn:
        left = conn.execute(text("SELECT change_id, pos FROM strangler_change")).all()
    assert [(row.change_id, row.pos) for row in left] == [(5, None)]


def test_status_and_uninstall(engine: Engine, broker: Broker, relay: Relay) -> None:
    add_product(engine, 1, "SKU-1")
    drain_relay(relay)
    status = bridge_status(engine)
    assert (status.connector, status.pending, status.last_confirmed_pos) == ("postgresql", 0, 1)
    assert status.published_recently == 1

    result = uninstall(engine)

    assert "function strangler_capture" in result.dropped
    assert "trigger strangler_capture on stock_lot" in result.dropped
    with engine.begin() as conn:
        leftovers = conn.execute(
            text(
                "SELECT count(*) FROM pg_class WHERE relname LIKE 'strangler%'"
                " UNION ALL SELECT count(*) FROM pg_proc WHERE proname LIKE 'strangler%'"
                " UNION ALL SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'strangler%'"
            )
        ).scalars()
        assert list(leftovers) == [0, 0, 0]
        conn.execute(text("INSERT INTO prod_catalog (prod_id, prod_code) VALUES (2, 'B')"))


def test_capture_of_one_table_stops_while_the_rest_carries_on(
    engine: Engine, broker: Broker
) -> None:
    check_stop_capture_of_one_table(engine, broker, QUEUE)


def pos_index_predicate(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return conn.execute(
            text(
                "SELECT pg_get_expr(i.indpred, i.indrelid) FROM pg_index i"
                " JOIN pg_class c ON c.oid = i.indexrelid"
                " WHERE c.relname = 'ix_strangler_change_pos'"
            )
        ).scalar_one()


def test_install_makes_the_pos_index_of_an_older_install_partial(
    engine: Engine, broker: Broker
) -> None:
    assert pos_index_predicate(engine) == "(pos IS NOT NULL)"
    with engine.begin() as conn:  # as installs before the partial index made it
        conn.execute(text("DROP INDEX ix_strangler_change_pos"))
        conn.execute(text("CREATE UNIQUE INDEX ix_strangler_change_pos ON strangler_change (pos)"))
    add_product(engine, 1, "SKU-1")
    with Relay(engine, broker) as relay:
        drain_relay(relay)
    add_product(engine, 2, "SKU-2")  # pending across the upgrade

    assert not install(engine).created
    assert pos_index_predicate(engine) == "(pos IS NOT NULL)"
    with Relay(engine, broker) as relay:
        drain_relay(relay)
    assert [e["source"]["seq"] for e in bodies(take_all(broker, QUEUE))] == [1, 2]
    with engine.connect() as conn:  # the claim's max(pos) can use the partial index
        conn.execute(text("SET LOCAL enable_seqscan = off"))
        plan = conn.execute(text("EXPLAIN SELECT max(pos) FROM strangler_change")).scalars()
        assert "ix_strangler_change_pos" in " ".join(plan)
