"""Outages: RabbitMQ stopped and started during a stream, the legacy database dropping
the relay's connections; the relay resumes by itself and loses nothing.

The RabbitMQ test stops the local broker's application for a few seconds (other tests
running on the machine at that moment see their connections closed); it always starts it
again and waits for it."""

from __future__ import annotations

import json
import logging
import subprocess
import threading
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

from broker import Broker, QueueSpec, connect
from legacy_bridge import Relay, install
from tests.integration.test_bridge_rabbitmq import cdc_exchange, drain_queue
from tests.unit.test_bridge_contract import (
    bodies,
    change_count,
    relay_state,
    take_all,
    wait_until,
)

pytestmark = pytest.mark.postgres


@pytest.fixture
def engine(pg_url: str) -> Iterator[Engine]:
    engine = create_engine(pg_url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE item (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)"))
    install(engine, ["item"])
    yield engine
    engine.dispose()


def add_items(engine: Engine, first: int, count: int) -> None:
    for start in range(first, first + count, 50):
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO item SELECT g, 0"
                    " FROM generate_series(CAST(:a AS integer), CAST(:b AS integer)) g"
                ),
                {"a": start, "b": min(start + 49, first + count - 1)},
            )


class Running:
    """``relay.run`` in a thread; an exception that ends it is kept in ``failure``."""

    def __init__(self, relay: Relay) -> None:
        self.stop = threading.Event()
        self.failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(relay,))
        self._thread.start()

    def _run(self, relay: Relay) -> None:
        try:
            relay.run(self.stop, poll_interval=0.02)
        except BaseException as error:  # reported by the test
            self.failure = error

    def alive(self) -> bool:
        return self._thread.is_alive()

    def finish(self) -> None:
        self.stop.set()
        self._thread.join(timeout=30)


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=120)


@pytest.mark.rabbitmq
def test_relay_rides_out_a_rabbitmq_restart(
    engine: Engine, amqp_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="legacy_bridge")
    with cdc_exchange(amqp_url) as (exchange, queue):
        relay = Relay(
            engine,
            broker_factory=lambda: connect(amqp_url),
            exchange=exchange,
            heartbeat_interval=None,
            max_backoff=0.5,
        )
        running = Running(relay)
        try:
            add_items(engine, 1, 500)
            wait_until(lambda: relay_state(engine)["last_confirmed_pos"] == 500)
            rabbitmqctl("stop_app")
            try:
                add_items(engine, 501, 500)  # captured while the broker is down
                wait_until(lambda: "broker unavailable" in caplog.text)
                assert running.alive()
            finally:
                rabbitmqctl("start_app")
                rabbitmqctl("await_startup", "--timeout", "120")
            add_items(engine, 1001, 500)
            wait_until(lambda: relay_state(engine)["last_confirmed_pos"] == 1500, 60)
            assert running.alive() and running.failure is None
        finally:
            running.finish()
            relay.close()
        assert running.failure is None
        messages = drain_queue(amqp_url, queue, 1500)

    ids = {json.loads(m.body)["after"]["id"] for m in messages}
    assert ids == set(range(1, 1501))


def relay_backends(killer: Engine, *, terminate: bool) -> int:
    """How many backends the relay under test holds (terminated, with ``terminate``)."""
    what = "pg_terminate_backend(pid)" if terminate else "pid"
    with killer.begin() as conn:
        return int(
            conn.execute(
                text(
                    f"SELECT count({what}) FROM pg_stat_activity WHERE datname = current_database()"
                    " AND application_name = 'relay_under_test'"
                )
            ).scalar_one()
        )


@pytest.fixture
def memory_broker(memory_broker_url: str) -> Iterator[Callable[[], Broker]]:
    broker = connect(memory_broker_url)
    broker.declare_exchange("legacy.cdc", alternate_exchange="legacy.cdc.unrouted")
    broker.declare_queue(QueueSpec("outage_q", bindings=[("legacy.cdc", "#")]))
    yield lambda: broker
    broker.close()


def test_relay_survives_the_database_dropping_its_connections(
    engine: Engine, pg_url: str, memory_broker: Callable[[], Broker]
) -> None:
    killer = create_engine(pg_url)
    relay_url = f"{pg_url}?application_name=relay_under_test"
    relay = Relay(relay_url, memory_broker(), heartbeat_interval=None, max_backoff=0.2)
    running = Running(relay)
    try:
        for round_ in range(5):
            add_items(engine, round_ * 200 + 1, 200)
            wait_until(lambda r=round_: relay_state(engine)["last_confirmed_pos"] > r * 200)
            # the relay holds no connection at some instants (its look for new changes
            # reconnects after a drop, and may let go between two looks): terminate until
            # one of its connections was dropped
            wait_until(lambda: relay_backends(killer, terminate=True) >= 1)
        wait_until(lambda: relay_state(engine)["last_confirmed_pos"] == 1000, 60)
        assert running.alive() and running.failure is None
    finally:
        running.finish()
        relay.close()
        killer.dispose()
    assert running.failure is None
    assert change_count(engine) == 1000
    events = bodies(take_all(memory_broker(), "outage_q"))
    assert sorted({e["after"]["id"] for e in events}) == list(range(1, 1001))
