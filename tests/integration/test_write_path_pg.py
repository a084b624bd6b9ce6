"""The new write path on PostgreSQL: concurrent decisions about one product never
over-allocate, and decisions and ownership moves wait for each other on the ownership
row (a decision holds it FOR SHARE, a move FOR UPDATE), so every decision committed
before a move is in the outbox before its OwnershipMoved."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from datetime import date
from typing import Any

import pytest
import sqlalchemy
from sqlalchemy import exc as sa_exc
from sqlalchemy import func, select, text
from sqlalchemy.engine import Engine

from new_domain import (
    DuplicateBatch,
    NotOwned,
    OutOfStock,
    Owner,
    Ownership,
    WritePath,
    move_ownership,
    upgrade_database,
)
from new_domain.adapters import orm
from new_domain.adapters.database import create_engine, ping_when_idle
from new_domain.adapters.ownership import Lock, settle_ownership
from new_domain.adapters.ownership_records import SqlAlchemyWriteOwnership
from new_domain.service_layer.unit_of_work import SqlAlchemyUnitOfWork
from tests.e2e.processes import wait_for

pytestmark = pytest.mark.postgres

GROUP = "allocation"
THREADS = 16


@pytest.fixture
def engine(pg_url: str) -> Iterator[Engine]:
    upgrade_database(pg_url)
    engine = create_engine(pg_url, for_writes=True)
    with engine.begin() as connection:
        epoch = move_ownership(connection, GROUP, "new", "ops").epoch
        settle_ownership(connection, GROUP, epoch)
    yield engine
    engine.dispose()


@pytest.fixture
def write_path(pg_url: str, engine: Engine) -> Iterator[WritePath]:
    with WritePath(pg_url) as write_path:  # its own engine, shared by every thread
        yield write_path


def in_threads(count: int, work: Callable[[int], Any]) -> list[Any]:
    """Run ``work(i)`` in ``count`` threads started together; each one's result or error."""
    start = threading.Barrier(count)
    outcomes: list[Any] = [None] * count

    def run(i: int) -> None:
        start.wait()
        try:
            outcomes[i] = work(i)
        except BaseException as error:  # noqa: BLE001 - returned to the test
            outcomes[i] = error

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not any(thread.is_alive() for thread in threads)
    return outcomes


def test_sixteen_threads_allocating_one_product_never_over_allocate(
    write_path: WritePath, engine: Engine
) -> None:
    write_path.add_batch("warehouse", "LAMP", 20, None)
    write_path.add_batch("shipment", "LAMP", 20, date(2027, 1, 1))

    def allocate_three(i: int) -> list[Any]:
        outcomes: list[Any] = []
        for n in range(3):
            try:
                outcomes.append(write_path.allocate(f"o{i}-{n}", "LAMP", 1))
            except OutOfStock as refused:
                outcomes.append(refused)
        return outcomes

    outcomes = in_threads(THREADS, allocate_three)
    assert all(isinstance(outcome, list) for outcome in outcomes), outcomes  # nothing else failed
    results = [r for outcome in outcomes for r in outcome]
    chosen = [r for r in results if isinstance(r, str)]
    assert (chosen.count("warehouse"), chosen.count("shipment")) == (20, 20)
    assert sum(isinstance(r, OutOfStock) for r in results) == THREADS * 3 - 40

    b, a = orm.batches, orm.batch_allocations
    with engine.connect() as connection:
        stored = connection.execute(
            select(b.c.reference, b.c.purchased_quantity, b.c.allocated_quantity)
        ).all()
        lines = dict(
            connection.execute(select(a.c.batchref, func.sum(a.c.qty)).group_by(a.c.batchref)).all()
        )
        bodies = [json.loads(body) for body in connection.scalars(select(orm.outbox.c.body))]
    assert sorted(stored) == [("shipment", 20, 20), ("warehouse", 20, 20)]
    assert lines == {"shipment": 20, "warehouse": 20}
    allocated = [body for body in bodies if body["type"] == "Allocated"]
    assert len(allocated) == 40
    assert len({body["decision"]["id"] for body in allocated}) == 40


def test_sixteen_threads_creating_a_new_products_batches_each_get_legacys_answer(
    write_path: WritePath, engine: Engine
) -> None:
    def add(i: int) -> str:
        try:
            write_path.add_batch(f"b{i % 8}", "CHAIR", 1 + i, None)
        except DuplicateBatch as refused:
            return str(refused)
        return "created"

    outcomes = in_threads(THREADS, add)  # the product row is new: all but one insert it again
    assert sorted(map(str, outcomes)) == sorted(
        ["created"] * 8 + [f"batch b{i} already exists" for i in range(8)]
    ), outcomes
    with engine.connect() as connection:
        refs = list(connection.scalars(select(orm.batches.c.reference)))
        version = connection.scalar(select(orm.products.c.version_number))
    assert sorted(refs) == [f"b{i}" for i in range(8)]
    assert version == 8


