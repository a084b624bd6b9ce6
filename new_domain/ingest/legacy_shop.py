"""The legacy shop's anti-corruption layer: its tables and transactions, in our language.

Everything that knows the legacy shop's table and column names, or its integer keys,
lives here: a translator per captured table (with the product each of its rows is
about), the recognisers of its write decisions by transaction shape, and the write
group its products belong to (``allocation``). What a translator must remember between changes
(which sku a ``prod_id`` is, which batch a ``lot_id`` is, which order line a
``line_id`` is) goes to the legacy key maps of the unit of work, in the same
transaction as the effect. Another legacy system gets a module like this one.

An allocation row's line and lot are remembered by its ``alloc_id`` too: a delete (or an
update) whose before image holds only the key, as Debezium sends them under
PostgreSQL's default REPLICA IDENTITY, is completed from that map before anything reads
it. Updates without a before image need nothing else: every other table's translator
reads only the row after the change and its key.

Snapshot reads (op ``r``) are upserts: a row the new domain knows already is brought
in line (a lot's quantity set, an allocation moved) and nothing happens when it
already matches.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from new_domain.domain import commands, events
from new_domain.ingest.decisions import (
    Allocation,
    Deallocation,
    NewBatch,
    QuantityChange,
)
from new_domain.ingest.envelope import LegacyChange
from new_domain.ingest.ports import (
    ALLOCATION,
    LINE,
    LOT,
    PRODUCT,
    AbstractLegacyKeys,
    LegacyAllocation,
    LegacyLine,
    LegacyLot,
)
from new_domain.ingest.translators import (
    Recognizer,
    Translator,
    Translators,
    UnknownLegacyRow,
    date_column,
    int_column,
    int_value,
    shape,
    str_column,
)

if TYPE_CHECKING:
    from new_domain.service_layer.messagebus import Message


def _product_change(change: LegacyChange, keys: AbstractLegacyKeys) -> list[Message]:
    prod_id = int_column(change, change.row, "prod_id")
    known = keys.product_sku(prod_id)
    if change.op == "d":
        return [_unsupported(known, f"product {known or prod_id} deleted in legacy; kept here")]
    sku = str_column(change, change.row, "prod_code")
    if known is None:
        keys.remember_product(prod_id, sku)
        return []
    if known != sku:
        return [_unsupported(known, f"product {known} renamed to {sku} in legacy; kept as {known}")]
    return []


def _lot_change(change: LegacyChange, keys: AbstractLegacyKeys) -> list[Message]:
    row = change.row
    lot_id = int_column(change, row, "lot_id")
    known = keys.lot(lot_id)
    if change.op == "d":
        name = known.batchref if known else f"lot {lot_id}"
        return [
            _unsupported(known.sku if known else None, f"batch {name} deleted in legacy; kept here")
        ]
    qty = int_column(change, row, "qty_units")
    if known is None:
        if change.op == "u":
            raise UnknownLegacyRow(f"stock_lot {lot_id} updated but its creation was never seen")
        sku = _sku_of(change, keys, int_column(change, row, "prod_id"))
        ref = str_column(change, row, "lot_ref")
        keys.remember_lot(lot_id, LegacyLot(ref, sku))
        eta = date_column(change, row, "arrival_date")
        return [commands.CreateBatch(ref, sku, qty, eta, creation_number=lot_id)]
    messages: list[Message] = []
    before = change.before
    if before is not None and change.op == "u":
        for column in ("lot_ref", "prod_id", "arrival_date"):
            if column in before and before.get(column) != row.get(column):
                messages.append(
                    _unsupported(
                        known.sku,
                        f"batch {known.batchref}: {column} changed in legacy "
                        f"from {before.get(column)!r} to {row.get(column)!r}; not mirrored",
                    )
                )
        if "qty_units" in before and int_column(change, before, "qty_units") == qty:
            return messages
    messages.append(commands.ChangeBatchQuantity(known.batchref, qty))
    return messages


def _line_change(change: LegacyChange, keys: AbstractLegacyKeys) -> list[Message]:
    line_id = int_column(change, change.row, "line_id")
    if change.op == "d":
        keys.forget_line(line_id)
        return []
    row = change.row
    sku = _sku_of(change, keys, int_column(change, row, "prod_id"))
    keys.remember_line(
        line_id,
        LegacyLine(str_column(change, row, "order_no"), sku, int_column(change, row, "qty_units")),
    )
    return []


def _allocation_change(change: LegacyChange, keys: AbstractLegacyKeys) -> list[Message]:
    alloc_id = int_value(change.row, "alloc_id")
    if change.op == "d":
        message = _deallocation(change, keys, change.row)
        if alloc_id is not None:
            keys.forget_allocation(alloc_id)
        return [message]
    messages: list[Message]
    if change.op == "r":
        line, lot = _line_of(change, keys, change.row), _lot_of(change, keys, change.row)
        messages = [commands.SyncAllocation(line.orderid, line.sku, line.qty, lot.batchref)]
    elif change.op == "u":
        before = change.before
        if before is None or any(k not in before for k in ("lot_id", "line_id")):
            raise UnknownLegacyRow(
                f"lot_allocation {alloc_id} updated but its creation was never seen"
            )
        if all(before.get(k) == change.row.get(k) for k in ("lot_id", "line_id")):
            messages = []
        else:
            messages = [
                _deallocation(change, keys, before),
                _allocation(change, keys, change.row),
            ]
    else:
        messages = [_allocation(change, keys, change.row)]
    if alloc_id is not None:
        keys.remember_allocation(
            alloc_id,
            LegacyAllocation(
                int_column(change, change.row, "line_id"), int_column(change, change.row, "lot_id")
            ),
        )
    return messages


def _complete_allocation(change: LegacyChange, keys: AbstractLegacyKeys) -> LegacyChange:
    """An allocation's update or delete with the before image the key map knows: the
    line and lot of the row as it was (Debezium sends only the key of the row before,
    other columns zero-filled, unless the table has REPLICA IDENTITY FULL)."""
    image = change.before if change.before is not None else change.after
    alloc_id = None if image is None else int_value(image, "alloc_id")
    known = None if alloc_id is None else keys.allocation(alloc_id)
    if known is None:
        return change
    before = {**(change.before or {}), "alloc_id": alloc_id}
    before.update(line_id=known.line_id, lot_id=known.lot_id)
    return replace(change, before=before)


def _allocation(
    change: LegacyChange, keys: AbstractLegacyKeys, row: Mapping[str, Any]
) -> commands.MirrorAllocation:
    line, lot = _line_of(change, keys, row), _lot_of(change, keys, row)
    return commands.MirrorAllocation(line.orderid, line.sku, line.qty, lot.batchref)


def _deallocation(
    change: LegacyChange, keys: AbstractLegacyKeys, row: Mapping[str, Any]
) -> commands.MirrorDeallocation:
    line, lot = _line_of(change, keys, row), _lot_of(change, keys, row)
    return commands.MirrorDeallocation(line.orderid, line.sku, lot.batchref)


def _line_of(change: LegacyChange, keys: AbstractLegacyKeys, row: Mapping[str, Any]) -> LegacyLine:
    line_id = int_column(change, row, "line_id")
    line = keys.line(line_id)
    if line is None:
        raise UnknownLegacyRow(f"{change.table} refers to cust_order_line {line_id}, never seen")
    return line


def _lot_of(change: LegacyChange, keys: AbstractLegacyKeys, row: Mapping[str, Any]) -> LegacyLot:
    lot_id = int_column(change, row, "lot_id")
    lot = keys.lot(lot_id)
    if lot is None:
        raise UnknownLegacyRow(f"{change.table} refers to stock_lot {lot_id}, never seen")
    return lot


def _sku_of(change: LegacyChange, keys: AbstractLegacyKeys, prod_id: int) -> str:
    sku = keys.product_sku(prod_id)
    if sku is None:
        raise UnknownLegacyRow(f"{change.table} refers to prod_catalog {prod_id}, never seen")
    return sku


def _unsupported(sku: str | None, detail: str) -> events.LegacyInvariantViolated:
    return events.LegacyInvariantViolated("unsupported_change", sku, detail)


# -- which product a row is about (for the ownership guard) ------------------------------


def _product_sku(row: Mapping[str, Any], keys: AbstractLegacyKeys) -> str | None:
    prod_id = int_value(row, "prod_id")
    known = None if prod_id is None else keys.product_sku(prod_id)
    code = row.get("prod_code")
    return known or (code if isinstance(code, str) and code else None)


def _by_product(row: Mapping[str, Any], keys: AbstractLegacyKeys) -> str | None:
    prod_id = int_value(row, "prod_id")
    return None if prod_id is None else keys.product_sku(prod_id)


def _lot_sku(row: Mapping[str, Any], keys: AbstractLegacyKeys) -> str | None:
    sku = _by_product(row, keys)
    lot_id = int_value(row, "lot_id")
    lot = None if sku is not None or lot_id is None else keys.lot(lot_id)
    return lot.sku if lot is not None else sku


def _allocation_sku(row: Mapping[str, Any], keys: AbstractLegacyKeys) -> str | None:
    lot_id, line_id = int_value(row, "lot_id"), int_value(row, "line_id")
    lot = None if lot_id is None else keys.lot(lot_id)
    if lot is not None:
        return lot.sku
    line = None if line_id is None else keys.line(line_id)
    return None if line is None else line.sku


# -- write decisions, by transaction shape ------------------------------------------------


def _new_batch(tx: Sequence[LegacyChange], keys: AbstractLegacyKeys) -> NewBatch | None:
    """POST /batches: a lot created (with its product row when the sku is new)."""
    [lot] = [c for c in tx if c.table == "stock_lot"]
    products = [c for c in tx if c.table == "prod_catalog"]
    if len(products) > 1:
        return None
    prod_id = int_column(lot, lot.row, "prod_id")
    if products:
        sku = str_column(products[0], products[0].row, "prod_code")
    else:
        sku = _sku_of(lot, keys, prod_id)
    return NewBatch(str_column(lot, lot.row, "lot_ref"), sku)


def _allocation_decision(tx: Sequence[LegacyChange], keys: AbstractLegacyKeys) -> Allocation | None:
    """POST /allocate: a line allocated to a lot (the line created or its quantity set in
    the same transaction, or an unallocated line of the order allocated again)."""
    allocations = [c for c in tx if c.table == "lot_allocation"]
    lines = [c for c in tx if c.table == "cust_order_line"]
    if len(allocations) != 1 or len(lines) > 1:
        return None
    [allocation] = allocations
    line_id = int_column(allocation, allocation.row, "line_id")
    if lines:
        row = lines[0].row
        if int_column(lines[0], row, "line_id") != line_id:
            return None
        sku = _sku_of(lines[0], keys, int_column(lines[0], row, "prod_id"))
        line = LegacyLine(
            str_column(lines[0], row, "order_no"), sku, int_column(lines[0], row, "qty_units")
        )
    else:
        line = _line_of(allocation, keys, allocation.row)
    lot = _lot_of(allocation, keys, allocation.row)
    return Allocation(line.orderid, line.sku, line.qty, lot.batchref)


def _deallocation_decision(
    tx: Sequence[LegacyChange], keys: AbstractLegacyKeys
) -> Deallocation | None:
    """POST /deallocate: an allocation and its order line deleted together."""
    if len(tx) != 2:
        return None
    allocation = next(c for c in tx if c.table == "lot_allocation")
    removed = next(c for c in tx if c.table == "cust_order_line")
    if int_column(allocation, allocation.row, "line_id") != int_column(
        removed, removed.row, "line_id"
    ):
        return None
    line = _line_of(allocation, keys, allocation.row)
    return Deallocation(line.orderid, line.sku, _lot_of(allocation, keys, allocation.row).batchref)


def _quantity_decision(
    tx: Sequence[LegacyChange], keys: AbstractLegacyKeys
) -> QuantityChange | None:
    """PATCH /batches/<ref>: a lot's quantity set, the newest lines that no longer fit
    deallocated, and those that fit elsewhere allocated again."""
    [lot_change] = [c for c in tx if c.table == "stock_lot"]
    lot_id = int_column(lot_change, lot_change.row, "lot_id")
    before = lot_change.before
    if before is not None and any(
        column in before and before.get(column) != lot_change.row.get(column)
        for column in ("lot_ref", "prod_id", "arrival_date")
    ):
        return None  # not what the route changes
    lot = _lot_of(lot_change, keys, lot_change.row)
    removed = [c for c in tx if c.table == "lot_allocation" and c.op == "d"]
    added = {
        int_column(c, c.row, "line_id"): _lot_of(c, keys, c.row).batchref
        for c in tx
        if c.table == "lot_allocation" and c.op == "c"
    }
    moved: set[tuple[str, str | None]] = set()
    for change in removed:
        if int_column(change, change.row, "lot_id") != lot_id:
            return None
        line_id = int_column(change, change.row, "line_id")
        moved.add((_line_of(change, keys, change.row).orderid, added.pop(line_id, None)))
    if added:
        return None  # an allocation of a line that was not moved: no PATCH does that
    qty = int_column(lot_change, lot_change.row, "qty_units")
    return QuantityChange(lot.batchref, lot.sku, qty, frozenset(moved))


ALLOCATION_GROUP = "allocation"
"""The write group of the legacy shop's four write routes (docs/write-path.md)."""

