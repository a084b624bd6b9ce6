"""Crashes: the relay SIGKILLed again and again while a 20,000-change stream is written
loses nothing (PostgreSQL, RabbitMQ); an interrupted snapshot resumes exactly."""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

from broker import connect
from legacy_bridge import Relay, install
from tests.integration.test_bridge_rabbitmq import cdc_exchange, drain_queue
from tests.unit.test_bridge_contract import change_count, relay_state, wait_until

pytestmark = [pytest.mark.postgres, pytest.mark.rabbitmq]

ROOT = Path(__file__).resolve().parents[2]
CHANGES = 20_000
KILLS = 20


@pytest.fixture
def engine(pg_url: str) -> Iterator[Engine]:
    engine = create_engine(pg_url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE item (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)"))
    install(engine, ["item"])
    yield engine
    engine.dispose()


def relay_process(pg_url: str, amqp_url: str, exchange: str) -> None:
    """The relay as ``bridge run`` runs it, in a forked child (no import time per start)."""
    stop = threading.Event()
    relay = Relay(
        pg_url,
        broker_factory=lambda: connect(amqp_url),
        exchange=exchange,
        batch_size=500,
        heartbeat_interval=None,
    )
    relay.run(stop, poll_interval=0.02)


def write_slice(engine: Engine, first: int) -> None:
    """1,000 changes: 500 inserts and 500 updates of them, 100 per transaction."""
    for start in range(first, first + CHANGES // KILLS // 2, 100):
        bounds = {"a": start + 1, "b": start + 100}
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO item SELECT g, 0"
                    " FROM generate_series(CAST(:a AS integer), CAST(:b AS integer)) g"
                ),
                bounds,
            )
        with engine.begin() as conn:
            conn.execute(text("UPDATE item SET n = 1 WHERE id BETWEEN :a AND :b"), bounds)


def test_relay_killed_20_times_during_a_stream_loses_nothing(
    engine: Engine, pg_url: str, amqp_url: str
) -> None:
    rng = random.Random(2024)
    fork = multiprocessing.get_context("fork")
    pause = threading.Event()  # never set: waits are the random kill moments
    with cdc_exchange(amqp_url) as (exchange, queue):
        pending_at_kill = []
        for round_ in range(KILLS):
            writer = threading.Thread(target=write_slice, args=(engine, round_ * 500))
            writer.start()
            before = relay_state(engine)["last_confirmed_pos"]
            child = fork.Process(target=relay_process, args=(pg_url, amqp_url, exchange))
            child.start()
            try:
                if rng.random() < 0.5:  # mid-stream: once it has confirmed something
                    wait_until(lambda b=before: relay_state(engine)["last_confirmed_pos"] > b)
                pause.wait(rng.uniform(0.0, 0.2))  # a random moment
            finally:
                assert child.pid is not None
                os.kill(child.pid, signal.SIGKILL)
                child.join()
            pending_at_kill.append(change_count(engine) - relay_state(engine)["last_confirmed_pos"])
            writer.join()
            assert child.exitcode == -signal.SIGKILL
        assert change_count(engine) == CHANGES
        assert sum(1 for p in pending_at_kill if p > 0) >= KILLS // 2  # kills hit the stream

        final = fork.Process(target=relay_process, args=(pg_url, amqp_url, exchange))
        final.start()
        try:
            wait_until(lambda: relay_state(engine)["last_confirmed_pos"] == CHANGES, 60)
        finally:
            assert final.pid is not None
            os.kill(final.pid, signal.SIGKILL)
            final.join()
        messages = drain_queue(amqp_url, queue, CHANGES)

    install_id = relay_state(engine)["install_id"]
    with engine.connect() as conn:
        expected = {
            f"{install_id}:{change_id}": pos
            for change_id, pos in conn.execute(text("SELECT change_id, pos FROM strangler_change"))
        }
    received = Counter(m.message_id for m in messages)
    assert set(received) == set(expected)  # every change, nothing else
    for message in messages:  # a re-send is the same change at the same position
        event = json.loads(message.body)
        assert message.message_id == f"{install_id}:{event['source']['change_id']}"
        assert event["source"]["seq"] == expected[message.message_id]
    assert sorted(expected.values()) == list(range(1, CHANGES + 1))


def snapshot_rows(engine: Engine) -> int:
    with engine.connect() as conn:
        query = text("SELECT count(*) FROM strangler_change WHERE op = 'r'")
        return int(conn.execute(query).scalar_one())


def test_a_killed_snapshot_resumes_without_gap_or_double(engine: Engine, pg_url: str) -> None:
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO item SELECT g, g FROM generate_series(1, 20000) g"))
    env = {**os.environ, "LEGACY_DB_URL": pg_url}
    command = [sys.executable, "-m", "legacy_bridge", "snapshot", "--chunk-size", "200"]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: snapshot_rows(engine) >= 2000 or process.poll() is not None, 60)
        process.kill()
        process.wait()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    interrupted_at = snapshot_rows(engine)
    assert interrupted_at < 20000

    again = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)

    assert again.returncode == 0, again.stderr
    assert f"item: {20000 - interrupted_at} rows read (20000 in all)" in again.stdout
    with engine.connect() as conn:
        counts = conn.execute(
            text(
                "SELECT count(*), count(DISTINCT pk), min((pk->>'id')::int),"
                " max((pk->>'id')::int) FROM strangler_change WHERE op = 'r'"
            )
        ).one()
    assert tuple(counts) == (20000, 20000, 1, 20000)
