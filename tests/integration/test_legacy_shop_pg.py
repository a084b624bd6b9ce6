"""The legacy shop on PostgreSQL: the SQLite behaviour suite again, concurrency, gunicorn."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import pytest
import requests
from flask import Flask
from sqlalchemy import Engine, create_engine, func, inspect, select

from examples.legacy_shop import TABLES
from examples.legacy_shop.schema import cust_order_line, lot_allocation, stock_lot
from tests.unit import test_legacy_shop as shop

pytestmark = pytest.mark.postgres

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def db_url(pg_url: str) -> str:
    return pg_url


class TestSchemaOnPostgres(shop.TestSchema):
    pass


class TestBatchesOnPostgres(shop.TestBatches):
    pass


class TestAllocateOnPostgres(shop.TestAllocate):
    pass


class TestDeallocateOnPostgres(shop.TestDeallocate):
    pass


class TestChangeBatchQtyOnPostgres(shop.TestChangeBatchQty):
    pass


class TestAllocationsOnPostgres(shop.TestAllocations):
    pass


class TestConcurrencyOnPostgres(shop.TestConcurrency):
    ORDERS = 24

    def test_concurrent_shrink_and_allocations_never_over_allocate(
        self, app: Flask, db: Engine
    ) -> None:
        client = app.test_client()
        self.add_batch(client, "small", "LAMP", 6)
        self.add_batch(client, "spare", "LAMP", 4, "2030-01-01")

        def allocate(orderid: str) -> int:
            return self.allocate(app.test_client(), orderid, "LAMP", 1).status_code

        def shrink() -> int:
            return app.test_client().patch("/batches/small", json={"qty": 3}).status_code

        calls = [partial(allocate, f"o{n}") for n in range(12)] + [shrink] * 3
        statuses = shop.run_concurrently(calls)
        assert set(statuses) <= {200, 201, 409}
        with db.connect() as conn:
            rows = conn.execute(
                select(
                    stock_lot.c.lot_ref,
                    stock_lot.c.qty_units,
                    func.coalesce(func.sum(cust_order_line.c.qty_units), 0).label("allocated"),
                )
                .select_from(
                    stock_lot.outerjoin(
                        lot_allocation, lot_allocation.c.lot_id == stock_lot.c.lot_id
                    ).outerjoin(
                        cust_order_line, cust_order_line.c.line_id == lot_allocation.c.line_id
                    )
                )
                .group_by(stock_lot.c.lot_ref, stock_lot.c.qty_units)
            ).all()
        assert {row.lot_ref: row.qty_units for row in rows} == {"small": 3, "spare": 4}
        assert all(row.allocated <= row.qty_units for row in rows), rows
        lines = self.lines(db).values()
        assert len(lines) == statuses.count(201), "one line per successful allocation"
        assert sum(row.allocated for row in rows) == sum(1 for line in lines if line[2])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _answer(url: str) -> requests.Response | None:
    try:
        return requests.get(url, timeout=1)
    except requests.ConnectionError:
        return None


@pytest.mark.e2e
def test_serve_runs_gunicorn_and_stops_on_sigterm(pg_url: str, tmp_path: Path) -> None:
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    script = (
        "import sys; from examples.legacy_shop.cli import legacy; "
        "legacy.main(sys.argv[1:], standalone_mode=True)"
    )
    args = ["serve", "--port", str(port), "--workers", "2", "--threads", "2"]
    log_path = tmp_path / "legacy.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", script, *args],
            cwd=ROOT,
            env={**os.environ, "LEGACY_DB_URL": pg_url},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        answer = None
        while answer is None and proc.poll() is None and time.monotonic() < deadline:
            answer = _answer(f"{base}/allocations/order-1")
            if answer is None:
                time.sleep(0.1)
        assert answer is not None, f"no answer on port {port}:\n{log_path.read_text()}"
        assert answer.status_code == 404
        assert answer.json() == {
            "error": "not found",
            "detail": "no allocations for order order-1",
        }
        created = requests.post(
            f"{base}/batches",
            json={"ref": "b1", "sku": "LAMP", "qty": 3, "eta": None},
            timeout=5,
        )
        assert created.status_code == 201

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log_path.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    engine = create_engine(pg_url)
    try:
        assert set(TABLES) <= set(inspect(engine).get_table_names())
    finally:
        engine.dispose()
