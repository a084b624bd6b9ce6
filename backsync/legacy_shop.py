"""The legacy shop's mimic: a decision of the new system, as the shop's own code writes it.

Row for row what ``examples/legacy_shop/operations.py`` writes for the same request
(docs/write-path.md, *Back-sync*), with the decision the new system took instead of one
the shop would take:

- ``POST /batches`` (``BatchCreated``): a ``prod_catalog`` row when the sku is new, a
  ``stock_lot`` row;
- ``POST /allocate`` (``Allocated``): ``cust_order_line`` inserted (or its quantity updated
  when the order's line exists unallocated), ``lot_allocation`` inserted;
- ``POST /deallocate`` (``Deallocated``): ``lot_allocation`` and ``cust_order_line``
  deleted;
- ``PATCH /batches/<ref>`` (``BatchQuantityChanged``, then ``Deallocated``/``Allocated``):
  ``stock_lot.qty_units`` updated, the moved lines' ``lot_allocation`` rows deleted
  (newest first) and re-inserted in their new lot (oldest first); lines left unallocated
  keep their ``cust_order_line``.

Like the shop, every write first locks its product's ``prod_catalog`` row. The shop's
tables are declared here, apart from the shop's code (this module goes when back-sync
goes).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import (
    Column,
    Date,
    DateTime,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    UniqueConstraint,
    bindparam,
    delete,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Connection, CursorResult
from sqlalchemy.exc import IntegrityError

from backsync.messages import Decision, Event, MalformedMessage, integer, text
from backsync.mimic import Refused

GROUP = "allocation"
ADD_BATCH = "POST /batches"
ALLOCATE = "POST /allocate"
DEALLOCATE = "POST /deallocate"
CHANGE_QUANTITY = "PATCH /batches/<ref>"

metadata = MetaData()

prod_catalog = Table(
    "prod_catalog",
    metadata,
    Column("prod_id", Integer, primary_key=True, autoincrement=True),
    Column("prod_code", String(64), nullable=False, unique=True),
    Column("descr", String(200), nullable=True),
)

stock_lot = Table(
    "stock_lot",
    metadata,
    Column("lot_id", Integer, primary_key=True, autoincrement=True),
    Column("lot_ref", String(64), nullable=False, unique=True),
    Column("prod_id", Integer, ForeignKey("prod_catalog.prod_id"), nullable=False),
    Column("qty_units", Integer, nullable=False),
    Column("arrival_date", Date, nullable=True),
    Column("created_at", DateTime, nullable=False),
)

cust_order_line = Table(
    "cust_order_line",
    metadata,
    Column("line_id", Integer, primary_key=True, autoincrement=True),
    Column("order_no", String(64), nullable=False),
    Column("prod_id", Integer, ForeignKey("prod_catalog.prod_id"), nullable=False),
    Column("qty_units", Integer, nullable=False),
    UniqueConstraint("order_no", "prod_id"),
)

lot_allocation = Table(
    "lot_allocation",
    metadata,
    Column("alloc_id", Integer, primary_key=True, autoincrement=True),
    Column("lot_id", Integer, ForeignKey("stock_lot.lot_id"), nullable=False),
    Column("line_id", Integer, ForeignKey("cust_order_line.line_id"), nullable=False),
    Column("allocated_at", DateTime, nullable=False),
)

MAX_CODE = 64  # prod_code, lot_ref, order_no
LOCK_CHUNK = 500

# The statements every decision runs, built once (building and hashing them again for
# each decision cost back-sync about a third of its CPU per decision).
_LOCK_PRODUCT = (
    select(prod_catalog.c.prod_id)
    .where(prod_catalog.c.prod_code == bindparam("sku"))
    .with_for_update()
)
_ORDER_LINE = (
    select(
        cust_order_line.c.line_id,
        cust_order_line.c.order_no,
        cust_order_line.c.qty_units,
        lot_allocation.c.alloc_id,
        stock_lot.c.lot_ref,
    )
    .select_from(
        cust_order_line.outerjoin(
            lot_allocation, lot_allocation.c.line_id == cust_order_line.c.line_id
        ).outerjoin(stock_lot, stock_lot.c.lot_id == lot_allocation.c.lot_id)
    )
    .where(
        cust_order_line.c.order_no == bindparam("orderid"),
        cust_order_line.c.prod_id == bindparam("prod_id"),
    )
)
_LOT = select(stock_lot.c.lot_id, stock_lot.c.prod_id).where(
    stock_lot.c.lot_ref == bindparam("batchref")
)
_INSERT_LINE = insert(cust_order_line)
_INSERT_ALLOCATION = insert(lot_allocation)


class LegacyShop:
    """The :class:`~backsync.mimic.Mimic` of the legacy shop."""

    def group(self, route: str) -> str | None:
        return GROUP if route in _WRITERS else None

    def write(self, connection: Connection, decision: Decision) -> None:
        writer = _WRITERS.get(decision.route)
        if writer is None:
            raise Refused(f"the legacy shop has no write route {decision.route!r}")
        writer(connection, decision)

    def lock_products(self, connection: Connection, changing: Callable[[str], bool]) -> int:
        rows = connection.execute(
            select(prod_catalog.c.prod_id, prod_catalog.c.prod_code).order_by(
                prod_catalog.c.prod_id
            )
        ).all()
        ids = [int(row.prod_id) for row in rows if changing(str(row.prod_code))]
        for start in range(0, len(ids), LOCK_CHUNK):
            chunk = ids[start : start + LOCK_CHUNK]
            connection.execute(
                select(prod_catalog.c.prod_id)
                .where(prod_catalog.c.prod_id.in_(chunk))
                .order_by(prod_catalog.c.prod_id)
                .with_for_update()
            ).all()
        return len(ids)


LEGACY_SHOP = LegacyShop()


# -- the four write routes -------------------------------------------------------------


def add_batch(conn: Connection, decision: Decision) -> None:
    """``POST /batches``: the product row when the sku is new, then the lot."""
    [created] = _events(decision, ["BatchCreated"])
    ref, sku = _code(created, "ref"), _code(created, "sku")
    qty, eta = _quantity(created), _eta(created)
    if conn.scalar(select(stock_lot.c.lot_id).where(stock_lot.c.lot_ref == ref)) is not None:
        raise Refused(f"batch {ref} already exists in legacy")
    prod_id = _ensure_product(conn, sku)
    conn.execute(
        insert(stock_lot).values(
            lot_ref=ref, prod_id=prod_id, qty_units=qty, arrival_date=eta, created_at=_now()
        )
    )


def allocate(conn: Connection, decision: Decision) -> None:
    """``POST /allocate``: the order's line (inserted, or its quantity set), allocated."""
    [allocated] = _events(decision, ["Allocated"])
    orderid, sku = _code(allocated, "orderid"), _code(allocated, "sku")
    qty, batchref = _quantity(allocated), _code(allocated, "batchref")
    prod_id = _lock_product(conn, sku)
    line = _order_line(conn, orderid, prod_id)
    if line is not None and line.lot_ref is not None:
        raise Refused(f"order {orderid} already has sku {sku} allocated to {line.lot_ref}")
    lot_id = _lot_of(conn, batchref, prod_id)
    if line is None:
        values = {"order_no": orderid, "prod_id": prod_id, "qty_units": qty}
        line_id = _inserted_id(conn.execute(_INSERT_LINE, values))
    else:
        line_id = line.line_id
        if line.qty_units != qty:
            conn.execute(
                update(cust_order_line)
                .where(cust_order_line.c.line_id == line_id)
                .values(qty_units=qty)
            )
    _insert_allocation(conn, lot_id, line_id)


