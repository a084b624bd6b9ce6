"""The shop's writes, each run inside the caller's one transaction.

Every operation that reads or changes a product's allocations first locks that product's
``prod_catalog`` row (``SELECT ... FOR UPDATE``; SQLite serialises writers with
``BEGIN IMMEDIATE`` instead), so two requests never choose a lot from the same stale
picture. ``alloc_id`` is therefore the allocation order within a product.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import case, delete, func, insert, select, update
from sqlalchemy.engine import Connection, CursorResult
from sqlalchemy.exc import IntegrityError

from examples.legacy_shop.errors import (
    AlreadyAllocated,
    DuplicateBatch,
    NotFound,
    OutOfStock,
    UnknownSku,
)
from examples.legacy_shop.schema import cust_order_line, lot_allocation, prod_catalog, stock_lot


@dataclass(frozen=True)
class Reallocated:
    orderid: str
    sku: str
    batchref: str


@dataclass(frozen=True)
class Unallocated:
    orderid: str
    sku: str


@dataclass(frozen=True)
class QtyChange:
    reallocated: list[Reallocated]
    unallocated: list[Unallocated]


def add_batch(conn: Connection, ref: str, sku: str, qty: int, eta: date | None) -> None:
    """Create lot ``ref``; its product row is created by the first batch of ``sku``."""
    if conn.scalar(select(stock_lot.c.lot_id).where(stock_lot.c.lot_ref == ref)) is not None:
        raise DuplicateBatch(f"batch {ref} already exists")
    prod_id = _ensure_product(conn, sku)
    try:
        conn.execute(
            insert(stock_lot).values(
                lot_ref=ref, prod_id=prod_id, qty_units=qty, arrival_date=eta, created_at=_now()
            )
        )
    except IntegrityError:
        raise DuplicateBatch(f"batch {ref} already exists") from None


def allocate(conn: Connection, orderid: str, sku: str, qty: int) -> str:
    """Allocate the order's line of ``sku`` to the first lot that fits; return its ref."""
    prod_id = _lock_product(conn, sku)
    line = _order_line(conn, orderid, prod_id)
    if line is not None and line.lot_ref is not None:
        raise AlreadyAllocated(
            f"order {orderid} already has sku {sku} allocated to batch {line.lot_ref}"
        )
    lot = _choose_lot(conn, prod_id, qty)
    if lot is None:
        raise OutOfStock(f"no batch of sku {sku} has {qty} units available", sku=sku)
    lot_id, lot_ref = lot
    if line is None:
        line_id = _inserted_id(
            conn.execute(
                insert(cust_order_line).values(order_no=orderid, prod_id=prod_id, qty_units=qty)
            )
        )
    else:
        line_id = line.line_id
        if line.qty_units != qty:
            conn.execute(
                update(cust_order_line)
                .where(cust_order_line.c.line_id == line_id)
                .values(qty_units=qty)
            )
    _insert_allocation(conn, lot_id, line_id)
    return lot_ref


def deallocate(conn: Connection, orderid: str, sku: str) -> str:
    """Remove the order's allocated line of ``sku``; return the lot ref it had."""
    prod_id = _lock_product(conn, sku)
    line = _order_line(conn, orderid, prod_id)
    if line is None or line.lot_ref is None:
        raise NotFound(f"order {orderid} has no allocation of sku {sku}")
    conn.execute(delete(lot_allocation).where(lot_allocation.c.alloc_id == line.alloc_id))
    conn.execute(delete(cust_order_line).where(cust_order_line.c.line_id == line.line_id))
    return line.lot_ref


def change_batch_qty(conn: Connection, ref: str, qty: int) -> QtyChange:
    """Set lot ``ref``'s quantity, then move the most recent lines that no longer fit."""
    lot = conn.execute(
        select(stock_lot.c.lot_id, stock_lot.c.prod_id).where(stock_lot.c.lot_ref == ref)
    ).one_or_none()
    if lot is None:
        raise NotFound(f"no batch {ref}")
    sku = conn.execute(
        select(prod_catalog.c.prod_code)
        .where(prod_catalog.c.prod_id == lot.prod_id)
        .with_for_update()
    ).scalar_one()
    conn.execute(update(stock_lot).where(stock_lot.c.lot_id == lot.lot_id).values(qty_units=qty))
    lines = conn.execute(
        select(
            lot_allocation.c.alloc_id,
            cust_order_line.c.line_id,
            cust_order_line.c.order_no,
            cust_order_line.c.qty_units,
        )
        .join(cust_order_line, cust_order_line.c.line_id == lot_allocation.c.line_id)
        .where(lot_allocation.c.lot_id == lot.lot_id)
        .order_by(lot_allocation.c.alloc_id.desc())
    ).all()
    allocated = sum(line.qty_units for line in lines)
    removed = []
    for line in lines:
        if allocated <= qty:
            break
        conn.execute(delete(lot_allocation).where(lot_allocation.c.alloc_id == line.alloc_id))
        allocated -= line.qty_units
        removed.append(line)
    reallocated: list[Reallocated] = []
    unallocated: list[Unallocated] = []
    for line in reversed(removed):
        target = _choose_lot(conn, lot.prod_id, line.qty_units)
        if target is None:
            unallocated.append(Unallocated(line.order_no, sku))
            continue
        _insert_allocation(conn, target[0], line.line_id)
        reallocated.append(Reallocated(line.order_no, sku, target[1]))
    return QtyChange(reallocated, unallocated)


