"""Capture on MariaDB: the shared dialect contract, plus MariaDB's own concerns:
transaction ids found by the triggers, commit order under concurrent writers, READ
COMMITTED, value rendering, column changes, status and uninstall."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pymysql
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine, make_url

from broker import Broker, QueueSpec, connect
from examples.legacy_shop import TABLES
from legacy_bridge import Relay, bridge_status, install, uninstall
from legacy_bridge.database import make_engine
from tests.unit.test_bridge_contract import (
    CaptureContract,
    Workers,
    add_product,
    bodies,
    change_count,
    check_stop_capture_of_one_table,
    create_legacy_schema,
    drain_relay,
    envelope_validator,
    relay_state,
    take_all,
    wait_until,
)

pytestmark = pytest.mark.mariadb
QUEUE = "bridge_mariadb_changes"


class TestMariadbCapture(CaptureContract):
    @pytest.fixture
    def legacy_url(self, mariadb_url: str) -> str:
        engine = create_engine(mariadb_url)
        create_legacy_schema(engine)
        engine.dispose()
        return mariadb_url


@pytest.fixture
def engine(mariadb_url: str) -> Iterator[Engine]:
    engine = create_engine(mariadb_url)
    create_legacy_schema(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def broker(memory_broker_url: str) -> Iterator[Broker]:
    broker = connect(memory_broker_url)
    broker.declare_exchange("legacy.cdc", alternate_exchange="legacy.cdc.unrouted")
    broker.declare_queue(QueueSpec(QUEUE, bindings=[("legacy.cdc", "#")]))
    yield broker
    broker.close()


def txids(engine: Engine) -> list[int]:
    with engine.connect() as conn:
        query = text("SELECT txid FROM strangler_change ORDER BY change_id")
        return list(conn.execute(query).scalars())


def test_triggers_tell_transactions_apart(engine: Engine, mariadb_url: str) -> None:
    install(engine, ["prod_catalog"])
    url = make_url(mariadb_url)
    conn = pymysql.connect(host=url.host, port=url.port or 3306, user="root", database=url.database)
    try:
        cursor = conn.cursor()
        insert = "INSERT INTO prod_catalog (prod_id, prod_code) VALUES (%s, %s)"
        cursor.execute(insert, (1, "a"))  # autocommit off: one transaction of two rows
        cursor.execute(insert, (2, "b"))
        conn.commit()
        cursor.execute(insert, (3, "c"))  # the next one on the same connection
        conn.commit()
        cursor.execute(insert, (4, "rolled back"))
        conn.rollback()
        cursor.execute("BEGIN")
        cursor.execute(insert, (5, "e"))
        cursor.execute("UPDATE prod_catalog SET descr = 'x' WHERE prod_id IN (1, 5)")
        conn.commit()
        conn.autocommit(True)  # each statement its own transaction
        cursor.execute(insert, (6, "f"))
        cursor.execute("INSERT INTO prod_catalog (prod_id, prod_code) VALUES (7, 'g'), (8, 'h')")
    finally:
        conn.close()

    ids = txids(engine)
    assert len(ids) == 9 and None not in ids
    groups = [ids[0:2], ids[2:3], ids[3:6], ids[6:7], ids[7:9]]
    assert [len(set(g)) for g in groups] == [1, 1, 1, 1, 1]
    assert len({g[0] for g in groups}) == 5


def test_concurrent_writers_with_late_commits_lose_nothing(
    engine: Engine, mariadb_url: str, broker: Broker
) -> None:
    """Each transaction inserts a lot (its id taken at once), then waits for the lock on
    one shared counter row: ids commit out of order, the counter in lock order."""
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE counter (id INTEGER PRIMARY KEY, n INTEGER)"))
        conn.execute(text("INSERT INTO counter VALUES (1, 0)"))
    add_product(engine, 1, "SKU-1")
    install(engine, ["stock_lot", "counter"])

    def write(worker: int) -> None:
        writer = create_engine(mariadb_url)
        try:
            for n in range(50):
                with writer.begin() as conn:
                    conn.execute(
                        text(
                            "INSERT INTO stock_lot (lot_ref, prod_id, qty_units, created_at)"
                            " VALUES (:r, 1, :n, UTC_TIMESTAMP())"
                        ),
                        {"r": f"w{worker}-{n}", "n": n},
                    )
                    conn.execute(text("UPDATE counter SET n = n + 1"))
                    if n % 3 == 0:
                        time.sleep(0.002)  # commit after others took later ids
        finally:
            writer.dispose()

    stop = threading.Event()
    with Relay(engine, broker, heartbeat_interval=None) as relay:
        worker = threading.Thread(target=relay.run, args=(stop, 0.01))
        worker.start()
        try:
            writers = Workers()
            for w in range(4):
                writers.start(write, w)
            writers.join()
            wait_until(lambda: relay_state(engine)["last_confirmed_pos"] == change_count(engine))
        finally:
            stop.set()
            worker.join(timeout=10)

    events = bodies(take_all(broker, QUEUE))
    assert len(events) == change_count(engine) == 4 * 50 * 2
    assert sorted(e["source"]["change_id"] for e in events) == list(range(1, 401))
    counts = [e["after"]["n"] for e in events if e["source"]["table"] == "counter"]
    assert counts == list(range(1, 201))  # the shared row's changes in commit order
    for event in events:  # whole transactions, marked
        assert event["transaction"]["id"] == event["source"]["txid"]
    assert sum(e["transaction"]["last"] for e in events) == 4 * 50
    with engine.connect() as conn:
        query = text("SELECT pos FROM strangler_change ORDER BY change_id")
        positions = list(conn.execute(query).scalars())
    assert positions != sorted(positions)  # ids really committed out of order


def test_values_are_rendered_as_json_iso_dates_and_hex(engine: Engine, broker: Broker) -> None:
    with engine.begin() as conn:
        conn.execute(
            text(
                "CREATE TABLE sample (id INTEGER PRIMARY KEY, at DATETIME(6), day DATE,"
                " price DECIMAL(8, 2), data VARBINARY(8), note VARCHAR(20)) CHARSET utf8mb4"
            )
        )
    install(engine, ["sample"])
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO sample VALUES (1, '2024-01-02 03:04:05.250000', '2024-03-01',"
                " 12.50, x'00ff', 'Zürich')"
            )
        )
    with Relay(engine, broker) as relay:
        drain_relay(relay)

    event = bodies(take_all(broker, QUEUE))[0]
    envelope_validator().validate(event)
    assert event["after"] == {
        "id": 1,
        "at": "2024-01-02T03:04:05.250000",
        "day": "2024-03-01",
        "price": 12.5,
        "data": "\\x00ff",
        "note": "Zürich",
    }
    assert event["source"]["connector"] == "mariadb"
    assert event["source"]["schema"] is None


def test_the_relay_reads_committed_data(engine: Engine) -> None:
    install(engine, TABLES)
    relay_engine, _ = make_engine(engine)
    with relay_engine.connect() as conn:
        isolation = conn.execute(text("SELECT @@tx_isolation")).scalar_one()
    assert isolation == "READ-COMMITTED"
    with engine.connect() as conn:  # the legacy default stays untouched
        assert conn.execute(text("SELECT @@tx_isolation")).scalar_one() == "REPEATABLE-READ"


def test_column_changes_are_followed_after_the_refresh(engine: Engine, broker: Broker) -> None:
    install(engine, ["prod_catalog"])
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE prod_catalog ADD COLUMN colour VARCHAR(20)"))
        conn.execute(text("ALTER TABLE prod_catalog DROP COLUMN descr"))
    with Relay(engine, broker) as relay:
        relay.maintain()  # without it, writes to prod_catalog would fail: NEW.descr is gone
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO prod_catalog VALUES (1, 'A', 'red')"))
        drain_relay(relay)

    assert bodies(take_all(broker, QUEUE))[0]["after"] == {
        "prod_id": 1,
        "prod_code": "A",
        "colour": "red",
    }


def test_uninstall_removes_triggers_sequence_and_tables(engine: Engine, broker: Broker) -> None:
    install(engine, TABLES)
    add_product(engine, 1, "SKU-1")
    with Relay(engine, broker) as relay:
        drain_relay(relay)
    status = bridge_status(engine)
    assert (status.connector, status.pending, status.last_confirmed_pos) == ("mariadb", 0, 1)

    result = uninstall(engine)

    assert "sequence strangler_txn" in result.dropped
    with engine.connect() as conn:
        left = conn.execute(
            text(
                "SELECT count(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE()"
                " AND TABLE_NAME LIKE 'strangler%'"
                " UNION ALL SELECT count(*) FROM information_schema.TRIGGERS"
                " WHERE TRIGGER_SCHEMA = DATABASE()"
            )
        ).scalars()
        assert list(left) == [0, 0]
    add_product(engine, 2, "SKU-2")


def test_capture_of_one_table_stops_while_the_rest_carries_on(
    engine: Engine, broker: Broker
) -> None:
    check_stop_capture_of_one_table(engine, broker, QUEUE)
