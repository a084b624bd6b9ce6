"""The route table on PostgreSQL: changes, audit trail, concurrent writers, the migration."""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic.migration import MigrationContext
from alembic.operations import Operations
from sqlalchemy import Engine, create_engine, func, inspect, select, text

from new_domain import upgrade_database
from skeleton_app import Mode, Parity, RouteTable, ShadowResults, Window
from skeleton_app.schema import facade_route, facade_shadow_result, metadata
from skeleton_app.shadow_results import ShadowResult

pytestmark = pytest.mark.postgres

ROOT = Path(__file__).resolve().parents[2]
ROUTE = "/allocations/<orderid>"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def new_db(pg_url: str) -> str:
    upgrade_database(pg_url)
    return pg_url


@pytest.fixture
def engine(new_db: str) -> Iterator[Engine]:
    engine = create_engine(new_db, pool_size=10)
    yield engine
    engine.dispose()


def test_set_list_and_history(engine: Engine) -> None:
    table = RouteTable(engine)

    table.set("GET", ROUTE, Mode.NEW, by="alice", reason="cutover")
    table.set("GET", ROUTE, "legacy", by="bob", reason="rollback")
    table.set("PUT", "/batches/<ref>", "legacy", by="carol")

    assert [(r.method, r.pattern, r.mode, r.updated_by) for r in table.list() if not r.group] == [
        ("GET", ROUTE, Mode.LEGACY, "bob"),
        ("PUT", "/batches/<ref>", Mode.LEGACY, "carol"),
    ]
    history = table.history()
    assert [(e.method, e.from_mode, e.to_mode, e.by, e.reason) for e in history] == [
        ("GET", None, "new", "alice", "cutover"),
        ("GET", "new", "legacy", "bob", "rollback"),
        ("PUT", None, "legacy", "carol", ""),
    ]
    assert all(e.at.tzinfo is not None for e in history)
    assert history[0].at <= history[1].at <= history[2].at


def test_concurrent_changes_each_get_an_exact_audit_entry(engine: Engine) -> None:
    writers, changes_each = 6, 5
    start = threading.Barrier(writers)
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        table = RouteTable(engine)
        start.wait()
        try:
            for i in range(changes_each):
                mode = Mode.NEW if (n + i) % 2 else Mode.LEGACY
                table.set("GET", ROUTE, mode, by=f"writer-{n}")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert errors == []
    history = RouteTable(engine).history("GET", ROUTE)
    assert len(history) == writers * changes_each
    assert history[0].from_mode is None
    for before, after in zip(history, history[1:], strict=False):
        assert after.from_mode == before.to_mode
    with engine.connect() as conn:
        assert conn.execute(select(facade_route.c.mode)).scalar_one() == history[-1].to_mode


def test_every_worker_sees_a_change_after_its_refresh_interval(engine: Engine) -> None:
    clocks = [Clock(), Clock()]
    workers = [RouteTable(engine, clock=clock, refresh_interval=1.0) for clock in clocks]
    assert [w.mode_for("GET", "/allocations/o-1") for w in workers] == [Mode.LEGACY] * 2

    RouteTable(engine).set("GET", ROUTE, Mode.NEW, by="ops")
    clocks[0].now += 1.0

    assert [w.mode_for("GET", "/allocations/o-1") for w in workers] == [Mode.NEW, Mode.LEGACY]
    clocks[1].now += 1.0
    assert [w.mode_for("GET", "/allocations/o-1") for w in workers] == [Mode.NEW, Mode.NEW]


def _migrations() -> list[object]:
    modules = []
    for name in ("0002_facade_routes", "0004_facade_shadow", "0010_facade_lag_samples"):
        path = ROOT / "migrations" / "versions" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(f"facade_migration_pg_{name}", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        modules.append(module)
    return modules


def test_the_migrations_on_postgresql_match_the_tables_the_code_uses(pg_url: str) -> None:
    migrations = _migrations()
    engine = create_engine(pg_url)
    try:
        for migration in migrations:
            with engine.begin() as conn, Operations.context(MigrationContext.configure(conn)):
                migration.upgrade()  # type: ignore[attr-defined]
        found = inspect(engine)
        for table in metadata.sorted_tables:
            columns = {c["name"]: c for c in found.get_columns(table.name)}
            assert list(columns) == [c.name for c in table.columns]
            for column in table.columns:
                reflected = columns[column.name]
                assert reflected["nullable"] == column.nullable, column
                assert reflected["type"].compile(engine.dialect) == column.type.compile(
                    engine.dialect
                ), column
        RouteTable(engine).set("GET", ROUTE, Mode.NEW, by="ops")
        assert RouteTable(engine).mode_for("GET", "/allocations/x") is Mode.NEW

        for migration in reversed(migrations):
            with engine.begin() as conn, Operations.context(MigrationContext.configure(conn)):
                migration.downgrade()  # type: ignore[attr-defined]
        facade_tables = {"facade_route", "facade_route_audit", "facade_shadow_result"}
        assert not (facade_tables | {"facade_lag_sample"}) & set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_upgrade_database_reaches_the_facade_head(new_db: str) -> None:
    engine = create_engine(new_db)
    try:
        assert "facade_shadow_result" in inspect(engine).get_table_names()
        with engine.connect() as conn:
            heads = {
                row[0] for row in conn.execute(text("SELECT version_num FROM alembic_version"))
            }
        assert "0004_facade_shadow" in heads
    finally:
        engine.dispose()


def test_parity_window_and_pruning_on_postgresql(engine: Engine) -> None:
    now = datetime.now(UTC)
    results = ShadowResults(engine, Window(seconds=3600, max_samples=5))

    def rows(outcome: str, count: int, at: datetime, pattern: str = ROUTE) -> list[ShadowResult]:
        return [
            ShadowResult(
                at=at,
                method="GET",
                pattern=pattern,
                kind="shadow",
                outcome=outcome,
                path="/p",
                legacy_status=200,
                legacy_ms=1.0,
            )
            for _ in range(count)
        ]

    results.write(rows("mismatch", 3, now - timedelta(hours=2)))  # outside the window
    results.write(rows("error", 2, now - timedelta(minutes=3)))
    results.write(rows("match", 4, now - timedelta(minutes=1)))  # newest 5: 4 match, 1 error
    results.write(rows("match", 2, now, pattern="/other"))

    by_route = results.parity_by_route(now=now)
    assert by_route[("GET", ROUTE)] == Parity(matches=4, mismatches=0, errors=1)
    assert by_route[("GET", "/other")].percent == 100.0

    assert results.prune(now) == 3 + 1
    with engine.connect() as conn:
        counts = dict(
            conn.execute(
                select(facade_shadow_result.c.pattern, func.count()).group_by(
                    facade_shadow_result.c.pattern
                )
            ).all()
        )
    assert counts == {ROUTE: 5, "/other": 2}
    assert results.parity("GET", ROUTE, now=now) == Parity(matches=4, errors=1)