class PausingOwnership(SqlAlchemyWriteOwnership):
    """Reads the real row, then (for a decision's share lock) says so and waits."""

    def __init__(
        self, real: SqlAlchemyWriteOwnership, locked: threading.Event, go: threading.Event
    ):
        super().__init__(real.connection)
        self.locked, self.go = locked, go

    def read(self, group: str, *, lock: Lock = None) -> Ownership:
        ownership = super().read(group, lock=lock)
        self._pause(lock)
        return ownership

    def read_ahead(self, group: str, *, lock: Lock = None) -> Callable[[], Ownership]:
        read = super().read_ahead(group, lock=lock)

        def then() -> Ownership:  # the reads ran: the lock is held
            ownership = read()
            self._pause(lock)
            return ownership

        return then

    def _pause(self, lock: Lock) -> None:
        if lock == "share":
            self.locked.set()
            assert self.go.wait(60)


def waiting_for_a_lock(engine: Engine, at_least: int = 1) -> bool:
    with engine.connect() as connection:
        waiting = connection.scalar(
            text(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
        )
    return int(waiting or 0) >= at_least


def test_a_move_waits_for_the_decision_in_flight_which_comes_first_in_the_outbox(
    engine: Engine,
) -> None:
    locked, go = threading.Event(), threading.Event()

    def unit_of_work() -> SqlAlchemyUnitOfWork:
        class Pausing(SqlAlchemyUnitOfWork):
            def _begin(self) -> None:
                super()._begin()
                self.ownership = PausingOwnership(self.ownership, locked, go)  # type: ignore[assignment]

        return Pausing(engine, owns_engine=False)

    WritePath(engine).add_batch("b1", "LAMP", 10, None)
    pausing = WritePath.on(unit_of_work)
    allocated: list[str] = []
    decision = threading.Thread(target=lambda: allocated.append(pausing.allocate("o1", "LAMP", 2)))
    decision.start()
    assert locked.wait(30)

    def hand_back() -> None:
        with engine.begin() as connection:
            move_ownership(connection, GROUP, "legacy", "ops")

    move = threading.Thread(target=hand_back)
    move.start()
    wait_for(lambda: waiting_for_a_lock(engine), 30, "the move to wait for the decision")
    assert move.is_alive()
    go.set()
    decision.join(30)
    move.join(30)
    assert not decision.is_alive() and not move.is_alive()
    assert allocated == ["b1"]

    with engine.connect() as connection:
        types = list(connection.scalars(select(orm.outbox.c.event_type).order_by(orm.outbox.c.id)))
    assert types == ["OwnershipMoved", "BatchCreated", "Allocated", "OwnershipMoved"]


def test_a_decision_waits_for_the_move_in_flight_and_then_obeys_it(
    write_path: WritePath, engine: Engine
) -> None:
    write_path.add_batch("b1", "LAMP", 10, None)
    outcome: list[BaseException | str] = []
    with engine.begin() as mover:
        move_ownership(mover, GROUP, "legacy", "ops")  # holds the row FOR UPDATE

        def allocate() -> None:
            try:
                outcome.append(write_path.allocate("o1", "LAMP", 2))
            except NotOwned as refused:
                outcome.append(refused)

        decision = threading.Thread(target=allocate)
        decision.start()
        wait_for(lambda: waiting_for_a_lock(engine), 30, "the decision to wait for the move")
        assert outcome == []
    decision.join(30)
    [refused] = outcome
    assert isinstance(refused, NotOwned) and refused.owner is Owner.CHANGING
    with engine.connect() as connection:
        assert connection.scalar(select(func.count()).select_from(orm.batch_allocations)) == 0


def test_a_move_waits_while_a_write_is_given_to_legacy_under_the_held_ownership(
    write_path: WritePath, engine: Engine
) -> None:
    """What the facade does with a write legacy owns: the move (a takeover's first step)
    commits only after the block that proxied the write has ended."""
    with engine.begin() as connection:
        move_ownership(connection, GROUP, "legacy", "ops")
        settle_ownership(connection, GROUP, 2)
    moved = threading.Event()

    def take_over() -> None:
        with engine.begin() as connection:
            move_ownership(connection, GROUP, "new", "ops")
        moved.set()

    with write_path.held() as ownership:
        assert ownership.owner("LAMP") is Owner.LEGACY
        mover = threading.Thread(target=take_over)
        mover.start()
        wait_for(lambda: waiting_for_a_lock(engine), 30, "the move to wait for the write")
        assert not moved.is_set()  # legacy is still deciding the write: no move yet
    mover.join(30)
    assert moved.is_set()
    with write_path.held() as ownership:
        assert ownership.owner("LAMP") is Owner.CHANGING


def test_a_decision_arriving_while_a_move_waits_queues_behind_the_move(
    write_path: WritePath, engine: Engine
) -> None:
    """A row's share lock is granted past a waiting FOR UPDATE, so a steady stream of
    overlapping decisions starved a move until its statement timeout (a chaos run's
    hand-back failed so). The group's gate queues them fairly: the later decision waits
    for the move, which waits only for the decision already in flight."""
    entered: list[str] = []
    release_first = threading.Event()

    def first() -> None:
        with write_path.held():
            entered.append("first")
            assert release_first.wait(60)

    def move() -> None:
        with engine.begin() as connection:
            move_ownership(connection, GROUP, "legacy", "ops")
        entered.append("move")

    def later() -> None:
        with write_path.held(wait=30) as ownership:
            entered.append(f"later saw {ownership.owner('LAMP').value}")

    threads = [threading.Thread(target=first)]
    threads[0].start()
    wait_for(lambda: entered == ["first"], 30, "the first decision to hold the ownership")
    threads.append(threading.Thread(target=move))
    threads[1].start()
    wait_for(lambda: waiting_for_a_lock(engine), 30, "the move to wait for the decision")
    threads.append(threading.Thread(target=later))
    threads[2].start()
    wait_for(
        lambda: len(entered) > 1 or waiting_for_a_lock(engine, 2),
        30,
        "the later decision to wait (or get in)",
    )
    assert entered == ["first"]  # neither the move nor the later decision got in
    release_first.set()
    for thread in threads:
        thread.join(30)
    assert not any(thread.is_alive() for thread in threads)
    assert entered == ["first", "move", f"later saw {Owner.CHANGING.value}"]


def test_the_held_ownership_gives_up_after_its_wait_while_a_move_holds_the_row(
    write_path: WritePath, engine: Engine
) -> None:
    with engine.begin() as mover:
        move_ownership(mover, GROUP, "legacy", "ops")  # holds the row FOR UPDATE
        # the driver's own error: a bounded wait, not a hang
        with pytest.raises(Exception, match="timeout"), write_path.held(wait=0.2):  # noqa: PT011
            pass


def terminate_other_backends(engine: Engine) -> int:
    """Close, server side, every other connection to the test's database (a restart
    or an idle timeout, as the pooled connections see it)."""
    with engine.connect() as connection:
        closed = connection.scalar(
            text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        )
    return int(closed or 0)


def test_a_decision_on_a_pooled_connection_the_server_closed_is_decided_once_on_a_fresh_one(
    write_path: WritePath, engine: Engine
) -> None:
    """Connections used within the last second are not pinged (a round trip per
    decision saved): one the server closed meanwhile fails the decision's first round
    trip, before anything is written, and the decision is made again on a new one."""
    write_path.add_batch("b1", "LAMP", 10, None)  # the write path's pool holds a connection
    assert terminate_other_backends(engine) >= 1
    assert write_path.allocate("o1", "LAMP", 2) == "b1"
    with write_path.held() as ownership:  # the held ownership finds a dead connection too
        assert ownership.owner("LAMP") is Owner.NEW
    assert terminate_other_backends(engine) >= 1
    with write_path.held() as ownership:
        assert ownership.owner("LAMP") is Owner.NEW
    with engine.connect() as connection:
        lines = connection.execute(
            select(orm.batch_allocations.c.orderid, orm.batch_allocations.c.qty)
        ).all()
    assert lines == [("o1", 2)]


@pytest.mark.parametrize(("idle", "replaced"), [(0.0, True), (3600.0, False)])
def test_only_a_connection_idle_long_enough_is_pinged_before_use(
    pg_url: str, engine: Engine, idle: float, replaced: bool
) -> None:
    pooled = ping_when_idle(sqlalchemy.create_engine(pg_url), idle=idle)
    try:
        with pooled.connect() as connection:
            connection.scalar(text("SELECT 1"))
        terminate_other_backends(engine)
        with pooled.connect() as connection:
            if replaced:  # pinged, found dead, replaced: the statement runs
                assert connection.scalar(text("SELECT 1")) == 1
            else:  # not pinged: the statement meets the closed connection
                with pytest.raises(sa_exc.DBAPIError) as failed:
                    connection.scalar(text("SELECT 1"))
                assert failed.value.connection_invalidated
    finally:
        pooled.dispose()
