"""The read model: what the facade serves for ``GET /allocations/<orderid>``.

``allocations_view`` is written by the message bus's event handlers in the same
transaction as the write-model change, so a reader never sees one without the other.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.engine import Engine

from new_domain.adapters import orm
from new_domain.adapters.database import create_engine


@dataclass(frozen=True)
class Allocation:
    """One allocated line of an order."""

    sku: str
    batchref: str


class ReadModel:
    """Queries on the read-model tables; safe to share between threads."""

    def __init__(self, engine: Engine, *, owns_engine: bool = False) -> None:
        self.engine = engine
        self._owns_engine = owns_engine

    def allocations_for(self, orderid: str) -> list[Allocation]:
        """The allocations of ``orderid`` ordered by sku then batchref (code point order,
        whatever the database's collation); ``[]`` when there are none."""
        view = orm.allocations_view
        statement = select(view.c.sku, view.c.batchref).where(view.c.orderid == orderid)
        with self.engine.connect() as connection:
            rows = connection.execute(statement).all()
        return [Allocation(sku, batchref) for sku, batchref in sorted(rows)]

    def close(self) -> None:
        if self._owns_engine:
            self.engine.dispose()

    def __enter__(self) -> ReadModel:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def open_read_model(new_db_url: str) -> ReadModel:
    """A read model on the new database at ``new_db_url``; ``close()`` it when done."""
    return ReadModel(create_engine(new_db_url), owns_engine=True)
