"""The route table on SQLite: changes with audit, validation, matching and caching."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType

import pytest
from alembic.migration import MigrationContext
from alembic.operations import Operations
from sqlalchemy import Engine, create_engine, insert, inspect, select, text
from sqlalchemy.exc import SQLAlchemyError

from skeleton_app import NEW_HANDLERS, Mode, RouteError, RouteTable
from skeleton_app.schema import facade_route, facade_route_audit, metadata

ROOT = Path(__file__).resolve().parents[2]
MIGRATION = ROOT / "migrations" / "versions" / "0002_facade_routes.py"
ROUTE = "/allocations/<orderid>"
AT = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def load_migration() -> ModuleType:
    spec = importlib.util.spec_from_file_location("facade_routes_migration", MIGRATION)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_migration(engine: Engine, step: str) -> None:
    migration = load_migration()
    with engine.begin() as conn, Operations.context(MigrationContext.configure(conn)):
        getattr(migration, step)()


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = create_engine(f"sqlite:///{tmp_path / 'new.db'}")
    run_migration(engine, "upgrade")
    yield engine
    engine.dispose()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def table(engine: Engine, clock: Clock) -> RouteTable:
    return RouteTable(engine, clock=clock, now=lambda: AT)


# -- the migration ---------------------------------------------------------------------


def test_migration_revision_follows_the_new_domain() -> None:
    migration = load_migration()

    assert migration.revision == "0002_facade_routes"
    assert migration.down_revision == "0001_new_domain"


def test_migration_creates_exactly_the_tables_the_code_uses(engine: Engine) -> None:
    found = inspect(engine)

    for table in metadata.sorted_tables:
        columns = {c["name"]: c for c in found.get_columns(table.name)}
        assert list(columns) == [c.name for c in table.columns], table.name
        for column in table.columns:
            reflected = columns[column.name]
            assert reflected["nullable"] == column.nullable, column
            assert reflected["type"].compile(engine.dialect) == column.type.compile(
                engine.dialect
            ), column
        primary_key = found.get_pk_constraint(table.name)["constrained_columns"]
        assert primary_key == [c.name for c in table.primary_key.columns], table.name
    indexes = {i["name"]: i["column_names"] for i in found.get_indexes("facade_route_audit")}
    assert indexes == {"ix_facade_route_audit_route": ["method", "pattern"]}


def test_migration_downgrade_removes_the_tables(engine: Engine) -> None:
    run_migration(engine, "downgrade")

    assert not {"facade_route", "facade_route_audit"} & set(inspect(engine).get_table_names())


# -- listing and setting ---------------------------------------------------------------


def test_movable_routes_are_listed_as_legacy_before_anyone_set_them(table: RouteTable) -> None:
    routes = table.list()

    assert [(r.method, r.pattern, r.mode, r.updated_at) for r in routes] == [
        ("GET", ROUTE, Mode.LEGACY, None),
    ]
    assert set(NEW_HANDLERS) == {("GET", ROUTE)}


def test_setting_a_route_stores_it_and_writes_an_audit_entry(table: RouteTable) -> None:
    route = table.set("get", ROUTE, "NEW", by="alice", reason="read model caught up")

    assert (route.method, route.pattern, route.mode) == ("GET", ROUTE, Mode.NEW)
    [listed] = table.list()
    assert listed == route
    assert listed.updated_at == AT
    assert (listed.updated_by, listed.reason) == ("alice", "read model caught up")
    [entry] = table.history()
    assert (entry.at, entry.method, entry.pattern, entry.from_mode, entry.to_mode, entry.by,
            entry.reason) == (AT, "GET", ROUTE, None, "new", "alice", "read model caught up")


def test_every_change_is_audited_with_the_mode_it_replaced(table: RouteTable) -> None:
    table.set("GET", ROUTE, Mode.NEW, by="alice", reason="cutover")
    table.set("GET", ROUTE, Mode.LEGACY, by="bob", reason="rollback")
    table.set("POST", "/allocate", Mode.LEGACY, by="carol")

    history = table.history("GET", ROUTE)
    assert [(e.from_mode, e.to_mode, e.by, e.reason) for e in history] == [
        (None, "new", "alice", "cutover"),
        ("new", "legacy", "bob", "rollback"),
    ]
    assert history[0].id < history[1].id
    assert len(table.history()) == 3
    assert {(r.method, r.pattern): r.mode for r in table.list()} == {
        ("GET", ROUTE): Mode.LEGACY, ("POST", "/allocate"): Mode.LEGACY,
    }


def test_a_route_the_new_system_cannot_serve_is_refused(table: RouteTable) -> None:
    with pytest.raises(RouteError) as refused:
        table.set("GET", "/batches/<ref>", Mode.NEW, by="alice")

    assert str(refused.value) == (
        "GET /batches/<ref> cannot be served by the new system "
        "(routes that can: GET /allocations/<orderid>)"
    )
    assert table.history() == []
    assert table.set("GET", "/batches/<ref>", Mode.LEGACY, by="alice").mode is Mode.LEGACY


@pytest.mark.parametrize(
    ("method", "pattern", "mode", "by", "message"),
    [
        ("GET", ROUTE, "shadow", "a", "unknown mode 'shadow' (known: legacy, new)"),
        ("GE T", ROUTE, "new", "a", "invalid HTTP method 'GE T'"),
        ("GET", "allocations/<orderid>", "legacy", "a", "must start with '/'"),
        ("GET", "/allocations/<int:orderid", "legacy", "a", "invalid route pattern"),
        ("GET", "/x/<nope:y>", "legacy", "a", "invalid route pattern"),
        ("GET", "/_strangler/health", "legacy", "a", "is the facade's"),
        ("GET", ROUTE, "new", "  ", "who changes the route must be given"),
    ],
)
def test_bad_changes_are_refused_with_one_clear_line(
    table: RouteTable, method: str, pattern: str, mode: str, by: str, message: str
) -> None:
    with pytest.raises(RouteError) as refused:
        table.set(method, pattern, mode, by=by)

    assert message in str(refused.value)
    assert "\n" not in str(refused.value)
    assert table.history() == []


def test_route_and_audit_are_written_in_one_transaction(
    table: RouteTable, engine: Engine
) -> None:
    table.set("GET", ROUTE, Mode.NEW, by="alice")
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE facade_route_audit"))

    with pytest.raises(SQLAlchemyError):
        table.set("GET", ROUTE, Mode.LEGACY, by="bob")

    with engine.connect() as conn:
        assert conn.execute(select(facade_route.c.mode, facade_route.c.updated_by)).all() == [
            ("new", "alice")
        ]


# -- matching and caching --------------------------------------------------------------


def test_requests_match_flask_style_patterns(table: RouteTable) -> None:
    table.set("GET", ROUTE, Mode.NEW, by="ops")

    assert table.mode_for("GET", "/allocations/order-1") is Mode.NEW
    assert table.mode_for("HEAD", "/allocations/order-1") is Mode.NEW
    assert table.mode_for("POST", "/allocations/order-1") is Mode.LEGACY
    assert table.mode_for("GET", "/allocations/order-1/") is Mode.LEGACY
    assert table.mode_for("GET", "/allocations/a/b") is Mode.LEGACY
    assert table.mode_for("GET", "/batches/b-1") is Mode.LEGACY
    match = table.match("GET", "/allocations/order%201")
    assert match is not None and match.args == {"orderid": "order%201"}


def test_the_most_specific_pattern_wins(engine: Engine) -> None:
    table = RouteTable(engine, movable=[("GET", ROUTE), ("GET", "/<path:anything>")])
    table.set("GET", "/<path:anything>", Mode.NEW, by="ops")
    table.set("GET", ROUTE, Mode.NEW, by="ops")
    table.set("GET", "/allocations/special", Mode.LEGACY, by="ops")

    assert table.mode_for("GET", "/allocations/special") is Mode.LEGACY
    general = table.match("GET", "/allocations/order-1")
    assert general is not None and general.pattern == ROUTE


def test_the_cache_is_reread_only_after_the_refresh_interval(
    table: RouteTable, engine: Engine, clock: Clock
) -> None:
    assert table.mode_for("GET", "/allocations/o") is Mode.LEGACY
    RouteTable(engine).set("GET", ROUTE, Mode.NEW, by="elsewhere")

    clock.now += 0.999
    assert table.mode_for("GET", "/allocations/o") is Mode.LEGACY
    clock.now += 0.001
    assert table.mode_for("GET", "/allocations/o") is Mode.NEW


def test_a_change_through_the_same_table_is_seen_at_once(
    table: RouteTable, clock: Clock
) -> None:
    assert table.mode_for("GET", "/allocations/o") is Mode.LEGACY

    table.set("GET", ROUTE, Mode.NEW, by="ops")

    assert table.mode_for("GET", "/allocations/o") is Mode.NEW


def test_an_unreadable_table_keeps_the_last_snapshot(
    table: RouteTable, engine: Engine, clock: Clock
) -> None:
    table.set("GET", ROUTE, Mode.NEW, by="ops")
    assert table.mode_for("GET", "/allocations/o") is Mode.NEW
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE facade_route RENAME TO facade_route_gone"))

    clock.now += 5
    assert table.mode_for("GET", "/allocations/o") is Mode.NEW


def test_unknown_or_unservable_stored_modes_fall_back_to_legacy(
    table: RouteTable, engine: Engine
) -> None:
    with engine.begin() as conn:
        conn.execute(insert(facade_route), [
            {"method": "GET", "pattern": ROUTE, "mode": "canary-from-the-future",
             "updated_at": AT, "updated_by": "x", "reason": ""},
            {"method": "GET", "pattern": "/batches/<ref>", "mode": "new",
             "updated_at": AT, "updated_by": "x", "reason": ""},
        ])

    assert table.mode_for("GET", "/allocations/o") is Mode.LEGACY
    assert table.mode_for("GET", "/batches/b") is Mode.LEGACY
    assert {r.mode for r in table.list()} == {Mode.LEGACY}


def test_timestamps_come_back_in_utc(table: RouteTable, engine: Engine) -> None:
    table.set("GET", ROUTE, Mode.NEW, by="ops")

    with engine.connect() as conn:
        stored_at = conn.execute(select(facade_route_audit.c.at)).scalar_one()
    assert stored_at.replace(tzinfo=UTC) == AT
    assert table.history()[0].at.tzinfo is not None
