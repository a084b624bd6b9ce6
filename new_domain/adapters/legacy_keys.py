"""Translation state of the anti-corruption layer: legacy integer keys -> our names.

Kept in the new database (``legacy_product_map``, ``legacy_lot_map``,
``legacy_line_map``) and written through the unit of work's session, so it commits
with the effect of the change that taught it.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

from sqlalchemy import Table, delete, select
from sqlalchemy.orm import Session

from new_domain.adapters import orm
from new_domain.adapters.upsert import upsert


@dataclass(frozen=True)
class LegacyLot:
    batchref: str
    sku: str


@dataclass(frozen=True)
class LegacyLine:
    orderid: str
    sku: str
    qty: int


class AbstractLegacyKeys(abc.ABC):
    """What the ACL remembers about legacy rows it has seen."""

    @abc.abstractmethod
    def product_sku(self, prod_id: int) -> str | None: ...

    @abc.abstractmethod
    def remember_product(self, prod_id: int, sku: str) -> None: ...

    @abc.abstractmethod
    def lot(self, lot_id: int) -> LegacyLot | None: ...

    @abc.abstractmethod
    def remember_lot(self, lot_id: int, lot: LegacyLot) -> None: ...

    @abc.abstractmethod
    def line(self, line_id: int) -> LegacyLine | None: ...

    @abc.abstractmethod
    def remember_line(self, line_id: int, line: LegacyLine) -> None: ...

    @abc.abstractmethod
    def forget_line(self, line_id: int) -> None: ...


class SqlAlchemyLegacyKeys(AbstractLegacyKeys):
    """The maps in the new database, cached for the life of one unit of work."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self._products: dict[int, str | None] = {}
        self._lots: dict[int, LegacyLot | None] = {}
        self._lines: dict[int, LegacyLine | None] = {}

    def product_sku(self, prod_id: int) -> str | None:
        if prod_id not in self._products:
            table = orm.legacy_product_map
            self._products[prod_id] = self.session.connection().scalar(
                select(table.c.sku).where(table.c.prod_id == prod_id)
            )
        return self._products[prod_id]

    def remember_product(self, prod_id: int, sku: str) -> None:
        self._upsert(orm.legacy_product_map, "prod_id", prod_id, {"sku": sku})
        self._products[prod_id] = sku

    def lot(self, lot_id: int) -> LegacyLot | None:
        if lot_id not in self._lots:
            table = orm.legacy_lot_map
            row = (
                self.session.connection()
                .execute(select(table.c.batchref, table.c.sku).where(table.c.lot_id == lot_id))
                .one_or_none()
            )
            self._lots[lot_id] = LegacyLot(row.batchref, row.sku) if row else None
        return self._lots[lot_id]

    def remember_lot(self, lot_id: int, lot: LegacyLot) -> None:
        self._upsert(
            orm.legacy_lot_map, "lot_id", lot_id, {"batchref": lot.batchref, "sku": lot.sku}
        )
        self._lots[lot_id] = lot

    def line(self, line_id: int) -> LegacyLine | None:
        if line_id not in self._lines:
            table = orm.legacy_line_map
            row = (
                self.session.connection()
                .execute(
                    select(table.c.orderid, table.c.sku, table.c.qty).where(
                        table.c.line_id == line_id
                    )
                )
                .one_or_none()
            )
            self._lines[line_id] = LegacyLine(row.orderid, row.sku, row.qty) if row else None
        return self._lines[line_id]

    def remember_line(self, line_id: int, line: LegacyLine) -> None:
        self._upsert(
            orm.legacy_line_map,
            "line_id",
            line_id,
            {"orderid": line.orderid, "sku": line.sku, "qty": line.qty},
        )
        self._lines[line_id] = line

    def forget_line(self, line_id: int) -> None:
        table = orm.legacy_line_map
        self.session.connection().execute(delete(table).where(table.c.line_id == line_id))
        self._lines[line_id] = None

    def _upsert(self, table: Table, key: str, value: int, fields: dict[str, object]) -> None:
        upsert(self.session.connection(), table, {key: value, **fields}, [key])


class InMemoryLegacyKeys(AbstractLegacyKeys):
    def __init__(self) -> None:
        self.products: dict[int, str] = {}
        self.lots: dict[int, LegacyLot] = {}
        self.lines: dict[int, LegacyLine] = {}

    def product_sku(self, prod_id: int) -> str | None:
        return self.products.get(prod_id)

    def remember_product(self, prod_id: int, sku: str) -> None:
        self.products[prod_id] = sku

    def lot(self, lot_id: int) -> LegacyLot | None:
        return self.lots.get(lot_id)

    def remember_lot(self, lot_id: int, lot: LegacyLot) -> None:
        self.lots[lot_id] = lot

    def line(self, line_id: int) -> LegacyLine | None:
        return self.lines.get(line_id)

    def remember_line(self, line_id: int, line: LegacyLine) -> None:
        self.lines[line_id] = line

    def forget_line(self, line_id: int) -> None:
        self.lines.pop(line_id, None)