LEGACY_SHOP = Translators(
    Translator("prod_catalog", _product_change, keys={"prod_id": PRODUCT}, sku=_product_sku),
    Translator("stock_lot", _lot_change, keys={"lot_id": LOT, "prod_id": PRODUCT}, sku=_lot_sku),
    Translator(
        "cust_order_line",
        _line_change,
        keys={"line_id": LINE, "prod_id": PRODUCT},
        sku=_by_product,
    ),
    Translator(
        "lot_allocation",
        _allocation_change,
        keys={"lot_id": LOT, "line_id": LINE, "alloc_id": ALLOCATION},
        sku=_allocation_sku,
        complete=_complete_allocation,
    ),
    write_group=ALLOCATION_GROUP,
    recognizers=[
        Recognizer(
            frozenset({shape("stock_lot.c"), shape("prod_catalog.c", "stock_lot.c")}), _new_batch
        ),
        Recognizer(
            frozenset(
                {
                    shape("lot_allocation.c"),
                    shape("cust_order_line.c", "lot_allocation.c"),
                    shape("cust_order_line.u", "lot_allocation.c"),
                }
            ),
            _allocation_decision,
        ),
        Recognizer(
            frozenset({shape("lot_allocation.d", "cust_order_line.d")}), _deallocation_decision
        ),
        Recognizer(
            frozenset(
                {
                    shape("stock_lot.u"),
                    shape("stock_lot.u", "lot_allocation.d"),
                    shape("stock_lot.u", "lot_allocation.d", "lot_allocation.c"),
                }
            ),
            _quantity_decision,
        ),
    ],
)
"""The legacy shop's captured tables, its four write routes and their write group."""
