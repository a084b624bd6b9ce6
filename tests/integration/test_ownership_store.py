"""Moving and settling write ownership in the new database (``write_ownership``), on
SQLite and PostgreSQL: every move bumps the epoch; a move that hands products over is
``moving`` and queues ``OwnershipMoved`` in the same transaction; only the current
epoch's fence settles it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from new_domain import Ownership, OwnershipRule, move_ownership, read_ownership, upgrade_database
from new_domain.adapters import orm
from new_domain.adapters.database import create_engine
from new_domain.adapters.ownership import settle_ownership
from new_domain.domain.ownership import State
from tests.integration.consumer_streams import migrated_sqlite_url

GROUP = "allocation"
SCHEMA = Path(__file__).resolve().parents[2] / "docs/schemas/new-domain-ownership-moved.schema.json"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "sqlite":
        url = migrated_sqlite_url(tmp_path)
    else:
        url = request.getfixturevalue("pg_url")
        upgrade_database(url)
    engine = create_engine(url, for_writes=True)
    yield engine
    engine.dispose()


def move(engine: Engine, rule: str, by: str = "ops") -> Ownership:
    with engine.begin() as connection:
        return move_ownership(connection, GROUP, rule, by)


def settle(engine: Engine, epoch: int) -> bool:
    with engine.begin() as connection:
        return settle_ownership(connection, GROUP, epoch)


def stored(engine: Engine) -> Ownership:
    with engine.connect() as connection:
        return read_ownership(connection, GROUP)


def moved_events(engine: Engine) -> list[dict[str, Any]]:
    t = orm.outbox
    with engine.connect() as connection:
        rows = connection.execute(
            select(t.c.message_id, t.c.routing_key, t.c.event_type, t.c.body).order_by(t.c.id)
        ).all()
    assert all((r.routing_key, r.event_type) == ("ownership.moved", "OwnershipMoved") for r in rows)
    return [json.loads(r.body) | {"row_message_id": r.message_id} for r in rows]


def test_a_group_never_moved_is_legacys_at_epoch_0(engine: Engine) -> None:
    assert stored(engine) == Ownership(GROUP)
    assert moved_events(engine) == []


def test_a_takeover_is_moving_with_the_rule_it_replaces_and_queues_ownership_moved(
    engine: Engine,
) -> None:
    at = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
    with engine.begin() as connection:
        moved = move_ownership(connection, GROUP, OwnershipRule.parse("canary 30"), "alice", at)
    assert moved == stored(engine)
    assert (moved.rule, moved.previous_rule, moved.epoch, moved.state) == (
        OwnershipRule("canary", 30),
        OwnershipRule("legacy"),
        1,
        State.MOVING,
    )
    assert (moved.changed_by, moved.changed_at) == ("alice", at)
    [event] = moved_events(engine)
    assert event["data"] == {
        "group": GROUP,
        "epoch": 1,
        "rule": "canary 30",
        "previous_rule": "legacy",
    }
    assert event["message_id"] == event.pop("row_message_id")
    jsonschema.validate(
        event, json.loads(SCHEMA.read_text()), format_checker=jsonschema.FormatChecker()
    )


def test_a_move_that_hands_nothing_over_is_active_at_once_and_queues_nothing(
    engine: Engine,
) -> None:
    shadow = move(engine, "shadow")
    assert (shadow.epoch, shadow.state, shadow.previous_rule) == (1, State.ACTIVE, None)
    back = move(engine, "legacy")
    assert (back.epoch, back.state) == (2, State.ACTIVE)
    assert moved_events(engine) == []


def test_the_fence_of_the_current_epoch_settles_the_move_once(engine: Engine) -> None:
    moved = move(engine, "new")
    assert settle(engine, moved.epoch) is True
    settled = stored(engine)
    assert (settled.rule, settled.previous_rule, settled.epoch, settled.state) == (
        OwnershipRule("new"),
        None,
        1,
        State.ACTIVE,
    )
    assert settle(engine, moved.epoch) is False  # a redelivered fence changes nothing
    assert stored(engine) == settled


def test_a_superseded_moves_fence_changes_nothing(engine: Engine) -> None:
    first = move(engine, "canary 30")
    second = move(engine, "new")
    # still moving from the rule the products were last settled under
    assert (second.previous_rule, second.epoch, second.state) == (
        OwnershipRule("legacy"),
        2,
        State.MOVING,
    )
    assert settle(engine, first.epoch) is False
    assert stored(engine) == second
    assert settle(engine, second.epoch) is True
    assert stored(engine).state is State.ACTIVE
    assert [e["data"]["epoch"] for e in moved_events(engine)] == [1, 2]


def test_every_move_bumps_the_epoch_even_to_the_same_share(engine: Engine) -> None:
    settle(engine, move(engine, "canary 100").epoch)
    same_share = move(engine, "new")
    assert (same_share.epoch, same_share.state) == (2, State.ACTIVE)
    assert [e["data"]["rule"] for e in moved_events(engine)] == ["canary 100"]


def test_a_move_rolled_back_leaves_no_trace(engine: Engine) -> None:
    with pytest.raises(RuntimeError), engine.begin() as connection:
        move_ownership(connection, GROUP, "new", "ops")
        raise RuntimeError("the route table's move failed")
    assert stored(engine) == Ownership(GROUP)
    with engine.connect() as connection:
        assert connection.scalar(select(func.count()).select_from(orm.outbox)) == 0


def test_the_last_of_four_shards_applying_a_fence_at_once_settles_the_move(
    engine: Engine,
) -> None:
    """Four shard consumers apply one fence in concurrent transactions: whichever commits
    last must see the other three and settle the move (each waits for the group's row)."""
    import contextlib
    import threading

    from new_domain.adapters.ownership_records import SqlAlchemyWriteOwnership

    with engine.begin() as connection:
        move_ownership(connection, "allocation", OwnershipRule.parse("new"), by="test")
        epoch = read_ownership(connection, "allocation").epoch
    barrier = threading.Barrier(4)
    settled: list[bool] = []

    def apply_fence(shard: int) -> None:
        with engine.begin() as connection:
            store = SqlAlchemyWriteOwnership(connection)
            settled.append(store.settle("allocation", epoch, (f"s#{shard}/4", 4)))
            with contextlib.suppress(threading.BrokenBarrierError):
                barrier.wait(timeout=1)  # all four in flight at once, where the engine lets them

    threads = [threading.Thread(target=apply_fence, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(settled) == [False, False, False, True]
    with engine.connect() as connection:
        assert read_ownership(connection, "allocation").state is State.ACTIVE
