"""The ``allocations_view`` read-model table, as written by the event handlers.

Writes go through the unit of work's session, so they share its transaction with
the write-model change that raised the event.
"""

from __future__ import annotations

import abc

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from new_domain.adapters import orm
from new_domain.adapters.upsert import upsert

Row = tuple[str, str]
"""``(sku, batchref)`` of one allocation of an order."""


class AbstractAllocationsView(abc.ABC):
    @abc.abstractmethod
    def add(self, orderid: str, sku: str, batchref: str) -> None:
        """Show ``orderid``'s line of ``sku`` as allocated to ``batchref`` (idempotent)."""

    @abc.abstractmethod
    def remove(self, orderid: str, sku: str, batchref: str) -> None:
        """Stop showing that allocation (no error when it is not shown)."""

    @abc.abstractmethod
    def rows_for(self, orderid: str) -> list[Row]:
        """``(sku, batchref)`` pairs of ``orderid``, sorted."""


class SqlAlchemyAllocationsView(AbstractAllocationsView):
    def __init__(self, session: Session) -> None:
        self.session = session

    def add(self, orderid: str, sku: str, batchref: str) -> None:
        row = {"orderid": orderid, "sku": sku, "batchref": batchref}
        upsert(
            self.session.connection(), orm.allocations_view, row, list(row), update_existing=False
        )

    def remove(self, orderid: str, sku: str, batchref: str) -> None:
        view = orm.allocations_view
        self.session.connection().execute(
            delete(view).where(
                view.c.orderid == orderid, view.c.sku == sku, view.c.batchref == batchref
            )
        )

    def rows_for(self, orderid: str) -> list[Row]:
        view = orm.allocations_view
        result = self.session.connection().execute(
            select(view.c.sku, view.c.batchref).where(view.c.orderid == orderid)
        )
        return sorted((sku, batchref) for sku, batchref in result)


class InMemoryAllocationsView(AbstractAllocationsView):
    def __init__(self) -> None:
        self.rows: set[tuple[str, str, str]] = set()

    def add(self, orderid: str, sku: str, batchref: str) -> None:
        self.rows.add((orderid, sku, batchref))

    def remove(self, orderid: str, sku: str, batchref: str) -> None:
        self.rows.discard((orderid, sku, batchref))

    def rows_for(self, orderid: str) -> list[Row]:
        return sorted((sku, ref) for order, sku, ref in self.rows if order == orderid)