def deallocate(conn: Connection, decision: Decision) -> None:
    """``POST /deallocate``: the order's allocation and its line, deleted."""
    [gone] = _events(decision, ["Deallocated"])
    orderid, sku, batchref = _code(gone, "orderid"), _code(gone, "sku"), _code(gone, "batchref")
    prod_id = _lock_product(conn, sku)
    line = _allocated_line(conn, orderid, prod_id, sku, batchref)
    conn.execute(delete(lot_allocation).where(lot_allocation.c.alloc_id == line.alloc_id))
    conn.execute(delete(cust_order_line).where(cust_order_line.c.line_id == line.line_id))


def change_quantity(conn: Connection, decision: Decision) -> None:
    """``PATCH /batches/<ref>``: the lot's quantity, then the lines that no longer fit:
    deallocated newest first, those that fit elsewhere allocated again oldest first."""
    changed, *moves = decision.events
    if changed.type != "BatchQuantityChanged" or any(
        event.type not in ("Deallocated", "Allocated") for event in moves
    ):
        raise MalformedMessage(f"{CHANGE_QUANTITY} decision with events {_types(decision)}")
    ref, sku, qty = _code(changed, "ref"), _code(changed, "sku"), _quantity(changed)
    lot = conn.execute(
        select(stock_lot.c.lot_id, stock_lot.c.prod_id).where(stock_lot.c.lot_ref == ref)
    ).one_or_none()
    if lot is None:
        raise Refused(f"no batch {ref} in legacy")
    code = conn.execute(
        select(prod_catalog.c.prod_code)
        .where(prod_catalog.c.prod_id == lot.prod_id)
        .with_for_update()
    ).scalar_one()
    if code != sku:
        raise Refused(f"batch {ref} is of sku {code} in legacy, not {sku}")
    conn.execute(update(stock_lot).where(stock_lot.c.lot_id == lot.lot_id).values(qty_units=qty))
    removed = {
        line.order_no: line
        for line in (
            _allocated_line(conn, _code(e, "orderid"), lot.prod_id, sku, _code(e, "batchref"))
            for e in moves
            if e.type == "Deallocated"
        )
    }
    for line in sorted(removed.values(), key=lambda line: -line.alloc_id):
        conn.execute(delete(lot_allocation).where(lot_allocation.c.alloc_id == line.alloc_id))
    again = list(_reallocations(conn, moves, removed, lot.prod_id))
    for line, lot_id in sorted(again, key=lambda pair: pair[0].alloc_id):
        _insert_allocation(conn, lot_id, line.line_id)


