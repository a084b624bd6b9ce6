"""Back-sync on PostgreSQL and RabbitMQ: decisions published on a real exchange reach
legacy with their origin marker first and the position beside them; a kill between
commit and ack writes nothing twice; a takeover's fence waits for the legacy write that
holds a product's row lock (a hand-back's does not); a lost database connection is
retried. And on MariaDB, the same legacy transactions."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import text
from sqlalchemy.engine import Engine

import broker
from backsync import LEGACY_SHOP, BackSync, Writer, dead_letter_queue, install_tables
from broker import Broker, BrokerError, Message
from examples import legacy_shop
from skeleton_app.composition.cli import cli
from tests.backsync_support import (
    DECISIONS_WRITTEN,
    decision_messages,
    engine_for,
    legacy_database,
    move_message,
)
from tests.services import unique_name

pytestmark = [pytest.mark.postgres, pytest.mark.rabbitmq]


def wait_for(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met before the deadline")
        time.sleep(0.02)


@dataclass
class Legacy:
    url: str
    engine: Engine
    amqp_url: str
    queue: str
    exchange: str

    def writer(self) -> Writer:
        return Writer(engine_for(self.url), LEGACY_SHOP, self.queue, lock_timeout=1.0)

    def backsync(self, factory: Callable[[], Broker] | None = None, **options: Any) -> BackSync:
        worker = BackSync(
            self.writer(),
            factory or (lambda: broker.connect(self.amqp_url)),
            exchange=self.exchange,
            poll_timeout=0.05,
            reconnect_delay=0.05,
            **options,
        )
        worker.connect()
        return worker

    def publish(self, messages: list[Message]) -> None:
        connection = broker.connect(self.amqp_url)
        try:
            connection.publish(self.exchange, messages)
        finally:
            connection.close()

    def scalar(self, sql: str) -> Any:
        with self.engine.connect() as conn:
            return conn.execute(text(sql)).scalar()

    def markers(self) -> list[tuple[Any, ...]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                text("SELECT kind, decision_id, epoch FROM strangler_origin ORDER BY origin_id")
            )
            return [tuple(row) for row in rows]

    def depth(self, queue: str) -> int:
        connection = broker.connect(self.amqp_url)
        try:
            return connection.queue_depth(queue)
        finally:
            connection.close()


@pytest.fixture
def legacy(pg_url: str, amqp_url: str) -> Iterator[Legacy]:
    legacy_database(pg_url)
    engine = engine_for(pg_url)
    queue, exchange = unique_name("test_backsync"), unique_name("test_events")
    install_tables(engine, queue)
    yield Legacy(pg_url, engine, amqp_url, queue, exchange)
    engine.dispose()
    connection = broker.connect(amqp_url)
    for name in (queue, dead_letter_queue(queue)):
        connection.delete_queue(name)
    connection.close()


@pytest.fixture
def running(legacy: Legacy) -> Iterator[Callable[..., BackSync]]:
    """Start back-sync's real loop in a thread; stopped after the test."""
    started: list[tuple[threading.Thread, threading.Event]] = []

    def start(**options: Any) -> BackSync:
        worker = legacy.backsync(**options)
        stop = threading.Event()
        thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
        thread.start()
        started.append((thread, stop))
        return worker

    yield start
    for thread, stop in started:
        stop.set()
        thread.join(30)
        assert not thread.is_alive()


def add_batch(ref: str, sku: str = "LAMP", qty: int = 10) -> list[Message]:
    data = {"ref": ref, "sku": sku, "qty": qty, "eta": None}
    return decision_messages("POST /batches", sku, "created", [("BatchCreated", data)])


def allocate(orderid: str, batchref: str, sku: str = "LAMP") -> list[Message]:
    data = {"orderid": orderid, "sku": sku, "qty": 2, "batchref": batchref}
    return decision_messages(
        "POST /allocate", sku, f"allocated to {batchref}", [("Allocated", data)]
    )


def first_changes(legacy: Legacy) -> dict[int, str]:
    """Each captured legacy transaction's first changed table, by transaction id."""
    with legacy.engine.connect() as conn:
        rows = conn.execute(
            text("SELECT txid, table_name FROM strangler_change ORDER BY change_id")
        ).all()
    first: dict[int, str] = {}
    for txid, table in rows:
        first.setdefault(int(txid), table)
    return first


