"""Back-sync's loop on the in-process broker and SQLite: decisions gathered and written
in queue order, acknowledged after commit, redeliveries written once, fences after
``settle``, and whatever can never be written dead-lettered without holding the rest up."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError

import broker
from backsync import LEGACY_SHOP, QUEUE, BackSync, Writer, dead_letter_queue, install_tables
from backsync.dead_letters import describe, peek, replay
from backsync.runner import EXCHANGE, LegacyUnavailable
from broker import Broker, BrokerError, Message
from tests.backsync_support import (
    DECISIONS_WRITTEN,
    decision_messages,
    engine_for,
    legacy_database,
    legacy_fact,
    message,
    move_message,
)

START = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = START
        self.seconds = 1000.0

    def wall(self) -> datetime:
        return self.now

    def monotonic(self) -> float:
        return self.seconds

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)
        self.seconds += seconds


@dataclass
class World:
    engine: Engine
    broker_url: str
    clock: Clock
    writer: Writer

    def backsync(self, **options: Any) -> BackSync:
        worker = BackSync(
            self.writer,
            lambda: broker.connect(self.broker_url),
            poll_timeout=0.0,
            clock=self.clock.wall,
            monotonic=self.clock.monotonic,
            **options,
        )
        worker.connect()
        return worker

    def publish(self, messages: Sequence[Message]) -> None:
        connection = broker.connect(self.broker_url)
        connection.publish(EXCHANGE, messages)
        connection.close()

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        with self.engine.connect() as conn:
            return [tuple(row) for row in conn.execute(text(sql))]

    def markers(self) -> list[tuple[Any, ...]]:
        return self.rows("SELECT kind, decision_id, epoch FROM strangler_origin ORDER BY origin_id")

    def depth(self, queue: str = QUEUE) -> int:
        connection = broker.connect(self.broker_url)
        try:
            return connection.queue_depth(queue)
        finally:
            connection.close()

    def dead_letters_kept(self) -> list[Message]:
        """The dead letters, left in their queue."""
        connection = broker.connect(self.broker_url)
        try:
            return [d.message for d in peek(connection, dead_letter_queue(QUEUE), 100)]
        finally:
            connection.close()

    def dead_letters(self) -> list[Message]:
        connection = broker.connect(self.broker_url)
        try:
            deliveries = connection.get_batch(dead_letter_queue(QUEUE), 100, 0.0)
            return [d.message for d in deliveries]
        finally:
            connection.close()


@pytest.fixture
def world(tmp_path: Path, memory_broker_url: str) -> Iterator[World]:
    url = f"sqlite:///{tmp_path / 'legacy.db'}"
    legacy_database(url)
    engine = engine_for(url)
    install_tables(engine, QUEUE)
    clock = Clock()
    writer = Writer(engine, LEGACY_SHOP, QUEUE, clock=clock.wall)
    yield World(engine, memory_broker_url, clock, writer)
    engine.dispose()


def drain(worker: BackSync, rounds: int = 50) -> int:
    """Run rounds until one neither settles nor takes anything; how many messages were
    settled."""
    total = 0
    for _ in range(rounds):
        before = len(worker.pending)
        settled = worker.run_once()
        total += settled
        if not settled and len(worker.pending) == before:
            return total
    raise AssertionError("back-sync never ran out of work")


def add_batch(ref: str, sku: str = "LAMP", qty: int = 10, **kw: Any) -> list[Message]:
    data = {"ref": ref, "sku": sku, "qty": qty, "eta": None}
    return decision_messages("POST /batches", sku, "created", [("BatchCreated", data)], **kw)


def allocate(orderid: str, batchref: str, sku: str = "LAMP", **kw: Any) -> list[Message]:
    data = {"orderid": orderid, "sku": sku, "qty": 1, "batchref": batchref}
    return decision_messages(
        "POST /allocate", sku, f"allocated to {batchref}", [("Allocated", data)], **kw
    )


def test_decisions_are_written_in_order_and_acknowledged_after_commit(world: World) -> None:
    worker = world.backsync()
    first, second = add_batch("b1"), allocate("o1", "b1")
    world.publish([*first, legacy_fact("Allocated", {"orderid": "x"}), *second])

    assert drain(worker) == 3
    worker.close()  # anything unacknowledged would be back in the queue now

    assert world.depth() == 0
    assert world.markers() == [
        ("decision", json.loads(first[0].body)["decision"]["id"], None),
        ("decision", json.loads(second[0].body)["decision"]["id"], None),
    ]
    assert world.rows("SELECT order_no FROM cust_order_line") == [("o1",)]
    assert world.rows(DECISIONS_WRITTEN) == [(2,)]
    assert (worker.decisions_written, worker.dead_lettered) == (2, 0)


def cut_to_zero(moved: Sequence[str]) -> list[Message]:
    """PATCH b1 to 0: the lines of ``moved`` (newest last) go to b2."""
    events: list[tuple[str, dict[str, Any]]] = [
        ("BatchQuantityChanged", {"ref": "b1", "sku": "LAMP", "qty": 0})
    ]
    for orderid in reversed(moved):
        events.append(("Deallocated", {"orderid": orderid, "sku": "LAMP", "batchref": "b1"}))
    for orderid in moved:
        data = {"orderid": orderid, "sku": "LAMP", "qty": 1, "batchref": "b2"}
        events.append(("Allocated", data))
    summary = "; ".join(f"{orderid} -> b2" for orderid in sorted(moved))
    return decision_messages("PATCH /batches/<ref>", "LAMP", summary, events)


def history(world: World, worker: BackSync, *orders: str) -> None:
    """b1 in the warehouse, b2 arriving later, ``orders`` allocated to b1."""
    later = decision_messages(
        "POST /batches",
        "LAMP",
        "created",
        [("BatchCreated", {"ref": "b2", "sku": "LAMP", "qty": 10, "eta": "2031-01-01"})],
    )
    world.publish([*add_batch("b1"), *later])
    for orderid in orders:
        world.publish(allocate(orderid, "b1"))
    drain(worker)


def test_settled_messages_are_acknowledged_together_but_never_one_still_in_hand(
    world: World,
) -> None:
    """Acknowledgements go out together (one multiple ack) after the round, but a
    decision still arriving whose first event sits between a written decision's events
    keeps that event unacknowledged: it comes back after a crash."""
    worker = world.backsync()
    history(world, worker, "o1")
    written = cut_to_zero(["o1"])
    halves = [
        ("BatchCreated", {"ref": f"d{n}", "sku": "DESK", "qty": 5, "eta": None}) for n in (1, 2)
    ]
    arriving = decision_messages("POST /batches", "DESK", "created", halves)
    world.publish([written[0], arriving[0], *written[1:]])

    assert drain(worker) == len(written)
    worker.close()  # what was not acknowledged goes back to the queue

    assert world.depth() == 1  # the first event of the decision still arriving
    decision_id = json.loads(written[0].body)["decision"]["id"]
    assert ("decision", decision_id, None) in world.markers()


def test_a_decision_is_written_when_its_last_event_arrives_even_interleaved(
    world: World,
) -> None:
    worker = world.backsync()
    history(world, worker, "o1")
    a, b = cut_to_zero(["o1"]), allocate("o2", "b2")
    world.publish([a[0], b[0]])
    assert drain(worker) == 0  # the head waits for its other events; nothing passes it
    world.publish(a[1:])

    assert drain(worker) == 4

    ids = [m[1] for m in world.markers()[-2:]]
    assert ids == [json.loads(m.body)["decision"]["id"] for m in (a[0], b[0])]
    assert world.rows(
        "SELECT order_no, lot_ref FROM cust_order_line JOIN lot_allocation USING (line_id)"
        " JOIN stock_lot USING (lot_id) ORDER BY order_no"
    ) == [("o1", "b2"), ("o2", "b2")]


def test_a_message_that_can_never_be_written_is_dead_lettered_and_the_rest_goes_on(
    world: World,
) -> None:
    worker = world.backsync()
    not_json = Message("allocation.allocated", b"{not json", "m-1", type="Allocated")
    unknown_batch = allocate("o1", "nope")
    world.publish([*add_batch("b1"), not_json, *unknown_batch, *allocate("o2", "b1")])

    assert drain(worker) == 4

    dead = world.dead_letters()
    assert [m.message_id for m in dead] == ["m-1", unknown_batch[0].message_id]
    assert [m.headers["x-error-type"] for m in dead] == ["MalformedMessage", "Refused"]
    assert "unknown batch nope" in dead[1].headers["x-error"]
    assert dead[1].body == unknown_batch[0].body and dead[1].routing_key == "allocation.allocated"
    assert world.rows("SELECT order_no FROM cust_order_line") == [("o2",)]
    assert world.depth() == 0 and worker.dead_lettered == 2


def test_an_incomplete_decision_is_dead_lettered_after_its_timeout(world: World) -> None:
    worker = world.backsync(incomplete_timeout=30.0)
    two = decision_messages(
        "POST /batches",
        "LAMP",
        "created",
        [("BatchCreated", {"ref": "b1", "sku": "LAMP", "qty": 1, "eta": None})] * 2,
    )
    world.publish([two[0], *add_batch("b2")])
    assert drain(worker) == 0
    world.clock.advance(29)
    assert drain(worker) == 0  # still waiting, and b2 behind it too

    world.clock.advance(2)
    assert drain(worker) == 2

    [dead] = world.dead_letters()
    assert "incomplete decision" in dead.headers["x-error"]
    assert "1 of its 2 events" in dead.headers["x-error"]
    assert world.rows("SELECT lot_ref FROM stock_lot") == [("b2",)]


def test_a_resent_part_of_a_written_decision_is_acknowledged_at_once(world: World) -> None:
    worker = world.backsync(incomplete_timeout=3600.0)
    history(world, worker, "o1")
    messages = cut_to_zero(["o1"])
    world.publish(messages)
    drain(worker)
    written = len(world.markers())

    world.publish(messages[1:])  # the outbox relay re-sent a suffix

    assert drain(worker) == 2
    assert worker.skipped == 1 and len(world.markers()) == written


class LosesTheAck:
    """A broker connection that dies after the commit, before the ack (a kill)."""

    def __init__(self, inner: Broker) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def ack(self, delivery_tag: int, multiple: bool = False) -> None:
        self.inner.close()  # the unacknowledged delivery goes back to the queue
        raise BrokerError("connection lost")


def test_a_redelivery_after_a_kill_between_commit_and_ack_writes_nothing_twice(
    world: World,
) -> None:
    doomed = BackSync(
        world.writer,
        lambda: LosesTheAck(broker.connect(world.broker_url)),  # type: ignore[return-value]
        poll_timeout=0.0,
    )
    doomed.connect()
    world.publish(add_batch("b1"))
    with pytest.raises(BrokerError):
        doomed.run_once()
    assert world.depth() == 1  # back in the queue, although legacy committed it
    assert len(world.markers()) == 1

    assert drain(world.backsync()) == 1

    assert len(world.markers()) == 1
    assert world.rows("SELECT count(*) FROM stock_lot") == [(1,)]
    assert world.rows(DECISIONS_WRITTEN) == [(1,)]


def test_a_takeover_is_fenced_when_its_move_is_settle_seconds_old(world: World) -> None:
    worker = world.backsync(settle=3.0)
    world.publish([move_message("canary 30", "legacy", 1, START), *add_batch("b1")])

    assert drain(worker) == 0  # the fence waits, and the decision after it too
    world.clock.advance(2.9)
    assert drain(worker) == 0
    world.clock.advance(0.2)

    assert drain(worker) == 2
    assert [m[0] for m in world.markers()] == ["fence", "decision"]
    assert world.markers()[0][2] == 1


def test_a_handback_is_fenced_at_once(world: World) -> None:
    worker = world.backsync(settle=3.0)
    world.publish([move_message("canary 10", "canary 30", 7, START)])

    assert drain(worker) == 1
    assert world.markers() == [("fence", None, 7)]
    assert worker.fences_written == 1


class FailingWriter(Writer):
    """The legacy database fails the first ``failures`` writes."""

    failures: int = 0
    error: Exception = OperationalError("INSERT", {}, Exception("server closed the connection"))

    def write_decision(self, decision: Any) -> Any:
        if self.failures:
            self.failures -= 1
            raise self.error
        return super().write_decision(decision)


def test_while_legacy_is_unavailable_the_decision_stays_in_hand(world: World) -> None:
    writer = FailingWriter(world.engine, LEGACY_SHOP, QUEUE)
    writer.failures = 2
    world.writer = writer
    worker = world.backsync()
    world.publish(add_batch("b1"))

    for _ in range(2):
        with pytest.raises(
            LegacyUnavailable, match="legacy database: server closed the connection"
        ):
            worker.run_once()
    assert len(worker.pending) == 1 and world.markers() == []

    assert drain(worker) == 1
    assert len(world.markers()) == 1 and world.dead_letters() == []


def test_an_unexpected_error_is_retried_then_dead_lettered(world: World) -> None:
    writer = FailingWriter(world.engine, LEGACY_SHOP, QUEUE)
    writer.failures, writer.error = 3, RuntimeError("a bug")
    world.writer = writer
    worker = world.backsync(max_attempts=3)
    world.publish([*add_batch("b1"), *add_batch("b2")])

    for _ in range(2):
        with pytest.raises(RuntimeError):
            worker.run_once()
        worker.close()  # as the loop does after an unexpected failure

    assert drain(worker) == 2
    [dead] = world.dead_letters()
    assert dead.headers["x-error-type"] == "RuntimeError"
    assert world.rows("SELECT lot_ref FROM stock_lot") == [("b2",)]


def test_a_decision_larger_than_the_prefetch_window_still_arrives_whole(world: World) -> None:
    worker = world.backsync(prefetch=2)
    history(world, worker, "o1", "o2")
    written = len(world.markers())
    world.publish(cut_to_zero(["o1", "o2"]))

    assert drain(worker) == 5

    assert worker.prefetch >= 6 and len(world.markers()) == written + 1
    assert world.dead_letters() == []


def test_an_event_that_is_no_decision_block_at_all_is_dead_lettered(world: World) -> None:
    worker = world.backsync()
    body = json.loads(add_batch("b1")[0].body)
    body["decision"] = {"id": "d", "route": "POST /batches", "events": 1, "index": 3}
    world.publish([message(body)])

    assert drain(worker) == 1
    [dead] = world.dead_letters()
    assert dead.headers["x-error-type"] == "MalformedMessage"


def test_the_loop_reconnects_after_the_broker_failed_and_goes_on(world: World) -> None:
    import threading
    import time

    attempts: list[int] = []

    def flaky() -> Broker:
        attempts.append(1)
        if len(attempts) <= 2:
            raise BrokerError("cannot connect to RabbitMQ")
        return broker.connect(world.broker_url)

    world.backsync().close()  # the queue exists: what is published now waits in it
    world.publish([*add_batch("b1"), *allocate("o1", "b1")])
    worker = BackSync(world.writer, flaky, poll_timeout=0.01, reconnect_delay=0.01)
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while worker.decisions_written < 2:
            assert time.monotonic() < deadline, "back-sync never caught up"
            time.sleep(0.01)
    finally:
        stop.set()
        thread.join(10)

    assert not thread.is_alive()
    assert len(attempts) == 3 and len(world.markers()) == 2
    assert world.depth() == 0


# -- lanes: several products' decisions written side by side ---------------------------

SKUS = ("LAMP", "SOFA", "DESK", "RUG")


def by_product(count: int) -> list[list[Message]]:
    """A batch per product, then ``count`` allocations per product, interleaved."""
    decisions = [add_batch(f"b-{sku}", sku, qty=100) for sku in SKUS]
    for n in range(count):
        decisions += [allocate(f"o{n}-{sku}", f"b-{sku}", sku) for sku in SKUS]
    return decisions


def decision_ids(decisions: Sequence[Sequence[Message]]) -> list[str]:
    return [json.loads(d[0].body)["decision"]["id"] for d in decisions]


class RecordingWriter(Writer):
    """Remembers which thread wrote each decision; fails ``failures`` writes of
    ``failing_sku`` with ``error``."""

    failing_sku = ""
    failures = 0
    error: Exception = OperationalError("INSERT", {}, Exception("server closed the connection"))

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.threads: set[str] = set()

    def write_decision(self, decision: Any) -> Any:
        self.threads.add(threading.current_thread().name)
        if decision.sku == self.failing_sku and self.failures:
            self.failures -= 1
            raise self.error
        return super().write_decision(decision)


def test_complete_decisions_of_several_products_are_written_in_lanes_each_in_queue_order(
    world: World,
) -> None:
    writer = world.writer = RecordingWriter(world.engine, LEGACY_SHOP, QUEUE)
    worker = world.backsync(lanes=4)
    decisions = by_product(5)
    world.publish([m for d in decisions for m in d])

    assert drain(worker) == len(decisions)

    written = world.rows("SELECT sku, decision_id FROM strangler_origin ORDER BY origin_id")
    for sku in SKUS:
        queued = [i for d, i in zip(decisions, decision_ids(decisions), strict=True)
                  if json.loads(d[0].body)["decision"]["sku"] == sku]  # fmt: skip
        assert [i for s, i in written if s == sku] == queued
    assert len(written) == len(decisions) and world.dead_letters() == []
    assert world.depth() == 0
    assert len(writer.threads) > 1  # side by side, not one after the other
    assert worker.decisions_written == len(decisions)


def test_one_lane_writes_strictly_in_queue_order(world: World) -> None:
    worker = world.backsync(lanes=1)
    decisions = by_product(2)
    world.publish([m for d in decisions for m in d])

    assert drain(worker) == len(decisions)

    written = world.rows("SELECT decision_id FROM strangler_origin ORDER BY origin_id")
    assert [i for (i,) in written] == decision_ids(decisions)


def test_a_lane_that_fails_keeps_its_decision_in_hand_and_nothing_is_written_twice(
    world: World,
) -> None:
    writer = world.writer = RecordingWriter(world.engine, LEGACY_SHOP, QUEUE)
    writer.failing_sku, writer.failures = "SOFA", 1
    worker = world.backsync(lanes=4)
    decisions = by_product(3)
    world.publish([m for d in decisions for m in d])

    with pytest.raises(LegacyUnavailable):
        worker.run_once()
    # SOFA's batch failed: nothing of SOFA written; the other lanes went on
    skus = [s for (s,) in world.rows("SELECT sku FROM strangler_origin")]
    assert "SOFA" not in skus and len(skus) == 3 * 4

    assert drain(worker) == len(decisions) - 1  # LAMP's batch, before SOFA's, was settled

    ids = [i for (i,) in world.rows("SELECT decision_id FROM strangler_origin")]
    assert sorted(ids) == sorted(decision_ids(decisions))  # each once
    assert world.dead_letters() == [] and world.depth() == 0
    # all but LAMP's batch (settled) and SOFA's four: written before, acknowledged now
    assert worker.skipped == len(decisions) - 1 - 4


def test_a_refused_decision_in_a_lane_is_dead_lettered_and_its_product_goes_on(
    world: World,
) -> None:
    worker = world.backsync(lanes=4)
    refused = allocate("o-x", "no-such-batch", "SOFA")
    decisions = [*by_product(1), refused, allocate("o-y", "b-SOFA", "SOFA"), add_batch("b9")]
    world.publish([m for d in decisions for m in d])

    assert drain(worker) == len(decisions)

    [dead] = world.dead_letters()
    assert dead.message_id == refused[0].message_id and dead.headers["x-error-type"] == "Refused"
    assert world.rows("SELECT order_no FROM cust_order_line ORDER BY order_no") == [
        ("o-y",), ("o0-DESK",), ("o0-LAMP",), ("o0-RUG",), ("o0-SOFA",)
    ]  # fmt: skip
    assert world.depth() == 0


# -- dead letters sent back ------------------------------------------------------------


def test_a_dead_lettered_decision_is_written_once_its_cause_is_fixed_and_it_is_replayed(
    world: World,
) -> None:
    worker = world.backsync()
    refused = allocate("o1", "b1")  # b1 is not in legacy yet
    world.publish([*add_batch("b2"), *refused])
    drain(worker)
    [dead] = world.dead_letters_kept()
    letter = describe(dead)
    assert (letter.decision_id, letter.route, letter.error_type) == (
        json.loads(refused[0].body)["decision"]["id"],
        "POST /allocate",
        "Refused",
    )
    assert "unknown batch b1" in letter.line()

    world.publish(add_batch("b1"))  # the cause fixed (here: the batch written first)
    drain(worker)
    connection = broker.connect(world.broker_url)
    report = replay(connection, QUEUE, [letter.decision_id or ""])
    connection.close()
    assert report.replayed == [refused[0].message_id] and report.not_found == []

    assert drain(worker) == 1
    assert world.rows("SELECT order_no FROM cust_order_line") == [("o1",)]
    assert world.depth(dead_letter_queue(QUEUE)) == 0 and world.depth() == 0


def test_replaying_a_decision_written_meanwhile_writes_nothing_and_one_failing_again_returns(
    world: World,
) -> None:
    worker = world.backsync()
    fails = allocate("o1", "nope")
    world.publish([*add_batch("b1"), *fails])
    drain(worker)
    connection = broker.connect(world.broker_url)
    first = replay(connection, QUEUE, ["not-an-id"])
    assert first.replayed == [] and first.not_found == ["not-an-id"]
    again = replay(connection, QUEUE, [fails[0].message_id])
    connection.close()
    assert again.replayed == [fails[0].message_id]

    drain(worker)

    [dead] = world.dead_letters_kept()
    assert describe(dead).replays == 1 and describe(dead).error_type == "Refused"
    assert world.rows("SELECT order_no FROM cust_order_line") == []
