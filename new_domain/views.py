"""The read model: what the facade serves for ``GET /allocations/<orderid>``.

``allocations_view`` is written by the message bus's event handlers in the same
transaction as the write-model change, so a reader never sees one without the other.
:meth:`ReadModel.lag_seconds` says how far it is behind legacy.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Engine

from new_domain.adapters import orm
from new_domain.adapters.chunks import chunked
from new_domain.adapters.database import create_engine, retry_on_disconnect
from new_domain.adapters.progress import lag_seconds


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

        def query() -> list[Any]:
            with self.engine.connect() as connection:
                return list(connection.execute(statement).all())

        rows = retry_on_disconnect(query)
        return [Allocation(sku, batchref) for sku, batchref in sorted(rows)]

    def allocations_by_order(self, orderids: Collection[str]) -> dict[str, list[Allocation]]:
        """:meth:`allocations_for` of many orders at once; orders without any are left out."""
        view = orm.allocations_view
        found: dict[str, list[tuple[str, str]]] = {}
        with self.engine.connect() as connection:
            for chunk in chunked(sorted(set(orderids))):
                rows = connection.execute(
                    select(view.c.orderid, view.c.sku, view.c.batchref).where(
                        view.c.orderid.in_(chunk)
                    )
                )
                for orderid, sku, batchref in rows:
                    found.setdefault(orderid, []).append((sku, batchref))
        return {o: [Allocation(s, b) for s, b in sorted(rows)] for o, rows in found.items()}

    def orderids(self) -> list[str]:
        """Every order with at least one allocation, sorted."""
        view = orm.allocations_view
        with self.engine.connect() as connection:
            return sorted(connection.scalars(select(view.c.orderid).distinct()))

    def lag_seconds(self) -> float | None:
        """End-to-end lag: how many seconds of legacy history the read model may be
        missing (now minus the newest legacy commit or bridge heartbeat the consumer
        has applied everything before); None before the consumer recorded anything.

        While legacy is idle the bridge's heartbeats keep this below its heartbeat
        interval; a stopped consumer or bridge makes it grow.
        """
        def query() -> float | None:
            with self.engine.connect() as connection:
                return lag_seconds(connection)

        return retry_on_disconnect(query)

    def close(self) -> None:
        if self._owns_engine:
            self.engine.dispose()

    def __enter__(self) -> ReadModel:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def open_read_model(new_db_url: str) -> ReadModel:
    """A read model on the new database at ``new_db_url``; ``close()`` it when done."""
    return ReadModel(create_engine(new_db_url, for_reads=True), owns_engine=True)
