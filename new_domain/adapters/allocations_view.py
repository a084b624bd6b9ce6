"""The ``allocations_view`` read-model table, as written by the event handlers.

Writes share the unit of work's transaction with the write-model change that raised
the event. The SQL implementation keeps the net effect of a transaction's adds and
removes in memory and writes it just before the commit: one ``DELETE`` and one
``INSERT`` per transaction.
"""

from __future__ import annotations

import abc

from sqlalchemy import select
from sqlalchemy.engine import Connection

from new_domain.adapters import orm
from new_domain.adapters.bulk import delete_rows, insert_rows

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
    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self._pending: dict[tuple[str, str, str], bool] = {}  # key -> shown after commit?

    def add(self, orderid: str, sku: str, batchref: str) -> None:
        self._pending[(orderid, sku, batchref)] = True

    def remove(self, orderid: str, sku: str, batchref: str) -> None:
        self._pending[(orderid, sku, batchref)] = False

    def rows_for(self, orderid: str) -> list[Row]:
        self.flush()
        view = orm.allocations_view
        result = self.connection.execute(
            select(view.c.sku, view.c.batchref).where(view.c.orderid == orderid)
        )
        return sorted((sku, batchref) for sku, batchref in result)

    def flush(self) -> None:
        """Write the net effect of the adds and removes since the last flush."""
        view = orm.allocations_view
        rows: dict[bool, list[dict[str, str]]] = {True: [], False: []}
        for (orderid, sku, batchref), shown in self._pending.items():
            rows[shown].append({"orderid": orderid, "sku": sku, "batchref": batchref})
        delete_rows(self.connection, view, rows[False])
        key = ["orderid", "sku", "batchref"]
        insert_rows(self.connection, view, rows[True], key=key, on_conflict="nothing")
        self._pending.clear()
