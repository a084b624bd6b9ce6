"""Bulk data for the benchmarks, written with set-based SQL (never through the APIs).

One deterministic shape is written into the legacy shop's tables and, for the read path,
the same allocations into the new domain's tables: line ``g`` (1-based) belongs to
order ``ceil(g / lines_per_order)``, product ``(g - 1) % products + 1`` and one of that
product's lots. Ids are generated, so the databases must be fresh.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from sqlalchemy import create_engine

from examples.legacy_shop.schema import create_schema

DEFAULT_CHUNK = 500


@dataclass(frozen=True)
class Shape:
    """How many products, lots per product and order lines (each line allocated)."""

    products: int
    lots_per_product: int
    lines: int
    lines_per_order: int = 1

    def __post_init__(self) -> None:
        if self.lines_per_order > 1 and self.products < self.lines_per_order:
            raise ValueError("an order's lines need distinct products")

    @property
    def lots(self) -> int:
        return self.products * self.lots_per_product

    @property
    def orders(self) -> int:
        return -(-self.lines // self.lines_per_order)

    @property
    def rows(self) -> int:
        """Legacy rows: products, lots, order lines and their allocations."""
        return self.products + self.lots + 2 * self.lines


def order_id(n: int) -> str:
    return f"order-{n:08d}"


def _sku(expr: str) -> str:
    return f"'SKU-' || lpad(({expr})::text, 6, '0')"


def _lot_ref(expr: str) -> str:
    return f"'LOT-' || lpad(({expr})::text, 8, '0')"


def _order(expr: str) -> str:
    return f"'order-' || lpad(({expr})::text, 8, '0')"


class _Formulas:
    def __init__(self, shape: Shape) -> None:
        p, lpp = shape.products, shape.lots_per_product
        self.line_product = f"((g - 1) % {p}) + 1"
        self.line_order = f"((g - 1) / {shape.lines_per_order}) + 1"
        self.line_lot = f"((g - 1) % {p}) * {lpp} + (g % {lpp}) + 1"
        self.line_qty = "1 + g % 5"
        self.lot_product = f"((g - 1) / {lpp}) + 1"
        self.lot_eta = "CASE WHEN g % 2 = 0 THEN DATE '2027-01-01' + (g % 365) END"


def create_legacy_schema(url: str) -> None:
    """The legacy shop's tables, as the shop creates them."""
    engine = create_engine(url)
    try:
        create_schema(engine)
    finally:
        engine.dispose()


def seed_legacy(dsn: str, shape: Shape, chunk: int | None = None) -> None:
    """Write ``shape`` into the legacy tables; lines and their allocations go in
    transactions of ``chunk`` orders' lines (all at once when None), each chunk's lines
    before its allocations, as the shop writes them."""
    f = _Formulas(shape)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            f"INSERT INTO prod_catalog (prod_code, descr) "
            f"SELECT {_sku('g')}, 'product ' || g FROM generate_series(1, {shape.products}) g"
        )
        conn.execute(
            f"INSERT INTO stock_lot (lot_ref, prod_id, qty_units, arrival_date, created_at) "
            f"SELECT {_lot_ref('g')}, {f.lot_product}, 1000000, {f.lot_eta}, now() "
            f"FROM generate_series(1, {shape.lots}) g"
        )
        step = chunk or shape.lines
        for low in range(1, shape.lines + 1, max(step, 1)):
            high = min(low + step - 1, shape.lines)
            with conn.transaction():
                conn.execute(
                    f"INSERT INTO cust_order_line (order_no, prod_id, qty_units) "
                    f"SELECT {_order(f.line_order)}, {f.line_product}, {f.line_qty} "
                    f"FROM generate_series({low}, {high}) g"
                )
                conn.execute(
                    f"INSERT INTO lot_allocation (lot_id, line_id, allocated_at) "
                    f"SELECT {f.line_lot}, g, now() FROM generate_series({low}, {high}) g"
                )
        row = conn.execute("SELECT coalesce(max(line_id), 0) FROM cust_order_line").fetchone()
        if row is None or row[0] != shape.lines:
            raise RuntimeError("the legacy database was not fresh: line ids do not match")


def seed_new_domain(dsn: str, shape: Shape) -> None:
    """Write the same allocations into the new domain's write model and read model."""
    f = _Formulas(shape)
    with psycopg.connect(dsn) as conn:
        conn.execute(
            f"INSERT INTO products (sku, version_number) "
            f"SELECT {_sku('g')}, 1 FROM generate_series(1, {shape.products}) g"
        )
        conn.execute(
            f"INSERT INTO batches (id, reference, sku, purchased_quantity, eta) "
            f"SELECT g, {_lot_ref('g')}, {_sku(f.lot_product)}, 1000000, {f.lot_eta} "
            f"FROM generate_series(1, {shape.lots}) g"
        )
        conn.execute(
            f"INSERT INTO batch_allocations (batchref, orderid, sku, qty) "
            f"SELECT {_lot_ref(f.line_lot)}, {_order(f.line_order)}, "
            f"min({_sku(f.line_product)}), sum({f.line_qty}) "
            f"FROM generate_series(1, {shape.lines}) g GROUP BY 1, 2"
        )
        conn.execute(
            "UPDATE batches SET allocated_quantity = a.qty FROM "
            "(SELECT batchref, sum(qty) AS qty FROM batch_allocations GROUP BY batchref) a "
            "WHERE a.batchref = batches.reference"
        )
        conn.execute(
            f"INSERT INTO allocations_view (orderid, sku, batchref) "
            f"SELECT {_order(f.line_order)}, {_sku(f.line_product)}, {_lot_ref(f.line_lot)} "
            f"FROM generate_series(1, {shape.lines}) g"
        )
        conn.execute(
            "SELECT setval(pg_get_serial_sequence('batches', 'id'), (SELECT max(id) FROM batches))"
        )


def vacuum_analyze(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
