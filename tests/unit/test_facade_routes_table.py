"""The route table on SQLite: changes with audit, validation, matching and caching."""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType

import pytest
from alembic.migration import MigrationContext
from alembic.operations import Operations
from sqlalchemy import Engine, create_engine, insert, inspect, select, text
from sqlalchemy.exc import SQLAlchemyError

from skeleton_app import (
    NEW_HANDLERS,
    CutoverGate,
    CutoverRefused,
    Mode,
    RouteError,
    RouteOptions,
    RouteTable,
    ShadowResults,
    Window,
)
from skeleton_app.schema import facade_route, facade_route_audit, metadata
from skeleton_app.shadow_results import ShadowResult

ROOT = Path(__file__).resolve().parents[2]
VERSIONS = ROOT / "migrations" / "versions"
MIGRATIONS = [
    VERSIONS / "0002_facade_routes.py",
    VERSIONS / "0004_facade_shadow.py",
    VERSIONS / "0010_facade_lag_samples.py",
]
ROUTE = "/allocations/<orderid>"
AT = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def load_migration(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"facade_migration_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_migration(engine: Engine, step: str) -> None:
    """Both facade revisions, up in order or down in reverse."""
    paths = MIGRATIONS if step == "upgrade" else MIGRATIONS[::-1]
    for path in paths:
        migration = load_migration(path)
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
    # the read routes' specs; write groups have their own (test_facade_write_groups.py)
    return RouteTable(engine, clock=clock, now=lambda: AT, groups={})


# -- the migration ---------------------------------------------------------------------


def test_migration_revisions_follow_the_new_domain_and_branch_off_the_route_table() -> None:
    routes, shadow, lag = (load_migration(path) for path in MIGRATIONS)

    assert (routes.revision, routes.down_revision) == ("0002_facade_routes", "0001_new_domain")
    assert (shadow.revision, shadow.down_revision) == ("0004_facade_shadow", "0002_facade_routes")
    assert (lag.revision, lag.down_revision) == (
        "0010_facade_lag_samples",
        "0009_debezium_positions",
    )


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
    indexes = {i["name"]: i["column_names"] for i in found.get_indexes("facade_shadow_result")}
    assert indexes == {
        "ix_facade_shadow_result_route": ["method", "pattern", "kind", "id"],
        "ix_facade_shadow_result_at": ["at"],
    }


def test_rows_written_before_the_shadow_revision_get_default_options(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'old.db'}")
    routes, shadow, _ = (load_migration(path) for path in MIGRATIONS)
    with engine.begin() as conn, Operations.context(MigrationContext.configure(conn)):
        routes.upgrade()
        conn.execute(
            text(
                "INSERT INTO facade_route VALUES ('GET', '/allocations/<orderid>', 'new', "
                "'2026-01-01 00:00:00', 'ops', 'cutover')"
            )
        )
    with engine.begin() as conn, Operations.context(MigrationContext.configure(conn)):
        shadow.upgrade()

    [route] = RouteTable(engine, groups={}).list()
    assert (route.mode, route.options, route.updated_by) == (Mode.NEW, RouteOptions(), "ops")
    engine.dispose()


def test_migration_downgrade_removes_the_tables(engine: Engine) -> None:
    run_migration(engine, "downgrade")

    assert not {"facade_route", "facade_route_audit", "facade_shadow_result"} & set(
        inspect(engine).get_table_names()
    )


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
    assert (
        entry.at,
        entry.method,
        entry.pattern,
        entry.from_mode,
        entry.to_mode,
        entry.by,
        entry.reason,
    ) == (AT, "GET", ROUTE, None, "new", "alice", "read model caught up")


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
        ("GET", ROUTE): Mode.LEGACY,
        ("POST", "/allocate"): Mode.LEGACY,
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
        (
            "GET",
            ROUTE,
            "sideways",
            "a",
            "unknown mode 'sideways' (known: legacy, aa, shadow, canary, new)",
        ),
        ("GET", ROUTE, "canary", "a", "canary needs a percentage"),
        ("GET", ROUTE, "canary 100.5", "a", "canary percentage must be 0-100"),
        ("GET", ROUTE, "canary -1", "a", "canary percentage must be 0-100"),
        ("GET", ROUTE, "canary 1.234", "a", "at most two decimals"),
        ("GET", ROUTE, "canary ten", "a", "canary percentage must be a number"),
        ("GET", ROUTE, "new 10", "a", "only canary takes a percentage"),
        ("GET", "/batches/<ref>", "shadow", "a", "cannot be served by the new system"),
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


def test_route_and_audit_are_written_in_one_transaction(table: RouteTable, engine: Engine) -> None:
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


def test_a_change_through_the_same_table_is_seen_at_once(table: RouteTable, clock: Clock) -> None:
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
        conn.execute(
            insert(facade_route),
            [
                {
                    "method": "GET",
                    "pattern": ROUTE,
                    "mode": "canary-from-the-future",
                    "updated_at": AT,
                    "updated_by": "x",
                    "reason": "",
                },
                {
                    "method": "GET",
                    "pattern": "/batches/<ref>",
                    "mode": "new",
                    "updated_at": AT,
                    "updated_by": "x",
                    "reason": "",
                },
            ],
        )

    assert table.mode_for("GET", "/allocations/o") is Mode.LEGACY
    assert table.mode_for("GET", "/batches/b") is Mode.LEGACY
    assert {r.mode for r in table.list()} == {Mode.LEGACY}


def test_timestamps_come_back_in_utc(table: RouteTable, engine: Engine) -> None:
    table.set("GET", ROUTE, Mode.NEW, by="ops")

    with engine.connect() as conn:
        stored_at = conn.execute(select(facade_route_audit.c.at)).scalar_one()
    assert stored_at.replace(tzinfo=UTC) == AT
    assert table.history()[0].at.tzinfo is not None


# -- modes beyond legacy and new, options --------------------------------------------


def test_every_mode_is_stored_and_audited_as_text(table: RouteTable) -> None:
    table.set("GET", ROUTE, "aa", by="ops", reason="noise first")
    table.set("GET", ROUTE, Mode.SHADOW, by="ops")
    table.set("GET", ROUTE, "canary", percent=12.5, by="ops")
    canary = table.set("GET", ROUTE, "canary 50", by="ops")
    table.set("GET", ROUTE, Mode.NEW, by="ops")

    assert (canary.mode, canary.percent, canary.setting) == (Mode.CANARY, 50.0, "canary 50")
    assert [(e.from_mode, e.to_mode) for e in table.history()] == [
        (None, "aa"),
        ("aa", "shadow"),
        ("shadow", "canary 12.5"),
        ("canary 12.5", "canary 50"),
        ("canary 50", "new"),
    ]
    table.set("GET", ROUTE, "canary 20", by="ops")
    match = table.match("GET", "/allocations/o-1")
    assert match is not None and (match.mode, match.percent) == (Mode.CANARY, 20.0)


def test_aa_suits_any_route_and_the_others_only_routes_the_new_system_serves(
    table: RouteTable,
) -> None:
    route = table.set("POST", "/allocate", "aa", by="ops")

    assert route.mode is Mode.AA
    assert table.mode_for("POST", "/allocate") is Mode.AA
    for mode in ("shadow", "canary 5", "new"):
        with pytest.raises(RouteError, match="cannot be served by the new system"):
            table.set("POST", "/allocate", mode, by="ops")


def test_options_change_one_at_a_time_and_each_change_is_audited(table: RouteTable) -> None:
    table.set(
        "GET",
        ROUTE,
        "shadow",
        by="ops",
        options={"ignore_fields": ["generated_at", "etag"], "unordered_lists": True},
    )
    route = table.set("GET", ROUTE, "shadow", by="ops", options={"sample_rate": 0.25})

    assert route.options == RouteOptions(
        ignore_fields=("etag", "generated_at"), unordered_lists=True, sample_rate=0.25
    )
    assert table.get("GET", ROUTE).options == route.options
    match = table.match("GET", "/allocations/o")
    assert match is not None and match.options == route.options
    first, second = table.history()
    assert first.options == RouteOptions(
        ignore_fields=("etag", "generated_at"), unordered_lists=True
    )
    assert second.options == route.options
    table.set("GET", ROUTE, "legacy", by="ops")
    assert table.get("GET", ROUTE).options == route.options  # kept across mode changes


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"colour": "red"}, "unknown route option(s): colour"),
        ({"canary_key": "body:x"}, "invalid canary key"),
        ({"canary_key": "header:"}, "invalid canary key"),
        ({"sample_rate": 1.5}, "sample rate must be between 0 and 1"),
        ({"ignore_fields": ["has space"]}, "invalid field name to ignore"),
    ],
)
def test_bad_options_are_refused_and_nothing_is_written(
    table: RouteTable, options: dict[str, object], message: str
) -> None:
    with pytest.raises(RouteError, match=re.escape(message)):
        table.set("GET", ROUTE, "shadow", by="ops", options=options)

    assert table.history() == []


