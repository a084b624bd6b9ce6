"""`strangler verify --databases`: the legacy and new databases compared both ways.

The new database is built from legacy's by the real pipeline (bridge, in-process broker,
consumer), so the two hold the same facts; then a difference is planted on one side or
the other, and verify names it and fails."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import create_engine, text

import broker
import legacy_bridge
import new_domain
from examples import legacy_shop
from skeleton_app.composition.cli import cli
from skeleton_app.composition.verify_databases import compare_databases


@dataclass
class Databases:
    legacy: str
    new: str

    def verify(self, *args: str) -> Result:
        env = {"LEGACY_DB_URL": self.legacy, "NEW_DB_URL": self.new}
        return CliRunner().invoke(cli, ["verify", "--databases", *args], env=env)

    def execute(self, url: str, sql: str) -> None:
        engine = create_engine(url)
        with engine.begin() as conn:
            conn.execute(text(sql))
        engine.dispose()


def synced(legacy_db: str, new_db: str) -> None:
    """A day of the shop, then everything carried into the new database."""
    broker_url = f"memory://verify-{uuid.uuid4().hex[:8]}"
    shop = legacy_shop.create_app(legacy_db).test_client()
    legacy_bridge.install(legacy_db, tables=list(legacy_shop.TABLES))
    new_domain.upgrade_database(new_db)
    consumer = new_domain.Consumer(new_domain.bootstrap(new_db), lambda: broker.connect(broker_url))
    consumer.connect()
    for body in (
        {"ref": "b1", "sku": "LAMP", "qty": 10, "eta": None},
        {"ref": "b2", "sku": "LAMP", "qty": 10, "eta": "2030-01-01"},
        {"ref": "b3", "sku": "DESK", "qty": 5, "eta": None},
    ):
        assert shop.post("/batches", json=body).status_code == 201
    for orderid, sku, qty in (("o1", "LAMP", 4), ("o2", "LAMP", 4), ("o1", "DESK", 2)):
        body = {"orderid": orderid, "sku": sku, "qty": qty}
        assert shop.post("/allocate", json=body).status_code == 201
    assert shop.patch("/batches/b1", json={"qty": 5}).status_code == 200  # o2 -> b2
    with legacy_bridge.Relay(legacy_db, broker_factory=lambda: broker.connect(broker_url)) as r:
        while r.run_once():
            pass
    while consumer.run_once():
        pass
    consumer.close()
    consumer.bus.uow.close()


@pytest.fixture
def databases(tmp_path: Path) -> Iterator[Databases]:
    found = Databases(f"sqlite:///{tmp_path / 'legacy.db'}", f"sqlite:///{tmp_path / 'new.db'}")
    synced(found.legacy, found.new)
    yield found


def test_equal_databases_pass_with_a_one_line_summary(databases: Databases) -> None:
    result = databases.verify()

    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "compared 3 batches and 3 allocations in the legacy and new databases: equal"
    ]


def test_a_fact_only_legacy_has_is_a_difference(databases: Databases) -> None:
    databases.execute(databases.legacy, "UPDATE stock_lot SET qty_units = 7 WHERE lot_ref = 'b3'")
    databases.execute(
        databases.legacy,
        "DELETE FROM lot_allocation WHERE line_id ="
        " (SELECT line_id FROM cust_order_line WHERE order_no = 'o2')",
    )

    result = databases.verify()

    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert lines[:-1] == [
        "compared 3 batches and 3 allocations in the legacy and new databases: 3 difference(s)",
        "  batch b2: legacy sku LAMP, eta 2030-01-01, purchased 10, available 10, "
        "new system sku LAMP, eta 2030-01-01, purchased 10, available 6",
        "  batch b3: legacy sku DESK, eta warehouse, purchased 7, available 5, "
        "new system sku DESK, eta warehouse, purchased 5, available 3",
        "  allocation o2/LAMP: only in the new system (b2)",
    ]
    assert lines[-1].endswith("the databases differ in 3 fact(s)")


def test_a_fact_only_the_new_system_has_is_a_difference(databases: Databases) -> None:
    databases.execute(
        databases.new,
        "INSERT INTO batch_allocations (batchref, orderid, sku, qty, seq)"
        " VALUES ('b3', 'o9', 'DESK', 1, 9)",
    )
    databases.execute(
        databases.new, "UPDATE batch_allocations SET batchref = 'b1' WHERE orderid = 'o2'"
    )

    result = databases.verify("--show", "1")

    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert lines[0].endswith("5 difference(s)")  # batches b1, b2, b3; allocations o2, o9
    assert lines[1].startswith("  batch b1: legacy")
    assert lines[2] == "  ... and 4 more"
    report = compare_databases(databases.legacy, databases.new, keep=10)
    assert [d.explain() for d in report.differences if d.what == "allocation"] == [
        "allocation o2/LAMP: legacy b2, new system b1",
        "allocation o9/DESK: only in the new system (b3)",
    ]


def test_http_only_options_are_refused_with_databases(databases: Databases) -> None:
    result = databases.verify("--sample", "3")

    assert result.exit_code == 2
    assert "--sample applies to the HTTP comparison, not to --databases" in result.output


def test_without_databases_it_still_needs_the_legacy_url(databases: Databases) -> None:
    env = {"LEGACY_DB_URL": databases.legacy, "NEW_DB_URL": databases.new}
    result = CliRunner().invoke(cli, ["verify"], env={**env, "LEGACY_URL": ""})

    assert result.exit_code == 2
    assert "Missing option '--legacy-url' (or use --databases)" in result.output


def test_with_legacy_down_verify_says_legacy_could_not_be_asked(databases: Databases) -> None:
    env = {"LEGACY_DB_URL": databases.legacy, "NEW_DB_URL": databases.new}
    down = "http://127.0.0.1:1"  # nothing listens there: connection refused

    result = CliRunner().invoke(cli, ["verify", "--legacy-url", down], env=env)

    assert result.exit_code == 3, result.output
    summary, *_, last = result.output.splitlines()
    assert summary == (
        "checked 2 orders: 0 matching, 0 differing, 0 only in legacy, 0 only in the new "
        "system, 0 errors, 2 not asked (legacy unreachable)"
    )
    assert last.startswith(
        f"Error: legacy at {down} could not be asked about 2 of 2 orders (ConnectionError: "
    )
    assert last.endswith("): they are not verified")
    assert "differ" not in last
    assert "3  legacy could not be asked" in CliRunner().invoke(cli, ["verify", "--help"]).output