def test_published_decisions_reach_legacy_with_their_marker_first_and_the_position(
    legacy: Legacy, running: Callable[..., BackSync]
) -> None:
    running()
    legacy.publish([*add_batch("b1"), *allocate("o1", "b1")])

    wait_for(lambda: legacy.scalar(DECISIONS_WRITTEN) == 2)

    shop = legacy_shop.create_app(legacy.url).test_client()
    assert shop.get("/allocations/o1").get_json() == [{"sku": "LAMP", "batchref": "b1"}]
    assert [kind for kind, _, _ in legacy.markers()] == ["decision", "decision"]
    assert list(first_changes(legacy).values()) == ["strangler_origin", "strangler_origin"]
    assert legacy.scalar("SELECT count(*) FROM strangler_backsync_applied") == 2
    wait_for(lambda: legacy.depth(legacy.queue) == 0)
    assert legacy.depth(dead_letter_queue(legacy.queue)) == 0

    env = {"LEGACY_DB_URL": legacy.url, "BROKER_URL": legacy.amqp_url}
    status = CliRunner().invoke(cli, ["backsync", "status", "--queue", legacy.queue], env=env)
    assert status.exit_code == 0, status.output
    assert "  decisions written:  2" in status.output.splitlines()
    assert f"  queue:              {legacy.queue}: 0 waiting" in status.output.splitlines()


class LosesTheAck:
    """A connection that dies after legacy committed, before the ack: a kill."""

    def __init__(self, inner: Broker) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def ack(self, delivery_tag: int, multiple: bool = False) -> None:
        self.inner.close()
        raise BrokerError("killed before the ack")


def test_a_kill_between_commit_and_ack_writes_nothing_twice(legacy: Legacy) -> None:
    doomed = legacy.backsync(lambda: LosesTheAck(broker.connect(legacy.amqp_url)))  # type: ignore[arg-type, return-value]
    legacy.publish(add_batch("b1"))
    wait_for(lambda: legacy.depth(legacy.queue) == 1)
    with pytest.raises(BrokerError, match="killed before the ack"):
        for _ in range(100):
            doomed.run_once()
    wait_for(lambda: legacy.depth(legacy.queue) == 1)  # back in the queue
    assert len(legacy.markers()) == 1

    restarted = legacy.backsync()
    wait_for(lambda: restarted.run_once() == 1)
    restarted.close()

    assert len(legacy.markers()) == 1
    assert legacy.scalar("SELECT count(*) FROM stock_lot") == 1
    assert legacy.scalar(DECISIONS_WRITTEN) == 1
    assert restarted.skipped == 1
    assert legacy.depth(legacy.queue) == 0


def lock_waiters(legacy: Legacy) -> int:
    """Sessions of this legacy database waiting for a lock."""
    return int(
        legacy.scalar(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
    )


def test_a_takeover_fence_waits_for_the_legacy_write_holding_a_product_lock(
    legacy: Legacy, running: Callable[..., BackSync]
) -> None:
    shop = legacy_shop.create_app(legacy.url).test_client()
    assert (
        shop.post("/batches", json={"ref": "b1", "sku": "LAMP", "qty": 10, "eta": None}).status_code
        == 201
    )
    in_flight = legacy.engine.connect()
    transaction = in_flight.begin()  # a legacy write in flight: the product is locked
    in_flight.execute(text("SELECT prod_id FROM prod_catalog WHERE prod_code = 'LAMP' FOR UPDATE"))
    in_flight.execute(text("UPDATE stock_lot SET qty_units = 11 WHERE lot_ref = 'b1'"))
    try:
        running(settle=3.0)
        settled = datetime.now(UTC) - timedelta(seconds=5)
        legacy.publish([move_message("new", "legacy", 1, settled)])

        wait_for(lambda: lock_waiters(legacy) == 1)  # back-sync's lock waits
        time.sleep(0.3)  # let a fence written too early show (there must be none)
        assert legacy.markers() == []
        transaction.commit()
    finally:
        in_flight.close()

    wait_for(lambda: legacy.markers() == [("fence", None, 1)])
    with legacy.engine.connect() as conn:
        order = conn.execute(
            text("SELECT table_name FROM strangler_change ORDER BY change_id DESC LIMIT 2")
        ).all()
    assert [t for (t,) in order] == ["strangler_origin", "stock_lot"]  # the write first


def test_a_handback_fence_does_not_wait_for_product_locks(
    legacy: Legacy, running: Callable[..., BackSync]
) -> None:
    shop = legacy_shop.create_app(legacy.url).test_client()
    assert (
        shop.post("/batches", json={"ref": "b1", "sku": "LAMP", "qty": 10, "eta": None}).status_code
        == 201
    )
    with legacy.engine.connect() as holder:
        holder.begin()
        holder.execute(text("SELECT prod_id FROM prod_catalog FOR UPDATE"))
        running(settle=3.0)
        legacy.publish([move_message("legacy", "new", 2, datetime.now(UTC))])

        wait_for(lambda: legacy.markers() == [("fence", None, 2)])  # lock still held
        holder.rollback()


def test_a_lost_database_connection_is_retried_and_nothing_is_written_twice(
    legacy: Legacy, running: Callable[..., BackSync]
) -> None:
    running()
    legacy.publish(add_batch("b1"))
    wait_for(lambda: legacy.scalar(DECISIONS_WRITTEN) == 1)
    with legacy.engine.connect() as conn:  # every other session of legacy is cut off
        conn.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        )
    legacy.engine.dispose()

    legacy.publish([*allocate("o1", "b1"), *allocate("o2", "b1")])

    wait_for(lambda: legacy.scalar(DECISIONS_WRITTEN) == 3)
    assert [kind for kind, _, _ in legacy.markers()] == ["decision"] * 3
    assert legacy.scalar("SELECT count(*) FROM lot_allocation") == 2


