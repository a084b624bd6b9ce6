"""Translation state of the anti-corruption layer: legacy integer keys -> our names.

Kept in the new database (``legacy_product_map``, ``legacy_lot_map``,
``legacy_line_map``, ``legacy_allocation_map``) and written in the unit of work's
transaction, so it commits with the effect of the change that taught it. The SQL
implementation reads the keys a batch of changes refers to in one query per map
(:meth:`~AbstractLegacyKeys.preload`), serves everything else from memory, and writes
what changed with one statement per map just before the commit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.engine import Connection

from new_domain.adapters import orm
from new_domain.adapters.bulk import delete_rows, fetch, insert_rows, member
from new_domain.ingest.ports import (
    ALLOCATION,
    LINE,
    LOT,
    PRODUCT,
    AbstractLegacyKeys,
    KeyIds,
    LegacyAllocation,
    LegacyLine,
    LegacyLot,
)


class SqlAlchemyLegacyKeys(AbstractLegacyKeys):
    """The maps in the new database, cached and buffered for one unit of work."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self._products: dict[int, str | None] = {}
        self._lots: dict[int, LegacyLot | None] = {}
        self._lines: dict[int, LegacyLine | None] = {}
        self._allocations: dict[int, LegacyAllocation | None] = {}
        self._dirty_allocations: set[int] = set()
        self._dirty_products: set[int] = set()
        self._dirty_lots: set[int] = set()
        self._dirty_lines: set[int] = set()

    def preload(self, ids: KeyIds) -> None:
        self._load_products(ids.get(PRODUCT, ()))
        self._load_lots(ids.get(LOT, ()))
        self._load_lines(ids.get(LINE, ()))
        self._load_allocations(ids.get(ALLOCATION, ()))

    def product_sku(self, prod_id: int) -> str | None:
        if prod_id not in self._products:
            self._load_products([prod_id])
        return self._products[prod_id]

    def remember_product(self, prod_id: int, sku: str) -> None:
        self._products[prod_id] = sku
        self._dirty_products.add(prod_id)

    def lot(self, lot_id: int) -> LegacyLot | None:
        if lot_id not in self._lots:
            self._load_lots([lot_id])
        return self._lots[lot_id]

    def remember_lot(self, lot_id: int, lot: LegacyLot) -> None:
        self._lots[lot_id] = lot
        self._dirty_lots.add(lot_id)

    def line(self, line_id: int) -> LegacyLine | None:
        if line_id not in self._lines:
            self._load_lines([line_id])
        return self._lines[line_id]

    def remember_line(self, line_id: int, line: LegacyLine) -> None:
        self._lines[line_id] = line
        self._dirty_lines.add(line_id)

    def forget_line(self, line_id: int) -> None:
        self._lines[line_id] = None
        self._dirty_lines.add(line_id)

    def allocation(self, alloc_id: int) -> LegacyAllocation | None:
        if alloc_id not in self._allocations:
            self._load_allocations([alloc_id])
        return self._allocations[alloc_id]

    def remember_allocation(self, alloc_id: int, allocation: LegacyAllocation) -> None:
        self._allocations[alloc_id] = allocation
        self._dirty_allocations.add(alloc_id)

    def forget_allocation(self, alloc_id: int) -> None:
        self._allocations[alloc_id] = None
        self._dirty_allocations.add(alloc_id)

    def flush(self) -> None:
        """Write every key remembered or forgotten since the last flush."""
        c = self.connection
        products = [{"prod_id": i, "sku": self._products[i]} for i in sorted(self._dirty_products)]
        insert_rows(c, orm.legacy_product_map, products, key=["prod_id"], on_conflict="update")
        lots = [
            {"lot_id": i, "batchref": lot.batchref, "sku": lot.sku}
            for i in sorted(self._dirty_lots)
            if (lot := self._lots[i]) is not None
        ]
        insert_rows(c, orm.legacy_lot_map, lots, key=["lot_id"], on_conflict="update")
        lines = [(i, self._lines[i]) for i in sorted(self._dirty_lines)]
        gone = [{"line_id": i} for i, line in lines if line is None]
        delete_rows(c, orm.legacy_line_map, gone)
        kept = [
            {"line_id": i, "orderid": line.orderid, "sku": line.sku, "qty": line.qty}
            for i, line in lines
            if line is not None
        ]
        insert_rows(c, orm.legacy_line_map, kept, key=["line_id"], on_conflict="update")
        allocations = [(i, self._allocations[i]) for i in sorted(self._dirty_allocations)]
        delete_rows(
            c, orm.legacy_allocation_map, [{"alloc_id": i} for i, a in allocations if a is None]
        )
        insert_rows(
            c,
            orm.legacy_allocation_map,
            [
                {"alloc_id": i, "line_id": a.line_id, "lot_id": a.lot_id}
                for i, a in allocations
                if a is not None
            ],
            key=["alloc_id"],
            on_conflict="update",
        )
        self._dirty_allocations.clear()
        self._dirty_products.clear()
        self._dirty_lots.clear()
        self._dirty_lines.clear()

    def _load_products(self, ids: Iterable[int]) -> None:
        t = orm.legacy_product_map
        self._load(
            "legacy_keys.products",
            ids,
            self._products,
            lambda: select(t.c.prod_id, t.c.sku).where(member(t.c.prod_id, "ids", self.connection)),
            lambda row: (int(row[0]), row[1]),
        )

    def _load_lots(self, ids: Iterable[int]) -> None:
        t = orm.legacy_lot_map
        self._load(
            "legacy_keys.lots",
            ids,
            self._lots,
            lambda: select(t.c.lot_id, t.c.batchref, t.c.sku).where(
                member(t.c.lot_id, "ids", self.connection)
            ),
            lambda row: (int(row[0]), LegacyLot(row[1], row[2])),
        )

    def _load_lines(self, ids: Iterable[int]) -> None:
        t = orm.legacy_line_map
        self._load(
            "legacy_keys.lines",
            ids,
            self._lines,
            lambda: select(t.c.line_id, t.c.orderid, t.c.sku, t.c.qty).where(
                member(t.c.line_id, "ids", self.connection)
            ),
            lambda row: (int(row[0]), LegacyLine(row[1], row[2], int(row[3]))),
        )

    def _load_allocations(self, ids: Iterable[int]) -> None:
        t = orm.legacy_allocation_map
        self._load(
            "legacy_keys.allocations",
            ids,
            self._allocations,
            lambda: select(t.c.alloc_id, t.c.line_id, t.c.lot_id).where(
                member(t.c.alloc_id, "ids", self.connection)
            ),
            lambda row: (int(row[0]), LegacyAllocation(int(row[1]), int(row[2]))),
        )

    def _load(
        self,
        name: str,
        ids: Iterable[int],
        known: dict[int, Any],
        query: Callable[[], Select[Any]],
        entry: Callable[[Any], tuple[int, Any]],
    ) -> None:
        wanted = _missing(ids, known)
        if not wanted:
            return
        for key in wanted:  # until the rows arrive (pipelined reads come later)
            known[key] = None
        fetch(
            self.connection,
            name,
            query,
            {"ids": wanted},
            lambda rows: known.update(entry(row) for row in rows),
        )


def _missing(ids: Iterable[int], known: Mapping[int, object]) -> list[int]:
    return sorted({i for i in ids if i not in known})