_WRITERS: dict[str, Callable[[Connection, Decision], None]] = {
    ADD_BATCH: add_batch,
    ALLOCATE: allocate,
    DEALLOCATE: deallocate,
    CHANGE_QUANTITY: change_quantity,
}


# -- reading legacy's rows -------------------------------------------------------------


@dataclass(frozen=True)
class _Line:
    line_id: int
    order_no: str
    qty_units: int
    alloc_id: int | None
    lot_ref: str | None


@dataclass(frozen=True)
class _AllocatedLine(_Line):
    alloc_id: int
    lot_ref: str


def _order_line(conn: Connection, orderid: str, prod_id: int) -> _Line | None:
    """The order's line of a product with its allocation, if any."""
    row = conn.execute(_ORDER_LINE, {"orderid": orderid, "prod_id": prod_id}).one_or_none()
    if row is None:
        return None
    return _Line(row.line_id, row.order_no, row.qty_units, row.alloc_id, row.lot_ref)


def _allocated_line(
    conn: Connection, orderid: str, prod_id: int, sku: str, batchref: str
) -> _AllocatedLine:
    line = _order_line(conn, orderid, prod_id)
    if line is None or line.alloc_id is None or line.lot_ref is None:
        raise Refused(f"order {orderid} has no allocation of sku {sku} in legacy")
    if line.lot_ref != batchref:
        raise Refused(
            f"order {orderid}'s sku {sku} is allocated to {line.lot_ref} in legacy, not {batchref}"
        )
    return _AllocatedLine(line.line_id, line.order_no, line.qty_units, line.alloc_id, line.lot_ref)


def _reallocations(
    conn: Connection, moves: Sequence[Event], removed: dict[str, _AllocatedLine], prod_id: int
) -> Iterator[tuple[_AllocatedLine, int]]:
    for event in moves:
        if event.type != "Allocated":
            continue
        orderid = _code(event, "orderid")
        line = removed.get(orderid)
        if line is None:
            raise Refused(f"order {orderid} is allocated again but was not deallocated")
        yield line, _lot_of(conn, _code(event, "batchref"), prod_id)


def _lock_product(conn: Connection, sku: str) -> int:
    prod_id = conn.scalar(_LOCK_PRODUCT, {"sku": sku})
    if prod_id is None:
        raise Refused(f"unknown sku {sku} in legacy")
    return int(prod_id)


def _lot_of(conn: Connection, batchref: str, prod_id: int) -> int:
    lot = conn.execute(_LOT, {"batchref": batchref}).one_or_none()
    if lot is None:
        raise Refused(f"unknown batch {batchref} in legacy")
    if lot.prod_id != prod_id:
        raise Refused(f"batch {batchref} is of another product in legacy")
    return int(lot.lot_id)


def _ensure_product(conn: Connection, sku: str) -> int:
    by_code = select(prod_catalog.c.prod_id).where(prod_catalog.c.prod_code == sku)
    existing = conn.scalar(by_code)
    if existing is not None:
        return int(existing)
    try:
        with conn.begin_nested():
            return _inserted_id(conn.execute(insert(prod_catalog).values(prod_code=sku)))
    except IntegrityError:
        # a concurrent legacy request created it first and has committed by now
        return int(conn.execute(by_code).scalar_one())


def _insert_allocation(conn: Connection, lot_id: int, line_id: int) -> None:
    conn.execute(_INSERT_ALLOCATION, {"lot_id": lot_id, "line_id": line_id, "allocated_at": _now()})


def _inserted_id(result: CursorResult[Any]) -> int:
    key = result.inserted_primary_key
    if key is None:
        raise RuntimeError("the database reported no primary key for the inserted row")
    return int(key[0])


def _now() -> datetime:
    """Naive UTC, as the shop stores its times."""
    return datetime.now(UTC).replace(tzinfo=None)


# -- reading the events ----------------------------------------------------------------


def _events(decision: Decision, types: list[str]) -> list[Event]:
    if [event.type for event in decision.events] != types:
        raise MalformedMessage(f"{decision.route} decision with events {_types(decision)}")
    return list(decision.events)


def _types(decision: Decision) -> str:
    return ", ".join(event.type for event in decision.events) or "none"


def _code(event: Event, key: str) -> str:
    return text(event.data, key, MAX_CODE)


def _quantity(event: Event) -> int:
    qty = integer(event.data, "qty")
    if qty < 0:
        raise MalformedMessage(f"{event.type} with a negative qty")
    return qty


def _eta(event: Event) -> date | None:
    value = event.data.get("eta")
    if value is None:
        return None
    try:
        return date.fromisoformat(value) if isinstance(value, str) else _not_a_date(value)
    except ValueError:
        return _not_a_date(value)


def _not_a_date(value: object) -> date:
    raise MalformedMessage(f"eta {str(value)[:40]!r} is not a date (YYYY-MM-DD)")
