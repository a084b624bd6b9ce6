"""A 3-node RabbitMQ cluster (deploy/rabbitmq/local-cluster.sh, started by the session's
``cluster`` fixture when it is not running): the kit's quorum queues keep every confirmed
message when the node leading the queue stops, a BROKER_URL listing the nodes reaches one
still running, and the whole pipeline (bridge, consumer) loses nothing and applies nothing
twice when a node is lost mid-stream."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import create_engine

import broker
import legacy_bridge
from broker import Message, QueueSpec
from examples.legacy_shop import TABLES
from new_domain import upgrade_database
from tests.integration.consumer_streams import LegacyWorkload
from tests.integration.test_consumer_kill import (
    Consumers,
    Writer,
    applied_position,
    assert_one_event_per_state_change,
    legacy_published,
    relaying,
    unpublished_events,
    verified_summary,
    wait_for,
)
from tests.services import CLUSTER_NODES as NODES
from tests.services import CLUSTER_PORTS as PORTS
from tests.services import CLUSTER_SCRIPT as SCRIPT
from tests.services import unique_name

pytestmark = pytest.mark.rabbitmq


def rabbitmqctl(node: int, *args: str) -> str:
    return subprocess.run(
        ["rabbitmqctl", "-q", "-n", f"strangler-{node}@localhost", *args],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout


def leader_of(queue: str, asking: int = 1) -> int:
    """The number of the node leading ``queue``, as node ``asking`` knows it."""
    rows = json.loads(rabbitmqctl(asking, "list_queues", "name", "leader", "--formatter", "json"))
    [leader] = [row["leader"] for row in rows if row["name"] == queue]
    return int(str(leader).split("@")[0].rsplit("-", 1)[1])


def node_script(action: str, node: int) -> None:
    subprocess.run([str(SCRIPT), action, str(node)], check=True, timeout=180,
                   capture_output=True)  # fmt: skip


def test_confirmed_messages_survive_the_loss_of_the_queues_leader(cluster: str) -> None:
    exchange, queue = unique_name("test_cluster"), unique_name("test_cluster_q")
    publisher = broker.connect(cluster)
    try:
        publisher.declare_queue(QueueSpec(queue, [(exchange, "#")]))
        sent = [Message("a.b", json.dumps({"n": n}).encode(), f"m-{n}") for n in range(2000)]
        publisher.publish(exchange, sent)  # returns once every one is confirmed
    finally:
        publisher.close()
    leader = leader_of(queue)
    node_script("stop-node", leader)
    try:
        # the nodes in turn: the stopped one refuses, another takes the connection
        reader = broker.connect(cluster)
        received: list[str] = []
        try:
            while len(received) < len(sent):
                got = reader.get_batch(queue, 500, 10.0)
                assert got, f"only {len(received)} of {len(sent)} came back"
                for delivery in got:
                    received.append(delivery.message.message_id)
                    reader.ack(delivery.delivery_tag)
            new_leader = leader_of(queue, asking=1 if leader != 1 else 2)
        finally:
            reader.delete_queue(queue)
            reader.close()
    finally:
        node_script("start-node", leader)
    assert received == [m.message_id for m in sent]  # all of them, in order, once
    assert new_leader != leader


NODE_PORTS = dict(zip((1, 2, 3), PORTS, strict=True))
LOSS_ROUNDS = 20  # about 1,000 changes a round: a 20,000-change stream


def nodes_url(*order: int) -> str:
    """BROKER_URL listing the cluster's nodes in ``order`` (tried in that order)."""
    return ",".join(f"amqp://guest:guest@127.0.0.1:{NODE_PORTS[n]}/%2F" for n in order)


@pytest.mark.postgres
@pytest.mark.parametrize("lost", ["the consumer's queue leader", "the bridge's node"])
def test_a_node_lost_mid_stream_loses_nothing_and_applies_nothing_twice(
    cluster: str, lost: str, pg_url_factory: Callable[[], str], tmp_path: Path
) -> None:
    """The bridge (node 1 first in its URL) and `strangler consume` (node 2 first, so its
    queue is led elsewhere than the bridge's node) run through a 20,000-change legacy
    stream; one node stops mid-stream and starts again later. Both processes carry on by
    themselves, every change is applied once (one domain event per state change), no
    dead letter, and `strangler verify` finds legacy and the new system equal."""
    legacy_url, new_url = pg_url_factory(), pg_url_factory()
    exchange, queue = unique_name("loss_cdc"), unique_name("loss_q")
    workload = LegacyWorkload(legacy_url)
    legacy_bridge.install(legacy_url, TABLES)
    workload.stock()
    upgrade_database(new_url)
    legacy_db, new_db = create_engine(legacy_url), create_engine(new_url)
    consumer_url = nodes_url(2, 3, 1)
    env = {**os.environ, "NEW_DB_URL": new_url, "BROKER_URL": consumer_url}
    args = ["--queue", queue, "--exchange", exchange, "--batch-size", "500"]
    consumers = Consumers(env, args, tmp_path / "consume.log")
    writer = Writer(workload, rounds=LOSS_ROUNDS)
    try:
        consumers.start()
        wait_for(lambda: queue_declared(queue), 60, "the consumer's queue")
        victim = leader_of(queue) if lost.startswith("the consumer") else 1
        with relaying(legacy_url, nodes_url(1, 2, 3), exchange):
            writer.start()
            wait_for(lambda: applied_position(new_db) >= 5_000, 180, "progress before the loss")
            node_script("stop-node", victim)
            stopped_at = applied_position(new_db)
            wait_for(lambda: applied_position(new_db) >= stopped_at + 5_000, 300, "progress")
            node_script("start-node", victim)
            writer.join()
            last = wait_for(lambda: legacy_published(legacy_db), 120, "the relay")
            wait_for(lambda: applied_position(new_db) == last, 180, "the consumer to catch up")
        wait_for(lambda: unpublished_events(new_db) == 0, 60, "the outbox relay")
        assert consumers.process is not None and consumers.process.poll() is None
        assert consumers.stop() == 0, consumers.log.read_text()[-3000:]
        assert last >= 20_000 and stopped_at < last
        assert "reconnected to the broker" in consumers.log.read_text() or victim == 1
        assert dead_letters_waiting(queue) == 0
        assert_one_event_per_state_change(legacy_db, new_db)
        summary = verified_summary(workload, env, legacy_url)
        assert " 0 differing, 0 only in legacy, 0 only in the new system, 0 errors" in summary
    finally:
        writer.join()
        consumers.close()
        node_script("start-node", 1)  # idempotent: every node runs for what comes next
        node_script("start-node", 2)
        node_script("start-node", 3)
        remove_queues(queue, exchange)
        workload.close()
        legacy_db.dispose()
        new_db.dispose()


def queue_declared(queue: str) -> bool:
    rows = json.loads(rabbitmqctl(1, "list_queues", "name", "--formatter", "json"))
    return any(row["name"] == queue for row in rows)


def dead_letters_waiting(queue: str) -> int:
    rows = json.loads(rabbitmqctl(1, "list_queues", "name", "messages", "--formatter", "json"))
    return sum(int(row["messages"]) for row in rows if row["name"] == f"{queue}.dlq")


def remove_queues(queue: str, exchange: str) -> None:
    cleaner = broker.connect(NODES)
    try:
        for name in (queue, f"{queue}.dlq", f"{exchange}.unrouted"):
            cleaner.delete_queue(name)
    finally:
        cleaner.close()
