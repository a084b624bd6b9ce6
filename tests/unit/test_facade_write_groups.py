"""Write groups in the route table (SQLite): the group moves as one, with its ownership,
the gate judges it on decision parity and ownership problems, and no route moves alone."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, func, insert, select, text, update

from new_domain.adapters import orm
from skeleton_app import (
    CutoverGate,
    CutoverRefused,
    Mode,
    RouteError,
    RouteTable,
    Window,
)
from skeleton_app.new_routes import WRITE_GROUPS, WriteGroup
from skeleton_app.schema import facade_route, facade_route_audit
from tests.unit.test_facade_fakes import create_new_database

AT = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
ALLOCATION = [
    ("POST", "/allocate"),
    ("POST", "/batches"),
    ("PATCH", "/batches/<ref>"),
    ("POST", "/deallocate"),
]
"""The group's routes, in the order the route table lists them (pattern, then method)."""
GATE = CutoverGate(min_parity=99.0, min_samples=100, window=Window(3600, 1000))


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = create_engine(f"sqlite:///{tmp_path / 'new.db'}")
    create_new_database(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def table(engine: Engine, clock: Clock) -> RouteTable:
    return RouteTable(engine, clock=clock, now=lambda: AT)


@pytest.fixture
def gated(engine: Engine, clock: Clock) -> RouteTable:
    return RouteTable(engine, clock=clock, now=lambda: AT, gate=GATE)


def _keys(routes: object) -> list[tuple[str, str]]:
    return [(r.method, r.pattern) for r in routes]  # type: ignore[attr-defined]


def _outbox(engine: Engine) -> list[dict[str, object]]:
    with engine.connect() as conn:
        rows = conn.execute(select(orm.outbox).order_by(orm.outbox.c.id)).mappings().all()
    return [{"routing_key": r["routing_key"], **json.loads(r["body"])} for r in rows]


def _decisions(engine: Engine, **counts: tuple[int, int]) -> None:
    """Decision parity as the consumer would have counted it: route -> (agree, differ)."""
    names = {
        "batches": "POST /batches",
        "patch": "PATCH /batches/<ref>",
        "allocate": "POST /allocate",
        "deallocate": "POST /deallocate",
        "reads": "GET /allocations/<orderid>",
    }
    with engine.begin() as conn:
        for key, (agree, differ) in counts.items():
            conn.execute(
                insert(orm.decision_parity).values(route=names[key], agree=agree, differ=differ)
            )


# -- the group moves as one ------------------------------------------------------------


def test_the_shop_declares_one_write_group_of_its_four_write_routes() -> None:
    assert list(WRITE_GROUPS) == ["allocation"]
    assert sorted(WRITE_GROUPS["allocation"].routes) == sorted(ALLOCATION)


def test_write_routes_are_listed_with_their_group_before_anyone_set_them(
    table: RouteTable,
) -> None:
    listed = {(r.method, r.pattern): (r.mode, r.group) for r in table.list()}

    assert listed == {
        ("GET", "/allocations/<orderid>"): (Mode.LEGACY, None),
        **{key: (Mode.LEGACY, "allocation") for key in ALLOCATION},
    }
    ownership = table.ownership("allocation")
    assert (str(ownership.rule), ownership.epoch, ownership.state) == ("legacy", 0, "active")


def test_setting_one_write_route_moves_the_whole_group_with_its_ownership(
    table: RouteTable, engine: Engine
) -> None:
    change = table.change("POST", "/allocate", "canary 30", by="alice", reason="first 30%")

    assert change.group == "allocation"
    assert _keys(change.routes) == ALLOCATION
    assert {(r.mode, r.percent, r.group) for r in change.routes} == {
        (Mode.CANARY, 30.0, "allocation")
    }
    assert {(r.method, r.pattern): r.setting for r in table.list() if r.group} == {
        key: "canary 30" for key in ALLOCATION
    }
    audit = table.history()
    assert [(e.method, e.pattern) for e in audit] == ALLOCATION
    assert {(e.from_mode, e.to_mode, e.by, e.reason, e.at) for e in audit} == {
        (None, "canary 30", "alice", "first 30%", AT)
    }
    ownership = table.ownership("allocation")
    assert change.ownership == ownership
    assert (str(ownership.rule), str(ownership.previous_rule)) == ("canary 30", "legacy")
    assert (ownership.epoch, ownership.state, ownership.changed_by) == (1, "moving", "alice")
    [moved] = _outbox(engine)
    assert moved["routing_key"] == "ownership.moved"
    assert moved["type"] == "OwnershipMoved"
    assert moved["data"] == {
        "group": "allocation",
        "epoch": 1,
        "rule": "canary 30",
        "previous_rule": "legacy",
    }


def test_set_answers_the_route_asked_for_and_moves_the_others_with_it(
    table: RouteTable,
) -> None:
    route = table.set("patch", "/batches/<ref>", "shadow", by="ops")

    assert (route.method, route.pattern, route.mode, route.group) == (
        "PATCH",
        "/batches/<ref>",
        Mode.SHADOW,
        "allocation",
    )
    assert {r.mode for r in table.list() if r.group} == {Mode.SHADOW}


def test_legacy_to_shadow_changes_no_owner_so_needs_no_fence(
    table: RouteTable, engine: Engine
) -> None:
    table.set("POST", "/batches", "shadow", by="ops")

    ownership = table.ownership("allocation")
    assert (str(ownership.rule), ownership.epoch, ownership.state) == ("shadow", 1, "active")
    assert _outbox(engine) == []


def test_a_group_can_be_moved_by_name(table: RouteTable) -> None:
    change = table.move_group("allocation", "new", by="ops")

    assert _keys(change.routes) == ALLOCATION
    assert str(table.ownership("allocation").rule) == "new"
    with pytest.raises(RouteError, match="no write group 'orders'"):
        table.move_group("orders", "new", by="ops")


def test_every_route_row_audit_entry_and_the_ownership_are_one_transaction(
    table: RouteTable, engine: Engine
) -> None:
    # a stored row the move cannot update (a trigger refuses it) fails the whole move
    with engine.begin() as conn:
        conn.execute(
            insert(facade_route).values(
                method="POST",
                pattern="/deallocate",
                mode="legacy",
                updated_at=AT,
                updated_by="ops",
                reason="",
                options="{}",
            )
        )
        conn.execute(
            text(
                "CREATE TRIGGER refuse BEFORE INSERT ON outbox "
                "BEGIN SELECT RAISE(ABORT, 'outbox refused'); END"
            )
        )

    with pytest.raises(Exception, match="outbox refused"):
        table.set("POST", "/allocate", "canary 10", by="ops")

    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(facade_route_audit)) == 0
        assert conn.execute(select(facade_route.c.method, facade_route.c.mode)).all() == [
            ("POST", "legacy")
        ]
        assert conn.scalar(select(func.count()).select_from(orm.write_ownership)) == 0
    assert str(table.ownership("allocation").rule) == "legacy"


