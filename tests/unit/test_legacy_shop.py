"""The stand-in legacy shop's HTTP API, on SQLite.

The behaviour classes (everything but input validation) run again on PostgreSQL in
tests/integration/test_legacy_shop_pg.py, which subclasses them with its own ``db_url``.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import Engine, create_engine, func, select, text
from werkzeug.test import TestResponse

from examples.legacy_shop import TABLES, create_app
from examples.legacy_shop.app import ENGINE_KEY
from examples.legacy_shop.schema import cust_order_line, lot_allocation, prod_catalog, stock_lot

T = TypeVar("T")


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'legacy.db'}"


def run_concurrently(calls: list[Callable[[], T]]) -> list[T]:
    """Run every call on its own thread, all released at once; return their results."""
    barrier = threading.Barrier(len(calls))

    def released(call: Callable[[], T]) -> T:
        barrier.wait(timeout=30)
        return call()

    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        futures = [pool.submit(released, call) for call in calls]
        return [future.result(timeout=60) for future in futures]


def utc_now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class ShopCase:
    """Fixtures and helpers shared by the behaviour classes (on any database)."""

    @pytest.fixture
    def app(self, db_url: str) -> Iterator[Flask]:
        app = create_app(db_url)
        yield app
        app.extensions[ENGINE_KEY].dispose()

    @pytest.fixture
    def client(self, app: Flask) -> FlaskClient:
        return app.test_client()

    @pytest.fixture
    def db(self, app: Flask, db_url: str) -> Iterator[Engine]:
        """A separate engine to check what the shop wrote."""
        engine = create_engine(db_url)
        yield engine
        engine.dispose()

    @staticmethod
    def add_batch(
        client: FlaskClient, ref: str, sku: str, qty: int, eta: str | None = None
    ) -> TestResponse:
        response = client.post("/batches", json={"ref": ref, "sku": sku, "qty": qty, "eta": eta})
        assert response.status_code == 201, response.get_json()
        return response

    @staticmethod
    def allocate(client: FlaskClient, orderid: str, sku: str, qty: int) -> TestResponse:
        return client.post("/allocate", json={"orderid": orderid, "sku": sku, "qty": qty})

    def allocated_to(self, client: FlaskClient, orderid: str, sku: str, qty: int) -> str:
        response = self.allocate(client, orderid, sku, qty)
        assert response.status_code == 201, response.get_json()
        batchref = response.get_json()["batchref"]
        assert isinstance(batchref, str)
        return batchref

    @staticmethod
    def count(db: Engine, table: Any) -> int:
        with db.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(table)).scalar_one())

    @staticmethod
    def lines(db: Engine) -> dict[str, tuple[int, int, str | None]]:
        """order_no -> (line_id, qty_units, lot_ref or None) for every order line."""
        with db.connect() as conn:
            rows = conn.execute(
                select(
                    cust_order_line.c.order_no,
                    cust_order_line.c.line_id,
                    cust_order_line.c.qty_units,
                    stock_lot.c.lot_ref,
                ).select_from(
                    cust_order_line.outerjoin(
                        lot_allocation, lot_allocation.c.line_id == cust_order_line.c.line_id
                    ).outerjoin(stock_lot, stock_lot.c.lot_id == lot_allocation.c.lot_id)
                )
            ).all()
        return {row.order_no: (row.line_id, row.qty_units, row.lot_ref) for row in rows}


class TestSchema(ShopCase):
    def test_creates_the_legacy_tables(self, app: Flask, db: Engine) -> None:
        assert TABLES == ("prod_catalog", "stock_lot", "cust_order_line", "lot_allocation")
        for table in TABLES:
            with db.connect() as conn:
                assert conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one() == 0

    def test_a_second_app_on_the_same_database_keeps_the_data(
        self, client: FlaskClient, db_url: str
    ) -> None:
        self.add_batch(client, "b1", "LAMP", 5)
        other = create_app(db_url)
        try:
            assert other.test_client().get("/batches/b1").status_code == 200
        finally:
            other.extensions[ENGINE_KEY].dispose()


class TestBatches(ShopCase):
    def test_add_batch_answers_with_the_batch(self, client: FlaskClient) -> None:
        response = client.post(
            "/batches", json={"ref": "b1", "sku": "LAMP", "qty": 20, "eta": "2030-01-02"}
        )
        assert response.status_code == 201
        assert response.get_json() == {"ref": "b1", "sku": "LAMP", "qty": 20, "eta": "2030-01-02"}

    def test_first_batch_of_a_sku_creates_the_product_row(
        self, client: FlaskClient, db: Engine
    ) -> None:
        before = utc_now()
        self.add_batch(client, "b1", "LAMP", 20)
        self.add_batch(client, "b2", "LAMP", 5, "2030-01-02")
        self.add_batch(client, "b3", "TABLE", 5)
        after = utc_now()
        with db.connect() as conn:
            products = conn.execute(
                select(prod_catalog.c.prod_code, prod_catalog.c.descr).order_by("prod_code")
            ).all()
            lots = conn.execute(
                select(
                    stock_lot.c.lot_ref,
                    prod_catalog.c.prod_code,
                    stock_lot.c.qty_units,
                    stock_lot.c.arrival_date,
                    stock_lot.c.created_at,
                )
                .join(prod_catalog, prod_catalog.c.prod_id == stock_lot.c.prod_id)
                .order_by(stock_lot.c.lot_ref)
            ).all()
        assert [tuple(p) for p in products] == [("LAMP", None), ("TABLE", None)]
        assert [(lot.lot_ref, lot.prod_code, lot.qty_units) for lot in lots] == [
            ("b1", "LAMP", 20),
            ("b2", "LAMP", 5),
            ("b3", "TABLE", 5),
        ]
        assert [str(lot.arrival_date) for lot in lots] == ["None", "2030-01-02", "None"]
        assert all(before <= lot.created_at <= after for lot in lots), "created_at is UTC"

    def test_duplicate_ref_is_a_conflict_and_writes_nothing(
        self, client: FlaskClient, db: Engine
    ) -> None:
        self.add_batch(client, "b1", "LAMP", 20)
        response = client.post(
            "/batches", json={"ref": "b1", "sku": "CHAIR", "qty": 3, "eta": None}
        )
        assert response.status_code == 409
        assert response.get_json() == {
            "error": "duplicate batch",
            "detail": "batch b1 already exists",
        }
        assert self.count(db, stock_lot) == 1
        assert self.count(db, prod_catalog) == 1

    def test_get_batch_shows_allocated_and_available(self, client: FlaskClient) -> None:
        self.add_batch(client, "b1", "LAMP", 20, "2030-01-02")
        self.allocated_to(client, "o1", "LAMP", 3)
        self.allocated_to(client, "o2", "LAMP", 4)
        response = client.get("/batches/b1")
        assert response.status_code == 200
        assert response.get_json() == {
            "ref": "b1",
            "sku": "LAMP",
            "qty": 20,
            "eta": "2030-01-02",
            "allocated": 7,
            "available": 13,
        }

    def test_get_unknown_batch_is_not_found(self, client: FlaskClient) -> None:
        response = client.get("/batches/nope")
        assert response.status_code == 404
        assert response.get_json() == {"error": "not found", "detail": "no batch nope"}


class TestAllocate(ShopCase):
    def test_prefers_warehouse_stock_to_shipments(self, client: FlaskClient) -> None:
        self.add_batch(client, "shipment", "LAMP", 100, "2000-01-01")
        self.add_batch(client, "warehouse", "LAMP", 100)
        assert self.allocated_to(client, "o1", "LAMP", 10) == "warehouse"

    def test_then_the_earliest_shipment(self, client: FlaskClient) -> None:
        self.add_batch(client, "later", "LAMP", 100, "2030-03-01")
        self.add_batch(client, "earliest", "LAMP", 100, "2030-01-01")
        self.add_batch(client, "middle", "LAMP", 100, "2030-02-01")
        assert self.allocated_to(client, "o1", "LAMP", 10) == "earliest"

    def test_equal_etas_go_to_the_older_lot(self, client: FlaskClient) -> None:
        self.add_batch(client, "z-first", "LAMP", 100, "2030-01-01")
        self.add_batch(client, "a-second", "LAMP", 100, "2030-01-01")
        assert self.allocated_to(client, "o1", "LAMP", 10) == "z-first"

    def test_skips_lots_without_enough_available(self, client: FlaskClient) -> None:
        self.add_batch(client, "warehouse", "LAMP", 10)
        self.add_batch(client, "shipment", "LAMP", 10, "2030-01-01")
        assert self.allocated_to(client, "o1", "LAMP", 6) == "warehouse"
        assert self.allocated_to(client, "o2", "LAMP", 5) == "shipment"
        assert self.allocated_to(client, "o3", "LAMP", 4) == "warehouse", "exact fit is fine"

    def test_only_lots_of_the_same_sku(self, client: FlaskClient) -> None:
        self.add_batch(client, "chairs", "CHAIR", 100)
        self.add_batch(client, "lamps", "LAMP", 100, "2030-01-01")
        assert self.allocated_to(client, "o1", "LAMP", 10) == "lamps"

    def test_writes_the_line_and_its_allocation(self, client: FlaskClient, db: Engine) -> None:
        self.add_batch(client, "b1", "LAMP", 10)
        before = utc_now()
        self.allocated_to(client, "o1", "LAMP", 3)
        after = utc_now()
        with db.connect() as conn:
            allocated_at = conn.execute(select(lot_allocation.c.allocated_at)).scalar_one()
        assert before <= allocated_at <= after, "allocated_at is UTC"
        assert [(qty, ref) for _, qty, ref in self.lines(db).values()] == [(3, "b1")]

    def test_out_of_stock_is_a_conflict_and_writes_nothing(
        self, client: FlaskClient, db: Engine
    ) -> None:
        self.add_batch(client, "b1", "LAMP", 10)
        self.add_batch(client, "b2", "LAMP", 10, "2030-01-01")
        response = self.allocate(client, "o1", "LAMP", 11)
        assert response.status_code == 409
        assert response.get_json() == {
            "error": "out of stock",
            "detail": "no batch of sku LAMP has 11 units available",
            "sku": "LAMP",
        }
        assert self.count(db, cust_order_line) == 0
        assert self.count(db, lot_allocation) == 0

    def test_an_allocated_line_is_a_conflict(self, client: FlaskClient, db: Engine) -> None:
        self.add_batch(client, "b1", "LAMP", 10)
        self.allocated_to(client, "o1", "LAMP", 3)
        response = self.allocate(client, "o1", "LAMP", 2)
        assert response.status_code == 409
        assert response.get_json() == {
            "error": "already allocated",
            "detail": "order o1 already has sku LAMP allocated to batch b1",
        }
        assert self.count(db, lot_allocation) == 1

    def test_one_order_may_have_lines_of_several_skus(self, client: FlaskClient) -> None:
        self.add_batch(client, "lamps", "LAMP", 10)
        self.add_batch(client, "chairs", "CHAIR", 10)
        assert self.allocated_to(client, "o1", "LAMP", 3) == "lamps"
        assert self.allocated_to(client, "o1", "CHAIR", 3) == "chairs"

    def test_unknown_sku_is_a_bad_request(self, client: FlaskClient, db: Engine) -> None:
        response = self.allocate(client, "o1", "NOPE", 1)
        assert response.status_code == 400
        assert response.get_json() == {"error": "unknown sku", "detail": "unknown sku NOPE"}
        assert self.count(db, cust_order_line) == 0

    def test_reuses_an_unallocated_line(self, client: FlaskClient, db: Engine) -> None:
        self.add_batch(client, "b1", "LAMP", 10)
        self.allocated_to(client, "o1", "LAMP", 8)
        assert client.patch("/batches/b1", json={"qty": 0}).status_code == 200
        line_id, _, lot_ref = self.lines(db)["o1"]
        assert lot_ref is None
        self.add_batch(client, "b2", "LAMP", 5)
        assert self.allocated_to(client, "o1", "LAMP", 4) == "b2"
        assert self.lines(db) == {"o1": (line_id, 4, "b2")}


class TestDeallocate(ShopCase):
    def test_deletes_the_allocation_and_the_line(self, client: FlaskClient, db: Engine) -> None:
        self.add_batch(client, "b1", "LAMP", 10)
        self.allocated_to(client, "o1", "LAMP", 3)
        self.allocated_to(client, "o2", "LAMP", 3)
        response = client.post("/deallocate", json={"orderid": "o1", "sku": "LAMP"})
        assert response.status_code == 200
        assert response.get_json() == {"orderid": "o1", "sku": "LAMP", "batchref": "b1"}
        assert set(self.lines(db)) == {"o2"}
        assert self.count(db, lot_allocation) == 1
        assert client.get("/batches/b1").get_json()["available"] == 7

    def test_the_order_can_then_be_allocated_again(self, client: FlaskClient) -> None:
        self.add_batch(client, "b1", "LAMP", 10)
        self.allocated_to(client, "o1", "LAMP", 10)
        assert client.post("/deallocate", json={"orderid": "o1", "sku": "LAMP"}).status_code == 200
        assert self.allocated_to(client, "o1", "LAMP", 10) == "b1"

    def test_no_allocation_is_not_found(self, client: FlaskClient) -> None:
        self.add_batch(client, "b1", "LAMP", 10)
        response = client.post("/deallocate", json={"orderid": "o1", "sku": "LAMP"})
        assert response.status_code == 404
        assert response.get_json() == {
            "error": "not found",
            "detail": "order o1 has no allocation of sku LAMP",
        }

    def test_an_unallocated_line_is_not_found(self, client: FlaskClient, db: Engine) -> None:
        self.add_batch(client, "b1", "LAMP", 10)
        self.allocated_to(client, "o1", "LAMP", 5)
        client.patch("/batches/b1", json={"qty": 1})
        response = client.post("/deallocate", json={"orderid": "o1", "sku": "LAMP"})
        assert response.status_code == 404
        assert set(self.lines(db)) == {"o1"}, "the unallocated line stays"

    def test_unknown_sku_is_a_bad_request(self, client: FlaskClient) -> None:
        response = client.post("/deallocate", json={"orderid": "o1", "sku": "NOPE"})
        assert response.status_code == 400
        assert response.get_json() == {"error": "unknown sku", "detail": "unknown sku NOPE"}


class TestChangeBatchQty(ShopCase):
    def test_growing_or_keeping_enough_moves_nothing(self, client: FlaskClient) -> None:
        self.add_batch(client, "b1", "LAMP", 10)
        self.allocated_to(client, "o1", "LAMP", 6)
        for qty in (20, 6):
            response = client.patch("/batches/b1", json={"qty": qty})
            assert response.status_code == 200
            assert response.get_json() == {
                "ref": "b1",
                "qty": qty,
                "reallocated": [],
                "unallocated": [],
            }
        assert client.get("/batches/b1").get_json()["allocated"] == 6

    def test_shrinking_moves_the_most_recent_lines_elsewhere(
        self, client: FlaskClient, db: Engine
    ) -> None:
        self.add_batch(client, "b1", "LAMP", 10)
        self.add_batch(client, "later", "LAMP", 3, "2030-01-01")
        for orderid in ("o1", "o2", "o3"):
            assert self.allocated_to(client, orderid, "LAMP", 3) == "b1"
        line_ids = {orderid: line[0] for orderid, line in self.lines(db).items()}

        response = client.patch("/batches/b1", json={"qty": 4})

        assert response.status_code == 200
        # o3 then o2 leave b1; reallocated oldest first: o2 fits "later", o3 fits nowhere.
        assert response.get_json() == {
            "ref": "b1",
            "qty": 4,
            "reallocated": [{"orderid": "o2", "sku": "LAMP", "batchref": "later"}],
            "unallocated": [{"orderid": "o3", "sku": "LAMP"}],
        }
        assert self.lines(db) == {
            "o1": (line_ids["o1"], 3, "b1"),
            "o2": (line_ids["o2"], 3, "later"),
            "o3": (line_ids["o3"], 3, None),
        }
        assert client.get("/batches/b1").get_json()["qty"] == 4

    def test_a_moved_line_goes_to_the_preferred_lot_that_fits(self, client: FlaskClient) -> None:
        self.add_batch(client, "b1", "LAMP", 10)
        self.allocated_to(client, "o1", "LAMP", 1)
        self.allocated_to(client, "o2", "LAMP", 5)
        self.allocated_to(client, "o3", "LAMP", 1)
        self.add_batch(client, "early", "LAMP", 5, "2030-01-01")
        self.add_batch(client, "earliest", "LAMP", 4, "2029-01-01")
        response = client.patch("/batches/b1", json={"qty": 5})
        # o3 (1) and o2 (5) leave; o2 fits "early" only; o3 fits back into b1 itself.
        assert response.get_json()["reallocated"] == [
            {"orderid": "o2", "sku": "LAMP", "batchref": "early"},
            {"orderid": "o3", "sku": "LAMP", "batchref": "b1"},
        ]
        assert response.get_json()["unallocated"] == []

    def test_zero_writes_the_lot_off(self, client: FlaskClient, db: Engine) -> None:
        self.add_batch(client, "b1", "LAMP", 10)
        self.allocated_to(client, "o1", "LAMP", 2)
        self.allocated_to(client, "o2", "LAMP", 2)
        response = client.patch("/batches/b1", json={"qty": 0})
        assert response.status_code == 200
        assert response.get_json()["unallocated"] == [
            {"orderid": "o1", "sku": "LAMP"},
            {"orderid": "o2", "sku": "LAMP"},
        ]
        assert self.count(db, lot_allocation) == 0
        assert self.count(db, cust_order_line) == 2
        assert client.get("/batches/b1").get_json()["available"] == 0

    def test_unknown_batch_is_not_found(self, client: FlaskClient) -> None:
        response = client.patch("/batches/nope", json={"qty": 1})
        assert response.status_code == 404
        assert response.get_json() == {"error": "not found", "detail": "no batch nope"}


class TestAllocations(ShopCase):
    def test_lists_allocated_lines_by_sku_then_batchref(self, client: FlaskClient) -> None:
        self.add_batch(client, "z-lamps", "LAMP", 10)
        self.add_batch(client, "a-chairs", "chair", 10)
        self.add_batch(client, "b-chairs", "CHAIR", 10)
        self.add_batch(client, "tables", "TABLE", 1)
        self.allocated_to(client, "o1", "LAMP", 1)
        self.allocated_to(client, "o1", "chair", 1)
        self.allocated_to(client, "o1", "CHAIR", 1)
        self.allocated_to(client, "o1", "TABLE", 1)
        self.allocated_to(client, "o2", "LAMP", 1)
        client.patch("/batches/tables", json={"qty": 0})
        response = client.get("/allocations/o1")
        assert response.status_code == 200
        assert response.get_json() == [
            {"sku": "CHAIR", "batchref": "b-chairs"},
            {"sku": "LAMP", "batchref": "z-lamps"},
            {"sku": "chair", "batchref": "a-chairs"},
        ]

    def test_none_is_not_found_with_the_agreed_body(self, client: FlaskClient) -> None:
        response = client.get("/allocations/order-9")
        assert response.status_code == 404
        assert response.content_type == "application/json"
        assert response.get_json() == {
            "error": "not found",
            "detail": "no allocations for order order-9",
        }


def post_status(app: Flask, path: str, body: dict[str, Any]) -> int:
    """POST through a client of its own (one per thread) and return the status."""
    return app.test_client().post(path, json=body).status_code


class TestConcurrency(ShopCase):
    LOT_QTY = 5
    ORDERS = 16

    def test_concurrent_allocations_never_over_allocate(
        self, db_url: str, db: Engine, client: FlaskClient
    ) -> None:
        self.add_batch(client, "small", "LAMP", self.LOT_QTY)
        apps = [create_app(db_url) for _ in range(2)]  # like two server processes
        try:
            statuses = run_concurrently(
                [
                    partial(
                        post_status,
                        apps[n % 2],
                        "/allocate",
                        {"orderid": f"o{n}", "sku": "LAMP", "qty": 1},
                    )
                    for n in range(self.ORDERS)
                ]
            )
        finally:
            for app in apps:
                app.extensions[ENGINE_KEY].dispose()
        assert sorted(statuses) == [201] * self.LOT_QTY + [409] * (self.ORDERS - self.LOT_QTY)
        with db.connect() as conn:
            allocated = conn.execute(
                select(func.sum(cust_order_line.c.qty_units)).join(
                    lot_allocation, lot_allocation.c.line_id == cust_order_line.c.line_id
                )
            ).scalar_one()
        assert allocated == self.LOT_QTY
        assert self.count(db, cust_order_line) == self.LOT_QTY, "losers wrote nothing"

    def test_concurrent_first_batches_of_one_sku_share_one_product(
        self, app: Flask, db: Engine
    ) -> None:
        statuses = run_concurrently(
            [
                partial(
                    post_status,
                    app,
                    "/batches",
                    {"ref": f"b{n}", "sku": "NEW", "qty": 1, "eta": None},
                )
                for n in range(8)
            ]
        )
        assert statuses == [201] * 8
        assert self.count(db, prod_catalog) == 1
        assert self.count(db, stock_lot) == 8

    def test_concurrent_duplicate_refs_create_one_batch(self, app: Flask, db: Engine) -> None:
        statuses = run_concurrently(
            [
                partial(
                    post_status,
                    app,
                    "/batches",
                    {"ref": "same", "sku": f"SKU{n}", "qty": 1, "eta": None},
                )
                for n in range(8)
            ]
        )
        assert sorted(statuses) == [201] + [409] * 7
        assert self.count(db, stock_lot) == 1
        assert self.count(db, prod_catalog) == 1, "the losers' products were rolled back"


VALID: dict[str, dict[str, Any]] = {
    "/batches": {"ref": "b1", "sku": "LAMP", "qty": 1, "eta": None},
    "/allocate": {"orderid": "o1", "sku": "LAMP", "qty": 1},
    "/deallocate": {"orderid": "o1", "sku": "LAMP"},
}


def with_field(path: str, **changes: Any) -> dict[str, Any]:
    return {**VALID[path], **changes}


def without(path: str, field: str) -> dict[str, Any]:
    return {key: value for key, value in VALID[path].items() if key != field}


BAD_BODIES: list[tuple[str, dict[str, Any], str]] = [
    *[
        (path, without(path, field), f"missing field: {field}")
        for path in VALID
        for field in VALID[path]
    ],
    *[
        (path, with_field(path, **{field: value}), f"{field} must be a string")
        for path in VALID
        for field in VALID[path]
        if field != "qty" and field != "eta"
        for value in (None, 5, True, ["x"], {"x": 1})
    ],
    *[
        (path, with_field(path, **{field: value}), f"{field} must not be empty")
        for path in VALID
        for field in ("sku", "ref" if path == "/batches" else "orderid")
        for value in ("", "   ")
    ],
    *[
        (path, with_field(path, **{field: "x" * 65}), f"{field} must be at most 64 characters")
        for path in VALID
        for field in ("sku", "ref" if path == "/batches" else "orderid")
    ],
    *[
        (path, with_field(path, sku="LA\x00MP"), "sku must not contain control characters")
        for path in VALID
    ],
    *[
        (path, with_field(path, qty=value), "qty must be an integer")
        for path in ("/batches", "/allocate")
        for value in (True, False, "3", 3.0, 2.5, None, [3])
    ],
    *[
        (path, with_field(path, qty=value), "qty must be at least 1")
        for path in ("/batches", "/allocate")
        for value in (0, -1)
    ],
    *[
        (path, with_field(path, qty=2**31), "qty must be at most 2147483647")
        for path in ("/batches", "/allocate")
    ],
    *[
        ("/batches", with_field("/batches", eta=value), "eta must be")
        for value in ("2030/01/01", "20300101", "2030-01-01T00:00:00", "soon", "")
    ],
    *[
        ("/batches", with_field("/batches", eta=value), "eta is not a valid date")
        for value in ("2030-13-01", "2030-02-30")
    ],
    ("/batches", with_field("/batches", eta=20300101), "eta must be null or a YYYY-MM-DD string"),
]


class TestBadInput(ShopCase):
    @pytest.fixture
    def shop(self, client: FlaskClient) -> FlaskClient:
        self.add_batch(client, "existing", "LAMP", 10)
        return client

    @pytest.mark.parametrize(
        ("path", "body", "detail"),
        BAD_BODIES,
        ids=[f"{path} {body}" for path, body, _ in BAD_BODIES],
    )
    def test_bad_fields_are_bad_requests_that_write_nothing(
        self, shop: FlaskClient, db: Engine, path: str, body: dict[str, Any], detail: str
    ) -> None:
        response = shop.post(path, json=body)
        assert response.status_code == 400
        payload = response.get_json()
        assert payload["error"] == "bad request"
        assert payload["detail"].startswith(detail), payload
        assert (self.count(db, stock_lot), self.count(db, cust_order_line)) == (1, 0)

    @pytest.mark.parametrize("value", [-1, True, "0", 1.5, None])
    def test_patch_qty_must_be_a_non_negative_integer(self, shop: FlaskClient, value: Any) -> None:
        response = shop.patch("/batches/existing", json={"qty": value})
        assert response.status_code == 400
        assert response.get_json()["detail"].startswith("qty must be")
        assert shop.get("/batches/existing").get_json()["qty"] == 10

    @pytest.mark.parametrize(
        ("method", "path"),
        [
            ("POST", "/batches"),
            ("PATCH", "/batches/existing"),
            ("POST", "/allocate"),
            ("POST", "/deallocate"),
        ],
    )
    @pytest.mark.parametrize(
        ("raw", "detail"),
        [
            (b"{not json", "body is not valid JSON"),
            (b"", "body is not valid JSON"),
            (b"\xff\xfe", "body is not valid JSON"),
            (b"[" * 100_000, "body is not valid JSON"),
            (b"[1, 2]", "body must be a JSON object, got array"),
            (b'"qty"', "body must be a JSON object, got string"),
            (b"null", "body must be a JSON object, got null"),
            (b"7", "body must be a JSON object, got number"),
        ],
    )
    def test_bodies_that_are_not_json_objects(
        self, shop: FlaskClient, method: str, path: str, raw: bytes, detail: str
    ) -> None:
        response = shop.open(path, method=method, data=raw, content_type="application/json")
        assert response.status_code == 400
        assert response.content_type == "application/json"
        assert response.get_json()["error"] == "bad request"
        assert response.get_json()["detail"].startswith(detail)

    def test_unknown_fields_are_ignored(self, shop: FlaskClient) -> None:
        response = shop.post("/batches", json={**VALID["/batches"], "colour": "red"})
        assert response.status_code == 201

    def test_sixty_four_characters_are_fine(self, shop: FlaskClient) -> None:
        ref, sku = "r" * 64, "s" * 64
        self.add_batch(shop, ref, sku, 1)
        assert self.allocated_to(shop, "o" * 64, sku, 1) == ref


def padded_batch(total_size: int) -> bytes:
    """A valid POST /batches body of exactly ``total_size`` bytes."""
    head, tail = b'{"ref": "big", "sku": "LAMP", "qty": 1, "eta": null, "pad": "', b'"}'
    return head + b"x" * (total_size - len(head) - len(tail)) + tail


class TestHttpErrors(ShopCase):
    TOO_LARGE = {
        "error": "request entity too large",
        "detail": "request body is larger than 1048576 bytes",
    }

    def test_body_over_one_mib_is_too_large(self, client: FlaskClient, db: Engine) -> None:
        for size in (1024 * 1024 + 1, 3 * 1024 * 1024):
            response = client.post(
                "/batches", data=padded_batch(size), content_type="application/json"
            )
            assert response.status_code == 413, size
            assert response.get_json() == self.TOO_LARGE
        assert self.count(db, stock_lot) == 0

    @staticmethod
    def post_streamed(client: FlaskClient, body: bytes) -> TestResponse:
        """POST as a chunked body: no Content-Length; the server terminates the stream."""
        return client.post(
            "/batches",
            input_stream=io.BytesIO(body),
            content_type="application/json",
            headers={"Transfer-Encoding": "chunked"},
            environ_overrides={"wsgi.input_terminated": True},
        )

    def test_streamed_body_over_one_mib_is_too_large(self, client: FlaskClient) -> None:
        for size in (1024 * 1024 + 1, 2 * 1024 * 1024):
            response = self.post_streamed(client, padded_batch(size))
            assert response.status_code == 413, size
            assert response.get_json() == self.TOO_LARGE

    def test_a_body_of_exactly_one_mib_is_accepted(self, client: FlaskClient) -> None:
        body = padded_batch(1024 * 1024)
        response = client.post("/batches", data=body, content_type="application/json")
        assert response.status_code == 201, response.get_json()
        streamed = self.post_streamed(client, body.replace(b'"big"', b'"bi2"'))
        assert streamed.status_code == 201, streamed.get_json()

    def test_errors_are_compact_json_like_every_other_answer(self, client: FlaskClient) -> None:
        assert client.get("/nowhere").get_data() == (
            b'{"detail":"no route /nowhere","error":"not found"}\n'
        )
        assert client.get("/allocations/o1").get_data() == (
            b'{"detail":"no allocations for order o1","error":"not found"}\n'
        )

    def test_unknown_route_is_json_not_found(self, client: FlaskClient) -> None:
        response = client.get("/nowhere")
        assert response.status_code == 404
        assert response.content_type == "application/json"
        assert response.get_json() == {"error": "not found", "detail": "no route /nowhere"}

    def test_wrong_method_is_json_method_not_allowed(self, client: FlaskClient) -> None:
        response = client.delete("/batches/b1")
        assert response.status_code == 405
        assert response.get_json() == {
            "error": "method not allowed",
            "detail": "DELETE is not allowed on /batches/b1",
        }
        assert set(response.headers["Allow"].split(", ")) >= {"GET", "PATCH"}
        assert client.get("/allocate").status_code == 405
