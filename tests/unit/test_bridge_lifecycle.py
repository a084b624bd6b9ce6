"""Running the bridge for months, on SQLite: column changes, retention, heartbeats,
status and uninstall."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import Connection, Engine

from broker import Broker, BrokerError, BrokerRefused, QueueSpec, connect
from examples.legacy_shop import TABLES
from legacy_bridge import (
    BridgeError,
    BridgeNotInstalled,
    Relay,
    bridge_status,
    install,
    snapshot,
    uninstall,
)
from legacy_bridge.capture import CapturedTable, Signature
from legacy_bridge.capture_sqlite import SqliteCapture
from legacy_bridge.drift import DriftWatch
from legacy_bridge.retention import prune
from tests.unit.test_bridge_contract import (
    FlakyBroker,
    add_product,
    bodies,
    change_count,
    check_stop_capture_of_one_table,
    create_legacy_schema,
    drain_relay,
    publish_next,
    relay_state,
    take_all,
    wait_until,
)
from tests.unit.test_bridge_envelope import heartbeat_validator

QUEUE = "bridge_lifecycle_changes"
INSERT_RED = "INSERT INTO prod_catalog (prod_id, prod_code, colour) VALUES (1, 'A', 'red')"


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


def run_in_thread(relay: Relay, stop: threading.Event) -> threading.Thread:
    worker = threading.Thread(target=relay.run, args=(stop, 0.01))
    worker.start()
    return worker


def bridge_objects(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return list(
            conn.execute(
                text("SELECT name FROM sqlite_master WHERE name LIKE 'strangler%' ORDER BY name")
            ).scalars()
        )


# -- schema drift -----------------------------------------------------------------------


def test_a_column_added_to_a_captured_table_is_captured_after_the_refresh(
    engine: Engine, broker: Broker
) -> None:
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE prod_catalog ADD COLUMN colour VARCHAR(20)"))
    with Relay(engine, broker) as relay:
        relay.maintain()
        with engine.begin() as conn:
            conn.execute(text(INSERT_RED))
        drain_relay(relay)

    assert bodies(take_all(broker, QUEUE))[0]["after"] == {
        "prod_id": 1,
        "prod_code": "A",
        "descr": None,
        "colour": "red",
    }


def test_the_running_relay_notices_column_changes_by_itself(engine: Engine, broker: Broker) -> None:
    stop = threading.Event()
    with Relay(engine, broker, maintenance_interval=0.02) as relay:
        worker = run_in_thread(relay, stop)
        try:
            with engine.begin() as conn:
                conn.execute(text("ALTER TABLE prod_catalog ADD COLUMN colour VARCHAR(20)"))

            def refreshed() -> bool:
                with engine.connect() as conn:
                    sql = conn.execute(
                        text(
                            "SELECT sql FROM sqlite_master"
                            " WHERE name = 'strangler_prod_catalog_insert'"
                        )
                    ).scalar()
                # None while the relay drops and re-creates the trigger
                return sql is not None and "colour" in sql

            wait_until(refreshed)
            with engine.begin() as conn:
                conn.execute(text(INSERT_RED))
            wait_until(lambda: relay_state(engine)["last_confirmed_pos"] == 1)
        finally:
            stop.set()
            worker.join(timeout=10)
    assert bodies(take_all(broker, QUEUE))[0]["after"]["colour"] == "red"


def test_a_column_change_during_a_drift_check_is_caught_by_the_next_one(
    engine: Engine,
) -> None:
    class AlterDuringCheck(SqliteCapture):
        altered = False

        def signature(self, conn: Connection, table: CapturedTable) -> Signature:
            seen = super().signature(conn, table)
            if not self.altered:  # the ALTER commits right after the check looked
                self.altered = True
                with engine.begin() as other:
                    other.execute(text("ALTER TABLE prod_catalog ADD COLUMN colour TEXT"))
            return seen

    watch = DriftWatch(AlterDuringCheck(), None)
    with engine.begin() as conn:
        assert watch.check(conn) == []
    with engine.begin() as conn:
        assert watch.check(conn) == ["prod_catalog"]
    with engine.begin() as conn:
        assert watch.check(conn) == []


# -- retention ----------------------------------------------------------------------------


def test_pruning_deletes_confirmed_changes_only_and_keeps_the_newest(
    engine: Engine, broker: Broker
) -> None:
    for i in range(1, 7):
        add_product(engine, i, f"SKU-{i}")
    with Relay(engine, broker, batch_size=6) as relay:
        publish_next(relay)  # one group of six, confirmed
    add_product(engine, 7, "SKU-7")
    add_product(engine, 8, "SKU-8")
    with Relay(engine, FlakyBroker(broker), batch_size=10) as failing, pytest.raises(BrokerError):
        publish_next(failing)  # 7 and 8 claimed, never confirmed
    later = datetime.now(UTC) + timedelta(hours=2)

    assert prune(engine, retention=3600) == 0  # too young
    assert prune(engine, retention=3600, batch_size=2, max_batches=2, now=later) == 4
    assert prune(engine, retention=3600, now=later) == 2

    with engine.connect() as conn:
        left = conn.execute(text("SELECT change_id FROM strangler_change ORDER BY 1")).scalars()
        assert list(left) == [7, 8]  # unconfirmed
    with Relay(engine, broker) as relay:
        drain_relay(relay)
    assert prune(engine, retention=0, now=later) == 1
    assert change_count(engine) == 1  # the newest row stays: its id is never reused


def test_the_running_relay_prunes_by_itself(engine: Engine, broker: Broker) -> None:
    for i in range(1, 5):
        add_product(engine, i, f"SKU-{i}")
    stop = threading.Event()
    with Relay(engine, broker, retention=0, maintenance_interval=0.02) as relay:
        worker = run_in_thread(relay, stop)
        try:
            wait_until(lambda: change_count(engine) == 1)
        finally:
            stop.set()
            worker.join(timeout=10)
    assert relay_state(engine)["last_confirmed_pos"] == 4
    assert len(take_all(broker, QUEUE)) == 4


# -- heartbeats ---------------------------------------------------------------------------


def test_an_idle_relay_publishes_heartbeats(engine: Engine, broker: Broker) -> None:
    install_id = relay_state(engine)["install_id"]
    add_product(engine, 1, "SKU-1")
    stop = threading.Event()
    received = []
    with Relay(engine, broker, heartbeat_interval=0.05) as relay:
        worker = run_in_thread(relay, stop)
        try:

            def two_heartbeats() -> bool:
                received.extend(take_all(broker, QUEUE))
                return sum(m.type == "heartbeat" for m in received) >= 2

            wait_until(two_heartbeats)
        finally:
            stop.set()
            worker.join(timeout=10)

    assert received[0].type == "change"
    beats = [m for m in received if m.type == "heartbeat"]
    validator = heartbeat_validator()
    captured_ms = json.loads(received[0].body)["source"]["ts_ms"]
    for beat in beats:
        body = json.loads(beat.body)
        validator.validate(body)
        assert beat.routing_key == "heartbeat"
        assert beat.message_id == f"{install_id}:hb:{body['ts_ms']}"
        assert body["last_seq"] == 1
        assert body["last_commit_ts_ms"] == captured_ms
        assert body["source"]["connector"] == "sqlite"
    assert len({b.message_id for b in beats}) == len(beats)


def test_heartbeats_can_be_switched_off(
    engine: Engine, broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    stop = threading.Event()
    with Relay(engine, broker, heartbeat_interval=None) as relay:
        cycles = []
        real_run_once = relay.run_once

        def counted() -> int:
            cycles.append(1)
            return real_run_once()

        monkeypatch.setattr(relay, "run_once", counted)
        worker = run_in_thread(relay, stop)
        try:
            add_product(engine, 1, "SKU-1")
            wait_until(lambda: relay_state(engine)["last_confirmed_pos"] == 1)
            started = len(cycles)
            wait_until(lambda: len(cycles) > started + 20)  # idle cycles, 0.01 s apart
        finally:
            stop.set()
            worker.join(timeout=10)
    assert [m.type for m in take_all(broker, QUEUE)] == ["change"]


# -- status -------------------------------------------------------------------------------


def test_status_reports_pending_changes_checkpoint_and_throughput(
    engine: Engine, broker: Broker
) -> None:
    for i in range(1, 4):
        add_product(engine, i, f"SKU-{i}")
    before = bridge_status(engine)
    assert (before.pending, before.last_confirmed_pos, before.published_recently) == (3, 0, 0)
    assert before.oldest_pending_age_s is not None and before.oldest_pending_age_s < 60
    assert before.tables == (
        "prod_catalog",
        "stock_lot",
        "cust_order_line",
        "lot_allocation",
        "strangler_origin",  # always captured
    )

    with Relay(engine, broker) as relay:
        drain_relay(relay)
    after = bridge_status(engine)

    assert (after.pending, after.oldest_pending_age_s) == (0, None)
    assert (after.last_confirmed_pos, after.published_recently) == (3, 3)
    assert after.last_confirmed_at is not None
    assert after.as_dict()["throughput_per_s"] == 0.05


def test_status_of_a_database_without_capture_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(BridgeNotInstalled, match="bridge install"):
        bridge_status(f"sqlite:///{tmp_path / 'empty.db'}")


# -- uninstall ----------------------------------------------------------------------------


def test_uninstall_refuses_while_changes_are_unpublished(engine: Engine) -> None:
    add_product(engine, 1, "SKU-1")
    with pytest.raises(BridgeError, match="1 captured change"):
        uninstall(engine)
    assert change_count(engine) == 1


def test_uninstall_removes_everything_install_added(engine: Engine, broker: Broker) -> None:
    snapshot(engine)
    add_product(engine, 1, "SKU-1")
    with Relay(engine, broker) as relay:
        drain_relay(relay)
    assert bridge_objects(engine)

    result = uninstall(engine)

    assert bridge_objects(engine) == []
    assert "table strangler_change" in result.dropped
    assert "trigger strangler_stock_lot_delete" in result.dropped
    add_product(engine, 2, "SKU-2")  # the legacy application keeps working
    assert not inspect(engine).has_table("strangler_change")
    with pytest.raises(BridgeNotInstalled, match="nothing to uninstall"):
        uninstall(engine)


def test_capture_of_one_table_stops_while_the_rest_carries_on(
    engine: Engine, broker: Broker
) -> None:
    check_stop_capture_of_one_table(engine, broker, QUEUE)


def test_uninstall_with_force_discards_unpublished_changes(engine: Engine) -> None:
    add_product(engine, 1, "SKU-1")
    result = uninstall(engine, force=True)
    assert result.discarded == 1
    assert bridge_objects(engine) == []


# -- starting: permanent and transient broker failures ------------------------------------


def test_a_broker_refusing_the_relay_ends_run_at_once_before_it_says_it_relays(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    attempts: list[int] = []

    def refusing() -> Broker:
        attempts.append(1)
        raise BrokerRefused("RabbitMQ at h:5672 refused the connection: NOT_ALLOWED")

    caplog.set_level(logging.INFO, logger="legacy_bridge")
    with Relay(engine, broker_factory=refusing) as relay, pytest.raises(BrokerRefused):
        relay.run(threading.Event(), 0.01)

    assert attempts == [1]
    assert not [r for r in caplog.records if "relaying" in r.getMessage()]


def test_the_relay_says_it_relays_once_connected_and_logs_a_reconnection(
    engine: Engine, memory_broker_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    attempts: list[int] = []

    def flaky() -> Broker:
        attempts.append(1)
        if len(attempts) == 1:
            raise BrokerError("connection refused")
        return connect(memory_broker_url)

    caplog.set_level(logging.INFO, logger="legacy_bridge")
    stop = threading.Event()
    relay = Relay(engine, broker_factory=flaky, heartbeat_interval=0.05, max_backoff=0.05)
    worker = run_in_thread(relay, stop)
    try:
        wait_until(lambda: any("relaying" in r.getMessage() for r in caplog.records))
        assert relay._broker is not None
        relay._broker.close()  # the connection dies: the next heartbeat fails, then reconnects
        wait_until(lambda: any("reconnected" in r.getMessage() for r in caplog.records))
    finally:
        stop.set()
        worker.join(10)
        relay.close()
    messages = [r.getMessage() for r in caplog.records]
    failure = next(i for i, m in enumerate(messages) if m.startswith("broker unavailable"))
    ready = [i for i, m in enumerate(messages) if m.startswith("relaying captured changes")]
    assert len(ready) == 1 and failure < ready[0]
    assert "reconnected to the broker" in messages[ready[0] :]


def test_the_relay_counts_what_the_broker_confirmed_and_its_heartbeats(
    engine: Engine, broker: Broker
) -> None:
    from legacy_bridge import metrics

    published = metrics.CHANGES_PUBLISHED._value.get()
    heartbeats = metrics.HEARTBEATS_PUBLISHED._value.get()
    for prod_id in (1, 2, 3):
        add_product(engine, prod_id, f"SKU-{prod_id}")
    with Relay(engine, broker) as relay:
        assert drain_relay(relay) == 3
        relay.heartbeat()

    assert metrics.CHANGES_PUBLISHED._value.get() - published == 3
    assert metrics.HEARTBEATS_PUBLISHED._value.get() - heartbeats == 1


class _Victim(Exception):
    """What a driver raises for a deadlock's victim (psycopg: SQLSTATE 40P01)."""

    sqlstate = "40P01"


def test_an_install_chosen_as_a_deadlock_victim_runs_again(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sqlalchemy.exc import OperationalError

    import legacy_bridge.installer as installer

    real, calls = installer._install, []

    def victim_once(*args: object) -> object:
        calls.append(args)
        if len(calls) == 1:
            raise OperationalError("DROP TRIGGER ...", {}, _Victim("deadlock detected"))
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(installer, "_install", victim_once)
    result = install(engine)  # a refresh, as `strangler bridge install` after a fix
    assert len(calls) == 2
    assert {t.name for t in result.tables} >= set(TABLES)

    calls.clear()
    monkeypatch.setattr(
        installer,
        "_install",
        lambda *args: calls.append(args) or 1 / 0,  # type: ignore[func-returns-value]
    )
    with pytest.raises(ZeroDivisionError):
        install(engine)  # anything else is not retried
    assert len(calls) == 1