def test_each_lane_counts_its_decisions_in_its_own_row_not_waiting_on_the_queues(
    legacy: Legacy,
) -> None:
    """Every decision used to update the queue's one position row last, so the lanes'
    transactions committed one after another; each lane now has its own row."""
    from backsync.status import read_status
    from tests.unit.test_backsync_mimic import decision_of

    writer = legacy.writer()

    def in_lane(lane: int, messages: list[Message]) -> list[Any]:
        written: list[Any] = []
        decision = decision_of(messages)

        def write() -> None:
            writer.use_lane(lane)
            written.append(writer.write_decision(decision).written)
            written.append(decision.id)

        thread = threading.Thread(target=write)
        thread.start()
        thread.join(20)
        assert not thread.is_alive(), f"lane {lane} waited"
        return written

    with legacy.engine.connect() as holder, holder.begin():
        # the queue's row locked, as a decision of the queue's own row holds it until
        # its commit: the lanes' decisions commit meanwhile
        holder.execute(
            text("SELECT decisions FROM strangler_backsync_position WHERE queue = :q FOR UPDATE"),
            {"q": legacy.queue},
        )
        assert in_lane(1, add_batch("b1", "LAMP"))[0] is True
        assert in_lane(2, add_batch("b2", "CHAIR"))[0] is True
        written, last = in_lane(1, allocate("o1", "b1"))
        assert written is True

    with legacy.engine.connect() as conn:
        lanes = conn.execute(
            text("SELECT lane, decisions FROM strangler_backsync_lane ORDER BY lane")
        ).all()
    assert [tuple(row) for row in lanes] == [(1, 2), (2, 1)]
    status = read_status(legacy.engine, legacy.queue)
    assert (status.decisions, status.fences) == (3, 0)
    assert status.last_decision_id == last
    assert legacy.scalar(DECISIONS_WRITTEN) == 3


@pytest.mark.mariadb
def test_on_mariadb_a_decision_and_a_fence_are_legacy_transactions(mariadb_url: str) -> None:
    legacy_database(mariadb_url)
    engine = engine_for(mariadb_url)
    try:
        install_tables(engine, "q")
        writer = Writer(engine, LEGACY_SHOP, "q", lock_timeout=1.0)
        from tests.unit.test_backsync_mimic import decision_of, fence

        batch = decision_of(add_batch("b1"))
        assert writer.write_decision(batch).written
        assert writer.write_decision(decision_of(allocate("o1", "b1"))).written
        assert not writer.write_decision(batch).written
        assert writer.write_fence(fence(move_message("new", "legacy", 1, datetime.now(UTC))))

        with engine.connect() as conn:
            kinds = conn.execute(text("SELECT kind FROM strangler_origin ORDER BY origin_id"))
            assert [k for (k,) in kinds] == ["decision", "decision", "fence"]
            position = conn.execute(
                text("SELECT decisions, fences, last_occurred_at FROM strangler_backsync_position")
            ).one()
            assert (position.decisions, position.fences) == (2, 1)
            assert position.last_occurred_at is not None
            first = conn.execute(
                text(
                    "SELECT table_name FROM strangler_change c WHERE change_id ="
                    " (SELECT min(change_id) FROM strangler_change WHERE txid = c.txid)"
                    " ORDER BY change_id"
                )
            ).all()
            assert [t for (t,) in first] == ["strangler_origin"] * 3

        writer.use_lane(3)  # a lane's first decision creates its row under a savepoint
        assert writer.write_decision(decision_of(allocate("o2", "b1"))).written
        assert writer.write_decision(decision_of(allocate("o3", "b1"))).written
        with engine.connect() as conn:
            lanes = conn.execute(text("SELECT lane, decisions FROM strangler_backsync_lane"))
            assert [tuple(row) for row in lanes] == [(3, 2)]
    finally:
        engine.dispose()


