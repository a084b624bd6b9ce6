"""`strangler verify`: orders from both sides, legacy's HTTP answer against the read
model's, a summary, readable differences, a failing exit on any difference. Legacy's
HTTP API is faked with ``responses``; its database is SQLite."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
import responses
from click.testing import CliRunner
from sqlalchemy import create_engine, func, insert, select, text

from examples.legacy_shop.schema import create_schema, cust_order_line
from new_domain.adapters import orm
from new_domain.entrypoints.commands import verify
from tests.integration.consumer_streams import migrated_sqlite_url

LEGACY = "http://legacy.invalid"


@pytest.fixture
def new_db_url(tmp_path: Path) -> str:
    return migrated_sqlite_url(tmp_path)


@pytest.fixture
def legacy_db_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'legacy.db'}"
    engine = create_engine(url)
    create_schema(engine)
    engine.dispose()
    return url


class Systems:
    """What legacy answers (HTTP, and the orders in its database) and what the new read
    model holds."""

    def __init__(self, legacy_db_url: str, new_db_url: str) -> None:
        self.legacy_db_url = legacy_db_url
        self.new_db_url = new_db_url
        self.answers: dict[str, list[dict[str, str]]] = {}

    def legacy(self, orderid: str, *rows: tuple[str, str], line: bool = True) -> None:
        self.answers[orderid] = [{"sku": s, "batchref": b} for s, b in rows]
        if line:
            engine = create_engine(self.legacy_db_url)
            with engine.begin() as connection:
                connection.execute(
                    insert(cust_order_line).values(order_no=orderid, prod_id=1, qty_units=1)
                )
            engine.dispose()

    def new(self, orderid: str, *rows: tuple[str, str]) -> None:
        engine = create_engine(self.new_db_url)
        with engine.begin() as connection:
            for sku, batchref in rows:
                connection.execute(
                    insert(orm.allocations_view).values(orderid=orderid, sku=sku, batchref=batchref)
                )
        engine.dispose()

    def both(self, orderid: str, *rows: tuple[str, str]) -> None:
        self.legacy(orderid, *rows)
        self.new(orderid, *rows)

    def respond(self, request: Any) -> tuple[int, dict[str, str], str]:
        """The legacy shop's ``GET /allocations/<orderid>``."""
        orderid = unquote(request.path_url.rsplit("/", 1)[1])
        rows = self.answers.get(orderid)
        if not rows:
            body = {"error": "not found", "detail": f"no allocations for order {orderid}"}
            return 404, {}, json.dumps(body)
        return 200, {}, json.dumps(sorted(rows, key=lambda r: (r["sku"], r["batchref"])))


@pytest.fixture
def systems(legacy_db_url: str, new_db_url: str) -> Iterator[Systems]:
    systems = Systems(legacy_db_url, new_db_url)
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.add_callback(
            responses.GET, re.compile(rf"{LEGACY}/allocations/.+"), callback=systems.respond
        )
        yield systems


def run(systems: Systems, *args: str) -> Any:
    return CliRunner().invoke(
        verify,
        ["--legacy-url", LEGACY, *args],
        env={"LEGACY_DB_URL": systems.legacy_db_url, "NEW_DB_URL": systems.new_db_url},
    )


def test_every_order_matching_passes(systems: Systems) -> None:
    systems.both("o1", ("LAMP", "b1"))
    systems.both("o 2/x", ("LAMP", "b1"), ("RUG", "b2"))  # quoted in the URL
    systems.legacy("o3")  # an order line without allocation: 404 on both sides
    result = run(systems)
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "checked 3 orders: 3 matching, 0 differing, 0 only in legacy,"
        " 0 only in the new system, 0 errors"
    ]


def test_each_kind_of_difference_is_counted_shown_and_fails(systems: Systems) -> None:
    systems.both("same", ("LAMP", "b1"))
    systems.legacy("moved", ("LAMP", "b1"))
    systems.new("moved", ("LAMP", "b2"))
    systems.legacy("lost", ("RUG", "b3"))
    systems.new("extra", ("RUG", "b3"))
    result = run(systems)
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert lines[0] == (
        "checked 4 orders: 1 matching, 1 differing, 1 only in legacy,"
        " 1 only in the new system, 0 errors"
    )
    shown = "\n".join(lines[1:])
    assert re.search(r"moved \(differ\): .*batchref.*b1.*b2", shown)
    assert "lost (only_legacy): allocated only in legacy" in shown
    assert "extra (only_new): allocated only in the new system" in shown
    assert "3 of 4 orders differ" in result.output


def test_a_sample_checks_that_many_orders(systems: Systems) -> None:
    for n in range(30):
        systems.both(f"o{n}", ("LAMP", "b1"))
    result = run(systems, "--sample", "7", "--seed", "1")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("checked 7 orders: 7 matching")


def test_legacy_orders_are_listed_read_only(systems: Systems) -> None:
    systems.both("o1", ("LAMP", "b1"))
    result = run(systems, "--legacy-orders-sql", "DELETE FROM cust_order_line RETURNING order_no")
    assert result.exit_code == 1
    assert "cannot list orders" in result.output and "readonly" in result.output
    engine = create_engine(systems.legacy_db_url)
    with engine.connect() as connection:
        assert connection.scalar(select(func.count()).select_from(cust_order_line)) == 1
        assert connection.execute(text("SELECT 1")).scalar() == 1
    engine.dispose()