# -- refusals ---------------------------------------------------------------------------


def test_aa_is_refused_for_a_write_route_and_nothing_is_written(
    table: RouteTable, engine: Engine
) -> None:
    with pytest.raises(RouteError) as refused:
        table.set("POST", "/deallocate", "aa", by="ops")

    assert str(refused.value) == (
        "write group allocation (POST /batches, PATCH /batches/<ref>, POST /allocate, "
        "POST /deallocate) cannot be in aa: legacy would apply every write twice"
    )
    assert table.history() == []
    assert table.ownership("allocation").epoch == 0


def test_route_options_are_refused_for_a_write_route(table: RouteTable) -> None:
    with pytest.raises(RouteError, match="route options do not apply"):
        table.set("POST", "/allocate", "shadow", by="ops", options={"sample_rate": 0.5})

    assert table.history() == []


def test_one_write_route_cannot_be_moved_alone_by_deleting_it(table: RouteTable) -> None:
    table.set("POST", "/allocate", "canary 20", by="ops")

    with pytest.raises(RouteError) as refused:
        table.delete("POST", "/allocate", by="ops", reason="serve it from legacy alone")

    assert str(refused.value) == (
        "POST /allocate belongs to write group allocation and moves only with it: set the "
        "group to legacy instead of deleting one of its routes"
    )
    assert {r.setting for r in table.list() if r.group} == {"canary 20"}


