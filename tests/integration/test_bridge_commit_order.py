"""Commit order under load: 8 concurrent writers, 10,000 transactions whose commits are
deliberately delayed (so change ids commit out of order), relayed live to RabbitMQ.
Every change arrives, none is skipped, each row's changes arrive in commit order, and
each transaction's events are consecutive and marked."""

from __future__ import annotations

import json
import random
import threading
import time
from collections import defaultdict
from collections.abc import Iterator

import psycopg
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine, make_url

from broker import connect
from legacy_bridge import Relay, install
from tests.integration.test_bridge_rabbitmq import cdc_exchange, drain_queue
from tests.unit.test_bridge_contract import Workers, relay_state, wait_until

pytestmark = [pytest.mark.postgres, pytest.mark.rabbitmq]

WRITERS = 8
TRANSACTIONS = 10_000
ACCOUNTS = 100


@pytest.fixture
def engine(pg_url: str) -> Iterator[Engine]:
    engine = create_engine(pg_url)
    with engine.begin() as conn:
        conn.execute(
            text("CREATE TABLE account (id INTEGER PRIMARY KEY, version INTEGER NOT NULL)")
        )
        conn.execute(
            text("CREATE TABLE ledger (id BIGSERIAL PRIMARY KEY, account_id INTEGER, n INTEGER)")
        )
        conn.execute(
            text("INSERT INTO account SELECT g, 0 FROM generate_series(1, :n) g"),
            {"n": ACCOUNTS},
        )
    install(engine, ["account", "ledger"])
    yield engine
    engine.dispose()


def write(dsn: str, worker: int, count: int) -> None:
    """``count`` transactions: every other one adds a ledger row, each one bumps an
    account's version; every fifth one waits before committing, while others commit their
    later ids."""
    rng = random.Random(worker)
    with psycopg.connect(dsn) as conn:
        for n in range(count):
            with conn.transaction():
                if n % 2:
                    conn.execute("INSERT INTO ledger (account_id, n) VALUES (%s, %s)", (worker, n))
                conn.execute(
                    "UPDATE account SET version = version + 1 WHERE id = %s",
                    (rng.randint(1, ACCOUNTS),),
                )
                if n % 5 == 0:
                    time.sleep(rng.uniform(0.0005, 0.003))  # a slow commit, out of order


def test_concurrent_writers_with_late_commits_lose_nothing_and_keep_row_order(
    engine: Engine, pg_url: str, amqp_url: str
) -> None:
    dsn = make_url(pg_url).set(drivername="postgresql").render_as_string(hide_password=False)
    with cdc_exchange(amqp_url) as (exchange, queue):
        stop = threading.Event()
        relay = Relay(
            engine,
            broker_factory=lambda: connect(amqp_url),
            exchange=exchange,
            heartbeat_interval=None,
        )
        relay_thread = threading.Thread(target=relay.run, args=(stop, 0.05))
        relay_thread.start()
        try:
            writers = Workers()
            for w in range(WRITERS):
                writers.start(write, dsn, w, TRANSACTIONS // WRITERS)
            writers.join()
            expected = TRANSACTIONS + TRANSACTIONS // 2
            wait_until(lambda: relay_state(engine)["last_confirmed_pos"] >= expected, 60)
        finally:
            stop.set()
            relay_thread.join(timeout=30)
            relay.close()
        assert not relay_thread.is_alive()
        messages = drain_queue(amqp_url, queue, expected)

    with engine.connect() as conn:
        captured = {
            row.change_id: row
            for row in conn.execute(text("SELECT change_id, txid, pos FROM strangler_change"))
        }
    events = [json.loads(m.body) for m in messages]
    assert len(captured) == expected
    # every change published, none skipped, none twice
    assert sorted(e["source"]["change_id"] for e in events) == sorted(captured)
    seqs = [e["source"]["seq"] for e in events]
    assert seqs == list(range(1, expected + 1))  # one channel: broker order = seq order

    # ids really committed out of order: some higher id got an earlier position
    by_id = sorted(captured.values(), key=lambda r: r.change_id)
    overtaken = sum(1 for a, b in zip(by_id, by_id[1:], strict=False) if a.pos > b.pos)
    assert overtaken > 0

    # each account's versions arrive in commit order: 1, 2, 3, ... without gaps
    versions: dict[int, list[int]] = defaultdict(list)
    for event in events:
        if event["source"]["table"] == "account":
            versions[event["after"]["id"]].append(event["after"]["version"])
    assert sum(len(v) for v in versions.values()) == TRANSACTIONS
    assert all(v == list(range(1, len(v) + 1)) for v in versions.values())

    # each transaction: consecutive events, ordered, last marked once at the end
    blocks: dict[str, list[dict[str, object]]] = defaultdict(list)
    for event in events:
        blocks[event["transaction"]["id"]].append(event)
    assert len(blocks) == TRANSACTIONS
    assert sorted(len(m) for m in blocks.values()) == [1] * (TRANSACTIONS // 2) + [2] * (
        TRANSACTIONS // 2
    )
    for members in blocks.values():
        assert [m["transaction"]["total_order"] for m in members] == list(
            range(1, len(members) + 1)
        )
        assert [m["transaction"]["last"] for m in members] == [False] * (len(members) - 1) + [True]
        first = members[0]["source"]["seq"]
        assert [m["source"]["seq"] for m in members] == list(range(first, first + len(members)))
        assert {m["source"]["txid"] for m in members} == {members[0]["transaction"]["id"]}
