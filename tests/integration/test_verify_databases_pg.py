"""`strangler verify --databases` with both databases on PostgreSQL: equal after the
pipeline carried legacy's day over, a planted difference on either side found."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.unit.test_verify_databases import Databases, synced

pytestmark = [pytest.mark.postgres]


def test_verify_databases_on_postgresql(pg_url_factory: Callable[[], str]) -> None:
    databases = Databases(pg_url_factory(), pg_url_factory())
    synced(databases.legacy, databases.new)

    equal = databases.verify()
    assert equal.exit_code == 0, equal.output
    assert equal.output.strip().endswith(": equal")

    databases.execute(databases.legacy, "UPDATE stock_lot SET qty_units = 9 WHERE lot_ref = 'b1'")
    in_legacy = databases.verify()
    assert in_legacy.exit_code == 1
    assert "  batch b1: legacy sku LAMP, eta warehouse, purchased 9, available 5, " in (
        in_legacy.output
    )
    databases.execute(databases.legacy, "UPDATE stock_lot SET qty_units = 5 WHERE lot_ref = 'b1'")

    databases.execute(databases.new, "DELETE FROM batch_allocations WHERE orderid = 'o1'")
    in_new = databases.verify()
    assert in_new.exit_code == 1
    assert "  allocation o1/DESK: only in legacy (b3)" in in_new.output.splitlines()
    assert "  allocation o1/LAMP: only in legacy (b1)" in in_new.output.splitlines()
