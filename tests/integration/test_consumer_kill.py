"""The consumer SIGKILLed 20 times while a 20,000-change legacy stream flows, then
restarted: `strangler verify` finds every order matching legacy, and the outbox has
published every domain event, one row per state change, across the kills.

Real pieces: the legacy shop on PostgreSQL with the bridge installed (writes through its
API and in bulk), the bridge's relay to RabbitMQ (a thread here), `strangler consume` as
a subprocess (killed and restarted), the legacy shop served over HTTP for verify.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import Engine
from werkzeug.serving import WSGIRequestHandler, make_server

import broker
import legacy_bridge
from broker import Broker, QueueSpec
from examples.legacy_shop import TABLES
from new_domain import upgrade_database
from new_domain.adapters import orm
from tests.integration.consumer_streams import LegacyWorkload
from tests.services import unique_name

pytestmark = [pytest.mark.postgres, pytest.mark.rabbitmq]

ROOT = Path(__file__).resolve().parents[2]
KILLS = 20
ROUNDS = 20
ORDERS_PER_ROUND = 170  # about 1,000 changes a round with the rest of the round's writes
EXPECTED_CHANGES = 20_000


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        threading.Event().wait(0.01)
    return result


@contextmanager
def served(app: Any) -> Iterator[str]:
    class KeepAlive(WSGIRequestHandler):
        protocol_version = "HTTP/1.1"

    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=KeepAlive)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(10)


@contextmanager
def relaying(legacy_db: str, amqp_url: str, exchange: str) -> Iterator[None]:
    relay = legacy_bridge.Relay(
        legacy_db, broker_factory=lambda: broker.connect(amqp_url), exchange=exchange
    )
    stop = threading.Event()
    thread = threading.Thread(target=relay.run, args=(stop,), kwargs={"poll_interval": 0.02})
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(30)
        relay.close()


class Consumers:
    """`strangler consume` subprocesses, one at a time."""

    command = "from new_domain.entrypoints.cli import consume; consume()"

    def __init__(self, env: dict[str, str], args: list[str], log: Path) -> None:
        self.env = env
        self.args = args
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        command = "import logging; logging.basicConfig(level=logging.INFO);" + self.command
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-c", command, *self.args],
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def kill(self) -> None:
        assert self.process is not None and self.process.poll() is None, self.log.read_text()
        self.process.kill()
        self.process.wait(10)

    def stop(self) -> int:
        assert self.process is not None
        self.process.terminate()
        return self.process.wait(30)

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


def applied_position(new_db: Engine) -> int:
    with new_db.connect() as connection:
        return int(connection.scalar(select(func.max(orm.applied_change_position.c.position))) or 0)


def legacy_published(legacy_db: Engine) -> int | None:
    """The last position the relay published, once it has published everything."""
    with legacy_db.connect() as connection:
        waiting = connection.scalar(text("SELECT count(*) FROM strangler_change WHERE pos IS NULL"))
        last = connection.scalar(text("SELECT max(pos) FROM strangler_change"))
    return None if waiting else int(last or 0)


def captured(legacy_db: Engine) -> int:
    with legacy_db.connect() as connection:
        return int(connection.scalar(text("SELECT count(*) FROM strangler_change")) or 0)


def drain(admin: Broker, queue: str) -> list[str]:
    ids: list[str] = []
    while deliveries := admin.get_batch(queue, 5000, 0.5):
        ids.extend(d.message.message_id for d in deliveries)
        admin.ack(deliveries[-1].delivery_tag, multiple=True)
    return ids


def test_a_consumer_killed_20_times_ends_up_matching_legacy_and_publishes_every_event(
    pg_url_factory: Callable[[], str], amqp_url: str, tmp_path: Path
) -> None:
    legacy_url, new_url = pg_url_factory(), pg_url_factory()
    exchange, queue = unique_name("kill_cdc"), unique_name("kill_q")
    events, subscriber = unique_name("kill_events"), unique_name("kill_sub")
    workload = LegacyWorkload(legacy_url)
    legacy_bridge.install(legacy_url, TABLES)
    workload.stock()
    upgrade_database(new_url)
    legacy_db, new_db = create_engine(legacy_url), create_engine(new_url)
    admin = broker.connect(amqp_url)
    admin.declare_exchange(exchange, alternate_exchange=f"{exchange}.unrouted")
    admin.declare_queue(QueueSpec(queue, [(exchange, "#")]))
    admin.declare_queue(QueueSpec(subscriber, [(events, "#")]))
    admin.close()
    env = {**os.environ, "NEW_DB_URL": new_url, "BROKER_URL": amqp_url}
    args = ["--queue", queue, "--exchange", exchange, "--events-exchange", events]
    args += ["--batch-size", "500", "--batch-timeout", "0.05"]
    log = tmp_path / "consume.log"
    consumers = Consumers(env, args, log)
    writer = Writer(workload)
    killed_at: list[tuple[int, int]] = []  # (position applied, changes captured) at each kill
    try:
        with relaying(legacy_url, amqp_url, exchange):
            consumers.start()
            writer.start()
            for kill in range(1, KILLS + 1):
                target = kill * EXPECTED_CHANGES // (KILLS + 1)
                wait_for(lambda t=target: applied_position(new_db) >= t, 120, "progress")
                consumers.kill()  # SIGKILL, wherever the consumer is in the stream
                killed_at.append((applied_position(new_db), captured(legacy_db)))
                consumers.start()
            writer.join()
            last = wait_for(lambda: legacy_published(legacy_db), 60, "the relay")
            wait_for(lambda: applied_position(new_db) == last, 120, "the consumer to catch up")
            wait_for(lambda: unpublished_events(new_db) == 0, 60, "the outbox relay")
            assert consumers.stop() == 0, log.read_text()[-3000:]
        assert last >= EXPECTED_CHANGES
        assert all(applied < captured_ for applied, captured_ in killed_at)  # mid-stream

        summary = verified_summary(workload, env, legacy_url)
        checked = int(summary.split()[1])
        assert checked > 3000  # (orders all of whose lines were deleted are gone)
        assert f"{checked} matching, 0 differing, 0 only in legacy" in summary

        assert_one_event_per_state_change(legacy_db, new_db)
        with new_db.connect() as connection:
            rows = connection.execute(
                select(orm.outbox.c.message_id, orm.outbox.c.event_type)
            ).all()
        reader = broker.connect(amqp_url)
        try:
            received = drain(reader, subscriber)
        finally:
            reader.close()
        assert set(received) == {message_id for message_id, _ in rows}  # all published
    finally:
        writer.join()
        consumers.close()
        cleaner = broker.connect(amqp_url)
        for name in (queue, f"{queue}.dlq", subscriber, f"{exchange}.unrouted"):
            cleaner.delete_queue(name)
        cleaner.close()
        workload.close()
        legacy_db.dispose()
        new_db.dispose()


def verified_summary(workload: LegacyWorkload, env: dict[str, str], legacy_url: str) -> str:
    """`strangler verify` against the legacy shop served over HTTP: it must exit 0; its
    summary line ("checked N orders: ...")."""
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    with served(workload.app) as legacy_http:
        verified = subprocess.run(
            [
                sys.executable,
                "-c",
                "from skeleton_app.composition.cli import main; main()",
                "verify",
                "--legacy-url",
                legacy_http,
            ],
            cwd=ROOT,
            env={**env, "LEGACY_DB_URL": legacy_url},
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert verified.returncode == 0, verified.stdout + verified.stderr
    [summary] = [line for line in verified.stdout.splitlines() if line.startswith("checked")]
    return summary


def assert_one_event_per_state_change(legacy_db: Engine, new_db: Engine) -> None:
    """One outbox row per legacy state change, however often changes were redelivered:
    a change applied twice would add one."""
    with legacy_db.connect() as connection:
        changes = dict(
            connection.execute(
                text("SELECT table_name || '.' || op, count(*) FROM strangler_change GROUP BY 1")
            ).all()
        )
    with new_db.connect() as connection:
        rows = connection.execute(
            select(orm.outbox.c.event_type, func.count()).group_by(orm.outbox.c.event_type)
        ).all()
    assert dict(rows) == {
        "BatchCreated": changes["stock_lot.c"],
        "Allocated": changes["lot_allocation.c"],
        "Deallocated": changes["lot_allocation.d"],
        "BatchQuantityChanged": changes["stock_lot.u"],
    }


class Writer(threading.Thread):
    """Legacy writes in rounds, while the consumer is killed and restarted."""

    def __init__(self, workload: LegacyWorkload, rounds: int = ROUNDS) -> None:
        super().__init__(name="legacy-writes", daemon=True)
        self.workload = workload
        self.rounds = rounds
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for round_ in range(self.rounds):
                self.workload.allocate_many(ORDERS_PER_ROUND, per_transaction=25)
                self.workload.deallocate_some(10)
                self.workload.squeeze(self.workload.skus[round_ % len(self.workload.skus)])
        except BaseException as error:  # noqa: BLE001 - reported by join()
            self.error = error

    def join(self, timeout: float | None = 300) -> None:
        if self.ident is None:
            return  # never started
        super().join(timeout)
        if self.error is not None:
            error, self.error = self.error, None
            raise error


def unpublished_events(new_db: Engine) -> int:
    with new_db.connect() as connection:
        query = select(func.count()).where(orm.outbox.c.published_at.is_(None))
        return int(connection.scalar(query) or 0)