def test_strangler_status_has_a_backsync_line(
    legacy: Legacy, pg_url_factory: Callable[[], str]
) -> None:
    from new_domain import Consumer, bootstrap, upgrade_database

    new_db = pg_url_factory()
    upgrade_database(new_db)
    consumer_queue = unique_name("test_status_q")
    bus = bootstrap(new_db)
    exchange = unique_name("cdc")
    consumer = Consumer(
        bus, lambda: broker.connect(legacy.amqp_url), consumer_queue, exchange=exchange
    )
    consumer.connect()
    worker = legacy.backsync()
    try:
        legacy.publish(add_batch("b1"))
        wait_for(lambda: worker.run_once() == 1)
        env = {"NEW_DB_URL": new_db, "BROKER_URL": legacy.amqp_url, "LEGACY_DB_URL": legacy.url}
        args = ["status", "--queue", consumer_queue, "--backsync-queue", legacy.queue]

        result = CliRunner().invoke(cli, args, env=env)

        assert result.exit_code == 0, result.output
        [bridge] = [line for line in result.output.splitlines() if line.startswith("bridge ")]
        assert bridge.startswith(
            "bridge          relay not running (never seen: start 'strangler bridge run'); "
        )
        assert bridge.endswith(" change(s) pending; snapshot: none taken")
        [line] = [line for line in result.output.splitlines() if line.startswith("back-sync")]
        assert line.startswith("back-sync       1 decisions, 0 fences written; last ")
        assert line.endswith(f"; 0 message(s) waiting in {legacy.queue}")
        assert ", lag " in line
    finally:
        worker.close()
        consumer.close()
        bus.uow.close()
        connection = broker.connect(legacy.amqp_url)
        for name in (consumer_queue, f"{consumer_queue}.dlq", f"{exchange}.unrouted"):
            connection.delete_queue(name)
        connection.close()


def test_dead_letters_are_listed_and_sent_back_with_the_cli(
    legacy: Legacy, running: Callable[..., BackSync]
) -> None:
    running()
    refused = allocate("o1", "b1")
    legacy.publish([*add_batch("b0"), *refused])  # b1 is not in legacy
    dead = dead_letter_queue(legacy.queue)
    wait_for(lambda: legacy.depth(dead) == 1)
    env = {"LEGACY_DB_URL": legacy.url, "BROKER_URL": legacy.amqp_url}
    queue = ["--queue", legacy.queue]

    listed = CliRunner().invoke(cli, ["backsync", "dlq", "list", *queue], env=env)
    assert listed.exit_code == 0, listed.output
    [line, total] = listed.output.splitlines()
    assert refused[0].message_id in line and "Refused: unknown batch b1 in legacy" in line
    assert total == f"1 dead letter(s) in {dead}"

    unknown = CliRunner().invoke(cli, ["backsync", "dlq", "replay", *queue, "--id", "x"], env=env)
    assert unknown.exit_code == 1
    assert unknown.output.splitlines()[-1] == "Error: 1 id(s) not found"
    assert legacy.depth(dead) == 1  # nothing sent back

    legacy.publish(add_batch("b1"))  # the cause fixed
    wait_for(lambda: legacy.scalar(DECISIONS_WRITTEN) == 2)
    sent = CliRunner().invoke(
        cli, ["backsync", "dlq", "replay", *queue, "--id", refused[0].message_id], env=env
    )
    assert sent.exit_code == 0, sent.output
    assert f"sent back 1 dead letter(s) of 1 decision(s) to {legacy.queue}" in sent.output

    wait_for(lambda: legacy.scalar(DECISIONS_WRITTEN) == 3)
    assert legacy.depth(dead) == 0
    shop = legacy_shop.create_app(legacy.url).test_client()
    assert shop.get("/allocations/o1").get_json() == [{"sku": "LAMP", "batchref": "b1"}]
