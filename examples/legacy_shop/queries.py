"""The shop's reads."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from sqlalchemy import func, select
from sqlalchemy.engine import Connection

from examples.legacy_shop.schema import cust_order_line, lot_allocation, prod_catalog, stock_lot


@dataclass(frozen=True)
class BatchView:
    ref: str
    sku: str
    qty: int
    eta: date | None
    allocated: int

    @property
    def available(self) -> int:
        return self.qty - self.allocated


@dataclass(frozen=True, order=True)
class AllocationView:
    sku: str
    batchref: str


def batch(conn: Connection, ref: str) -> BatchView | None:
    """Lot ``ref`` with its allocated quantity, or None."""
    allocated = (
        select(func.coalesce(func.sum(cust_order_line.c.qty_units), 0))
        .select_from(
            lot_allocation.join(
                cust_order_line, cust_order_line.c.line_id == lot_allocation.c.line_id
            )
        )
        .where(lot_allocation.c.lot_id == stock_lot.c.lot_id)
        .scalar_subquery()
    )
    row = conn.execute(
        select(
            stock_lot.c.lot_ref,
            prod_catalog.c.prod_code,
            stock_lot.c.qty_units,
            stock_lot.c.arrival_date,
            allocated.label("allocated"),
        )
        .join(prod_catalog, prod_catalog.c.prod_id == stock_lot.c.prod_id)
        .where(stock_lot.c.lot_ref == ref)
    ).one_or_none()
    if row is None:
        return None
    return BatchView(
        row.lot_ref, row.prod_code, row.qty_units, row.arrival_date, int(row.allocated)
    )


def allocations_for(conn: Connection, orderid: str) -> list[AllocationView]:
    """The order's allocated lines, ordered by sku then batch ref.

    Sorted here by code point rather than by the database's collation, so the order is the
    same on every database (a locale collation would put ``B`` between ``a`` and ``c``).
    """
    rows = conn.execute(
        select(prod_catalog.c.prod_code, stock_lot.c.lot_ref)
        .select_from(
            cust_order_line.join(
                lot_allocation, lot_allocation.c.line_id == cust_order_line.c.line_id
            )
            .join(stock_lot, stock_lot.c.lot_id == lot_allocation.c.lot_id)
            .join(prod_catalog, prod_catalog.c.prod_id == cust_order_line.c.prod_id)
        )
        .where(cust_order_line.c.order_no == orderid)
    ).all()
    return sorted(AllocationView(row.prod_code, row.lot_ref) for row in rows)
