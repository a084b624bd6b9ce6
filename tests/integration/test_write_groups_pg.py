"""Write groups on PostgreSQL: a group moves in one transaction (every route's row and
audit entry, the group's ``write_ownership`` row and ``OwnershipMoved`` in the outbox),
and waits for the decisions in flight (which hold the ownership row ``FOR SHARE``)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, create_engine, func, select, text

from new_domain import upgrade_database
from new_domain.adapters import orm
from skeleton_app import RouteTable
from skeleton_app.routes_table import Change
from skeleton_app.schema import facade_route, facade_route_audit

pytestmark = pytest.mark.postgres

ALLOCATION = [
    ("POST", "/allocate"),
    ("POST", "/batches"),
    ("PATCH", "/batches/<ref>"),
    ("POST", "/deallocate"),
]


@pytest.fixture
def engine(pg_url: str) -> Iterator[Engine]:
    upgrade_database(pg_url)
    engine = create_engine(pg_url)
    yield engine
    engine.dispose()


@pytest.fixture
def table(engine: Engine) -> Iterator[RouteTable]:
    table = RouteTable(engine.url.render_as_string(hide_password=False))
    yield table
    table.close()


def _counts(engine: Engine) -> tuple[int, int, int, int]:
    with engine.connect() as conn:
        return tuple(  # type: ignore[return-value]
            int(conn.scalar(select(func.count()).select_from(t)) or 0)
            for t in (facade_route, facade_route_audit, orm.write_ownership, orm.outbox)
        )


def test_a_group_move_writes_routes_audit_ownership_and_its_event_together(
    table: RouteTable, engine: Engine
) -> None:
    change = table.change("POST", "/deallocate", "canary 30", by="alice", reason="first 30%")

    assert [(r.method, r.pattern) for r in change.routes] == ALLOCATION
    with engine.connect() as conn:
        routes = conn.execute(
            select(facade_route.c.method, facade_route.c.pattern, facade_route.c.mode).order_by(
                facade_route.c.pattern, facade_route.c.method
            )
        ).all()
        audit = conn.execute(
            select(facade_route_audit.c.to_mode, facade_route_audit.c.at, facade_route_audit.c.by)
        ).all()
        ownership = conn.execute(select(orm.write_ownership)).mappings().one()
        [event] = conn.execute(select(orm.outbox)).mappings().all()
    assert routes == [(m, p, "canary 30") for m, p in ALLOCATION]
    assert len(audit) == 4 and len(set(audit)) == 1  # one change, one moment
    assert audit[0].to_mode == "canary 30" and audit[0].by == "alice"
    assert dict(ownership) | {"changed_at": None} == {
        "group_name": "allocation",
        "rule": "canary 30",
        "previous_rule": "legacy",
        "epoch": 1,
        "state": "moving",
        "changed_at": None,
        "changed_by": "alice",
    }
    assert ownership["changed_at"] == audit[0].at
    assert (event["event_type"], event["routing_key"], event["published_at"]) == (
        "OwnershipMoved",
        "ownership.moved",
        None,
    )
    assert json.loads(event["body"])["data"] == {
        "group": "allocation",
        "epoch": 1,
        "rule": "canary 30",
        "previous_rule": "legacy",
    }


def test_a_move_that_fails_anywhere_leaves_nothing_behind(
    table: RouteTable, engine: Engine
) -> None:
    table.set("POST", "/allocate", "shadow", by="ops")  # rows, audit and ownership exist
    before = _counts(engine)
    with engine.begin() as conn:
        conn.execute(
            text(
                "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN RAISE EXCEPTION 'outbox refused'; END $$"
            )
        )
        conn.execute(
            text("CREATE TRIGGER refuse BEFORE INSERT ON outbox EXECUTE FUNCTION refuse()")
        )

    with pytest.raises(Exception, match="outbox refused"):
        table.set("POST", "/allocate", "canary 10", by="ops")

    assert _counts(engine) == before
    assert {r.setting for r in table.list() if r.group} == {"shadow"}
    ownership = table.ownership("allocation")
    assert (str(ownership.rule), ownership.epoch) == ("shadow", 1)


def _waiting_for_a_lock(engine: Engine) -> bool:
    with engine.connect() as conn:
        return bool(
            conn.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
            )
        )


def test_a_move_waits_for_the_decisions_in_flight(table: RouteTable, engine: Engine) -> None:
    table.set("POST", "/allocate", "shadow", by="ops")
    moved: list[Change] = []
    with engine.connect() as deciding:
        # what the write path holds while it decides
        deciding.execute(
            text("SELECT epoch FROM write_ownership WHERE group_name = 'allocation' FOR SHARE")
        )
        mover = threading.Thread(
            target=lambda: moved.append(table.change("POST", "/allocate", "new", by="ops"))
        )
        mover.start()
        deadline = time.monotonic() + 2
        while not _waiting_for_a_lock(engine):
            assert time.monotonic() < deadline, "the move did not wait for the decision"
            time.sleep(0.02)
        assert moved == [] and mover.is_alive()
        deciding.commit()
    mover.join(timeout=10)

    [change] = moved
    assert change.ownership is not None
    assert (str(change.ownership.rule), change.ownership.epoch) == ("new", 2)


def test_concurrent_moves_of_one_group_are_serialised(pg_url: str, engine: Engine) -> None:
    tables = [RouteTable(pg_url) for _ in range(4)]
    modes = ["shadow", "canary 10", "canary 20", "legacy"]
    errors: list[BaseException] = []

    def move(table: RouteTable, mode: str) -> None:
        try:
            table.set("POST", "/allocate", mode, by=f"ops-{mode}")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=move, args=pair) for pair in zip(tables, modes, strict=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    for table in tables:
        table.close()

    assert errors == []
    with engine.connect() as conn:
        epoch = conn.scalar(select(orm.write_ownership.c.epoch))
        audit = (
            conn.execute(select(facade_route_audit.c.to_mode).order_by(facade_route_audit.c.id))
            .scalars()
            .all()
        )
    assert epoch == 4
    # each move's four entries are together: moves never interleave
    assert [audit[i : i + 4] for i in range(0, 16, 4)] == [[m] * 4 for m in _order(audit)]


def _order(audit: list[str]) -> list[str]:
    return [audit[i] for i in range(0, len(audit), 4)]