def test_a_route_set_apart_from_its_group_by_hand_never_serves_apart(
    table: RouteTable, engine: Engine, clock: Clock
) -> None:
    """Rows written around the route table (hand-run SQL) cannot split the group: a write
    is served by the group's ownership, and the next move sets every route again."""
    table.set("POST", "/allocate", "new", by="ops")
    with engine.begin() as conn:
        conn.execute(
            update(facade_route).where(facade_route.c.pattern == "/batches").values(mode="legacy")
        )
    clock.now += 10

    found = table.match("POST", "/batches")
    assert found is not None and found.ownership is not None
    assert (found.mode, str(found.ownership.rule)) == (Mode.LEGACY, "new")

    table.set("POST", "/allocate", "new", by="ops", reason="again")
    assert {r.setting for r in table.list() if r.group} == {"new"}


# -- rollback ---------------------------------------------------------------------------


def _fence_came_back(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(update(orm.write_ownership).values(state="active", previous_rule=None))


def test_rolling_back_one_write_route_takes_the_whole_group_back(
    table: RouteTable, engine: Engine
) -> None:
    table.set("GET", "/allocations/<orderid>", "shadow", by="ops")
    table.set("POST", "/allocate", "canary 50", by="ops")
    _fence_came_back(engine)

    changed = table.rollback(by="oncall", reason="incident", routes=[("post", "/batches")])

    assert _keys(changed) == ALLOCATION
    assert {r.setting for r in table.list() if r.group} == {"legacy"}
    ownership = table.ownership("allocation")
    assert (str(ownership.rule), str(ownership.previous_rule)) == ("legacy", "canary 50")
    assert ownership.state == "moving"  # the hand-back waits for its fence
    assert table.get("GET", "/allocations/<orderid>").mode is Mode.SHADOW


def test_rolling_back_everything_moves_each_group_once(table: RouteTable) -> None:
    table.set("GET", "/allocations/<orderid>", "new", by="ops")
    table.set("POST", "/allocate", "new", by="ops")

    changed = table.rollback(by="oncall", reason="incident")

    assert sorted(_keys(changed)) == sorted([*ALLOCATION, ("GET", "/allocations/<orderid>")])
    assert [e.to_mode for e in table.history()[-5:]] == ["legacy"] * 5
    assert str(table.ownership("allocation").rule) == "legacy"


def test_a_group_settled_on_legacy_is_not_rolled_back_again(
    table: RouteTable, engine: Engine
) -> None:
    table.set("POST", "/allocate", "canary 10", by="ops")
    _fence_came_back(engine)
    table.rollback(by="oncall")
    assert table.ownership("allocation").state == "moving"
    # still moving: rolling back again is harmless (it leaves the group on legacy)
    assert _keys(table.rollback(by="oncall")) == ALLOCATION
    _fence_came_back(engine)

    assert table.rollback(by="oncall") == []


# -- the gate: decision parity and ownership problems -----------------------------------


def test_the_gate_judges_the_group_on_its_routes_decision_parity_summed(
    gated: RouteTable, engine: Engine
) -> None:
    # 30 + 30 + 30 + 10 = 100 samples, 1 differs: 99% passes 99% over 100
    _decisions(
        engine,
        batches=(30, 0),
        patch=(29, 1),
        allocate=(30, 0),
        deallocate=(10, 0),
        reads=(0, 500),  # another route's decisions do not count
    )

    change = gated.change("POST", "/allocate", "canary 10", by="ops")

    gate = (
        "decision parity of write group allocation 99.00% over 100 samples; "
        "needs >= 99% over >= 100 samples"
    )
    assert (change.gate, change.forced) == (gate, False)
    assert {(e.gate, e.forced) for e in gated.history()} == {(gate, False)}


@pytest.mark.parametrize(
    ("counts", "evidence"),
    [
        ({}, "no decisions of write group allocation judged"),
        (
            {"allocate": (50, 0), "batches": (49, 0)},
            "decision parity of write group allocation 100.00% over 99 samples",
        ),
        (
            {"allocate": (98, 2)},
            "decision parity of write group allocation 98.00% over 100 samples",
        ),
    ],
)
def test_the_gate_refuses_too_few_or_too_different_decisions(
    gated: RouteTable, engine: Engine, counts: dict[str, tuple[int, int]], evidence: str
) -> None:
    _decisions(engine, **counts)

    with pytest.raises(CutoverRefused) as refused:
        gated.set("POST", "/deallocate", "new", by="ops")

    assert str(refused.value) == (
        f"refusing to move write group allocation to new: {evidence}; needs >= 99% over "
        ">= 100 samples (keep it in shadow longer, or use --force)"
    )
    assert gated.history() == []
    assert gated.ownership("allocation").epoch == 0
    assert _outbox(engine) == []


@pytest.mark.parametrize("mode", ["legacy", "shadow", "canary 0"])
def test_moves_that_give_new_nothing_are_not_judged(gated: RouteTable, mode: str) -> None:
    change = gated.change("POST", "/allocate", mode, by="ops")

    assert (change.gate, change.forced) == (None, False)


def test_growing_a_canary_is_not_judged_again_but_going_to_new_is(
    gated: RouteTable, engine: Engine
) -> None:
    _decisions(engine, allocate=(100, 0))
    gated.set("POST", "/allocate", "canary 10", by="ops")
    with engine.begin() as conn:  # later decisions differ
        conn.execute(update(orm.decision_parity).values(agree=100, differ=50))

    grown = gated.change("POST", "/allocate", "canary 60", by="ops")
    assert grown.gate is None

    with pytest.raises(CutoverRefused, match="66.66% over 150 samples"):
        gated.set("POST", "/allocate", "new", by="ops")


def test_unresolved_ownership_violations_or_echo_anomalies_refuse_the_move(
    gated: RouteTable, engine: Engine
) -> None:
    _decisions(engine, allocate=(1000, 0))
    with engine.begin() as conn:
        for resolved in (None, None, AT):
            conn.execute(
                insert(orm.ownership_violation).values(
                    recorded_at=AT,
                    group_name="allocation",
                    sku="LAMP",
                    detail="legacy wrote on its own",
                    resolved_at=resolved,
                )
            )
        conn.execute(
            insert(orm.echo_anomaly).values(
                recorded_at=AT, expected="allocated to b1", found="allocated to b2"
            )
        )

    with pytest.raises(CutoverRefused) as refused:
        gated.set("POST", "/allocate", "canary 5", by="ops")

    assert str(refused.value) == (
        "refusing to move write group allocation to canary 5: decision parity of write group "
        "allocation 100.00% over 1000 samples; needs >= 99% over >= 100 samples; "
        "2 unresolved ownership violations, 1 unresolved echo anomaly (resolve them: "
        "strangler status, strangler verify; or use --force)"
    )
    with engine.begin() as conn:
        conn.execute(update(orm.ownership_violation).values(resolved_at=AT))
        conn.execute(update(orm.echo_anomaly).values(resolved_at=AT))

    assert gated.change("POST", "/allocate", "canary 5", by="ops").forced is False


def test_force_needs_a_reason_and_the_audit_says_it_was_forced(
    gated: RouteTable, engine: Engine
) -> None:
    _decisions(engine, allocate=(10, 5))

    with pytest.raises(RouteError, match="a forced move needs a reason"):
        gated.set("POST", "/allocate", "new", by="ops", force=True)
    change = gated.change("POST", "/allocate", "new", by="ops", reason="legacy is down", force=True)

    assert change.forced is True
    assert change.gate == (
        "forced past the gate: decision parity of write group allocation 66.66% over 15 "
        "samples; needs >= 99% over >= 100 samples"
    )
    assert {(e.forced, e.gate, e.reason) for e in gated.history()} == {
        (True, change.gate, "legacy is down")
    }


def test_thresholds_below_the_floor_count_as_forcing(engine: Engine, clock: Clock) -> None:
    table = RouteTable(
        engine, clock=clock, now=lambda: AT, gate=CutoverGate(90.0, 5, Window(3600, 1000))
    )
    _decisions(engine, allocate=(200, 0))

    with pytest.raises(CutoverRefused, match="below the floor"):
        table.set("POST", "/allocate", "new", by="ops")
    change = table.change("POST", "/allocate", "new", by="ops", reason="lab", force=True)

    assert change.forced is True
    assert change.gate is not None and "below the floor (95% over 10 samples)" in change.gate


# -- the snapshot -----------------------------------------------------------------------


def test_a_matched_write_route_carries_its_group_and_ownership(
    table: RouteTable, clock: Clock
) -> None:
    found = table.match("PATCH", "/batches/b-1")
    assert found is not None and found.ownership is not None
    assert (found.group, found.args, str(found.ownership.rule)) == (
        "allocation",
        {"ref": "b-1"},
        "legacy",
    )

    table.set("POST", "/allocate", "canary 25", by="ops")

    found = table.match("POST", "/allocate")
    assert found is not None and found.ownership is not None
    assert (str(found.ownership.rule), found.ownership.epoch) == ("canary 25", 1)
    read = table.match("GET", "/allocations/o-1")
    assert read is not None and (read.group, read.ownership) == (None, None)


def test_ownership_another_process_moved_is_seen_after_the_refresh_interval(
    engine: Engine, clock: Clock
) -> None:
    worker = RouteTable(engine, clock=clock, refresh_interval=1.0)
    assert worker.group_ownership("allocation") is not None
    RouteTable(engine).set("POST", "/allocate", "new", by="elsewhere")

    cached = worker.group_ownership("allocation")
    assert cached is not None and str(cached.rule) == "legacy"
    clock.now += 1.5
    fresh = worker.group_ownership("allocation")
    assert fresh is not None and str(fresh.rule) == "new"


def test_unreadable_ownership_keeps_the_last_one_and_a_worker_that_never_read_it_has_none(
    tmp_path: Path, clock: Clock
) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'new.db'}")
    create_new_database(engine)
    worker = RouteTable(engine, clock=clock, refresh_interval=1.0)
    RouteTable(engine).set("POST", "/allocate", "canary 5", by="ops")
    assert str(worker.group_ownership("allocation").rule) == "canary 5"  # type: ignore[union-attr]
    orm.write_ownership.drop(engine)
    clock.now += 1.5

    kept = worker.group_ownership("allocation")
    assert kept is not None and str(kept.rule) == "canary 5"
    fresh = RouteTable(engine, clock=clock)
    assert fresh.group_ownership("allocation") is None
    engine.dispose()


def test_another_legacy_system_declares_its_own_groups(engine: Engine) -> None:
    orders = WriteGroup("orders", (("POST", "/orders"), ("DELETE", "/orders/<id>")))
    table = RouteTable(engine, groups={"orders": orders})

    change = table.change("DELETE", "/orders/<id>", "shadow", by="ops")

    assert _keys(change.routes) == [("POST", "/orders"), ("DELETE", "/orders/<id>")]
    assert str(table.ownership("orders").rule) == "shadow"
    assert table.group_of("POST", "/allocate") is None
    with pytest.raises(RouteError, match="cannot be served by the new system"):
        table.set("POST", "/allocate", "shadow", by="ops")