def test_rollback_sets_every_route_not_on_legacy_back_to_legacy(table: RouteTable) -> None:
    table.set("GET", ROUTE, "canary 30", by="ops")
    table.set("POST", "/allocate", "aa", by="ops")
    table.set("GET", "/batches/<ref>", "legacy", by="ops")

    changed = table.rollback(by="oncall", reason="incident 42")

    assert sorted((r.method, r.pattern) for r in changed) == [
        ("GET", ROUTE),
        ("POST", "/allocate"),
    ]
    assert {r.mode for r in table.list()} == {Mode.LEGACY}
    last = table.history()[-2:]
    assert {(e.from_mode, e.to_mode, e.by, e.reason) for e in last} == {
        ("canary 30", "legacy", "oncall", "incident 42"),
        ("aa", "legacy", "oncall", "incident 42"),
    }
    assert table.rollback(by="oncall") == []


# -- the cutover gate ------------------------------------------------------------------


def _results(
    engine: Engine, outcomes: dict[str, int], at: datetime = AT, kind: str = "shadow"
) -> None:
    rows = [
        ShadowResult(
            at=at,
            method="GET",
            pattern=ROUTE,
            kind=kind,
            outcome=outcome,
            path="/allocations/o",
            legacy_status=200,
            legacy_ms=1.0,
        )
        for outcome, count in outcomes.items()
        for _ in range(count)
    ]
    ShadowResults(engine).write(rows)