def _lock_product(conn: Connection, sku: str) -> int:
    prod_id = conn.scalar(
        select(prod_catalog.c.prod_id).where(prod_catalog.c.prod_code == sku).with_for_update()
    )
    if prod_id is None:
        raise UnknownSku(f"unknown sku {sku}")
    return int(prod_id)


@dataclass(frozen=True)
class _Line:
    line_id: int
    qty_units: int
    alloc_id: int | None
    lot_ref: str | None


def _order_line(conn: Connection, orderid: str, prod_id: int) -> _Line | None:
    """The order's line of a product with its allocation, if any."""
    row = conn.execute(
        select(
            cust_order_line.c.line_id,
            cust_order_line.c.qty_units,
            lot_allocation.c.alloc_id,
            stock_lot.c.lot_ref,
        )
        .select_from(
            cust_order_line.outerjoin(
                lot_allocation, lot_allocation.c.line_id == cust_order_line.c.line_id
            ).outerjoin(stock_lot, stock_lot.c.lot_id == lot_allocation.c.lot_id)
        )
        .where(cust_order_line.c.order_no == orderid, cust_order_line.c.prod_id == prod_id)
    ).one_or_none()
    return None if row is None else _Line(row.line_id, row.qty_units, row.alloc_id, row.lot_ref)


def _ensure_product(conn: Connection, sku: str) -> int:
    by_code = select(prod_catalog.c.prod_id).where(prod_catalog.c.prod_code == sku)
    existing = conn.scalar(by_code)
    if existing is not None:
        return int(existing)
    try:
        with conn.begin_nested():
            return _inserted_id(conn.execute(insert(prod_catalog).values(prod_code=sku)))
    except IntegrityError:
        # A concurrent request created it first and has committed by now.
        return int(conn.execute(by_code).scalar_one())


def _choose_lot(conn: Connection, prod_id: int, qty: int) -> tuple[int, str] | None:
    """First lot with ``qty`` available: warehouse stock, then earliest arrival, then id."""
    allocated = func.coalesce(func.sum(cust_order_line.c.qty_units), 0)
    row = conn.execute(
        select(stock_lot.c.lot_id, stock_lot.c.lot_ref)
        .select_from(
            stock_lot.outerjoin(
                lot_allocation, lot_allocation.c.lot_id == stock_lot.c.lot_id
            ).outerjoin(cust_order_line, cust_order_line.c.line_id == lot_allocation.c.line_id)
        )
        .where(stock_lot.c.prod_id == prod_id)
        .group_by(
            stock_lot.c.lot_id,
            stock_lot.c.lot_ref,
            stock_lot.c.qty_units,
            stock_lot.c.arrival_date,
        )
        .having(stock_lot.c.qty_units - allocated >= qty)
        .order_by(
            case((stock_lot.c.arrival_date.is_(None), 0), else_=1),
            stock_lot.c.arrival_date,
            stock_lot.c.lot_id,
        )
        .limit(1)
    ).one_or_none()
    return None if row is None else (int(row.lot_id), str(row.lot_ref))


def _insert_allocation(conn: Connection, lot_id: int, line_id: int) -> None:
    conn.execute(insert(lot_allocation).values(lot_id=lot_id, line_id=line_id, allocated_at=_now()))


def _inserted_id(result: CursorResult[Any]) -> int:
    key = result.inserted_primary_key
    if key is None:
        raise RuntimeError("the database reported no primary key for the inserted row")
    return int(key[0])


def _now() -> datetime:
    """Naive UTC: the legacy columns are TIMESTAMP WITHOUT TIME ZONE holding UTC."""
    return datetime.now(UTC).replace(tzinfo=None)