@pytest.fixture
def gated(engine: Engine, clock: Clock) -> RouteTable:
    gate = CutoverGate(min_parity=99.0, min_samples=100, window=Window(3600, 1000))
    return RouteTable(engine, clock=clock, now=lambda: AT, gate=gate, groups={})


def test_the_gate_refuses_new_without_enough_shadow_samples(
    gated: RouteTable, engine: Engine
) -> None:
    _results(engine, {"match": 99})

    with pytest.raises(CutoverRefused) as refused:
        gated.set("GET", ROUTE, "new", by="ops")

    assert str(refused.value) == (
        "refusing to serve GET /allocations/<orderid> from new: shadow parity 100.00% over "
        "99 samples in the last 1 h (newest 1000 samples); needs >= 99% over >= 100 samples "
        "(shadow it longer, or use --force)"
    )
    assert refused.value.verdict.parity.samples == 99
    assert gated.history() == []
    assert gated.mode_for("GET", "/allocations/o") is Mode.LEGACY


def test_the_gate_refuses_new_below_the_parity_threshold_errors_included(
    gated: RouteTable, engine: Engine
) -> None:
    _results(engine, {"match": 198, "mismatch": 1, "error": 2})

    with pytest.raises(CutoverRefused, match=r"shadow parity 98\.50% over 201 samples"):
        gated.set("GET", ROUTE, "new", by="ops")


def test_the_gate_lets_new_through_and_keeps_its_evidence_in_the_audit(
    gated: RouteTable, engine: Engine
) -> None:
    _results(engine, {"match": 199, "mismatch": 1})
    gated.set("GET", ROUTE, "canary 50", by="ops")

    route = gated.set("GET", ROUTE, "new", by="ops", reason="parity is fine")

    assert route.mode is Mode.NEW
    entry = gated.history()[-1]
    assert (entry.from_mode, entry.to_mode, entry.forced) == ("canary 50", "new", False)
    assert entry.gate is not None and entry.gate.startswith("shadow parity 99.50% over 200")
    # starting the canary was judged too: new began answering clients
    assert gated.history()[0].gate == entry.gate


def test_force_overrides_the_gate_and_the_audit_says_so(gated: RouteTable) -> None:
    route = gated.set("GET", ROUTE, "new", by="ops", reason="hotfix", force=True)

    assert route.mode is Mode.NEW
    [entry] = gated.history()
    assert entry.forced is True
    assert entry.gate == (
        "forced past the gate: no shadow samples in the last 1 h (newest 1000 samples); "
        "needs >= 99% over >= 100 samples"
    )


def test_only_results_of_the_window_count_for_the_gate(gated: RouteTable, engine: Engine) -> None:
    _results(engine, {"match": 500}, at=AT - timedelta(hours=2))
    _results(engine, {"mismatch": 50}, at=AT - timedelta(minutes=5))
    _results(engine, {"match": 99}, at=AT - timedelta(minutes=1), kind="aa")

    with pytest.raises(CutoverRefused, match="0.00% over 50 samples"):
        gated.set("GET", ROUTE, "new", by="ops")

    _results(engine, {"match": 1000})  # the newest 1000 push the mismatches out
    assert gated.set("GET", ROUTE, "new", by="ops").mode is Mode.NEW


def test_staying_on_new_is_not_judged_again(gated: RouteTable) -> None:
    gated.set("GET", ROUTE, "new", by="ops", reason="test", force=True)

    route = gated.set("GET", ROUTE, "new", by="ops", options={"ignore_fields": ["x"]})

    assert route.options.ignore_fields == ("x",)
    assert gated.history()[-1].forced is False


@pytest.mark.parametrize("mode", ["canary 100", "canary 0.01", "new"])
def test_every_mode_that_lets_new_answer_clients_goes_through_the_gate(
    gated: RouteTable, mode: str
) -> None:
    with pytest.raises(CutoverRefused, match="no shadow samples"):
        gated.set("GET", ROUTE, mode, by="ops")
    with pytest.raises(RouteError, match="a forced move needs a reason"):
        gated.set("GET", ROUTE, mode, by="ops", force=True)

    gated.set("GET", ROUTE, mode, by="ops", reason="incident 42", force=True)

    entry = gated.history()[-1]
    assert (entry.to_mode, entry.forced) == (mode, True)
    assert entry.gate is not None and entry.gate.startswith("forced past the gate")
    gated.set("GET", ROUTE, "canary 0", by="ops")  # new answers no one: not judged
    assert gated.history()[-1].forced is False


def test_growing_a_canary_is_not_judged_again(gated: RouteTable, engine: Engine) -> None:
    _results(engine, {"match": 200})
    gated.set("GET", ROUTE, "canary 10", by="ops")
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM facade_shadow_result"))

    gated.set("GET", ROUTE, "canary 60", by="ops")

    with pytest.raises(CutoverRefused):
        gated.set("GET", ROUTE, "new", by="ops")


@pytest.mark.parametrize(("min_samples", "min_parity"), [(0, 0.0), (9, 99.9), (100, 94.9)])
def test_thresholds_below_the_floor_count_as_forcing(
    engine: Engine, clock: Clock, min_samples: int, min_parity: float
) -> None:
    table = RouteTable(
        engine,
        clock=clock,
        now=lambda: AT,
        gate=CutoverGate(min_parity, min_samples, Window(3600, 1000)),
        groups={},
    )
    _results(engine, {"match": 200})

    with pytest.raises(CutoverRefused, match="below the floor"):
        table.set("GET", ROUTE, "new", by="ops")
    table.set("GET", ROUTE, "new", by="ops", reason="lab only", force=True)

    entry = table.history()[-1]
    assert entry.forced is True
    assert entry.gate is not None and "below the floor (95% over 10 samples)" in entry.gate
