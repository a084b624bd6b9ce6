"""The read model: what the facade serves for ``GET /allocations/<orderid>``.

``allocations_view`` is written by the message bus's event handlers in the same
transaction as the write-model change, so a reader never sees one without the other.
:meth:`ReadModel.lag_seconds` says how far it is behind legacy.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import exc as sa_exc
from sqlalchemy import select
from sqlalchemy.engine import Engine

from new_domain.adapters import orm
from new_domain.adapters.chunks import chunked
from new_domain.adapters.database import create_engine, retry_on_disconnect
from new_domain.adapters.decisions import decision_counts
from new_domain.adapters.lag import lag_seconds
from new_domain.adapters.ownership import read_ownership
from new_domain.adapters.ownership_records import ECHO_ANOMALY, VIOLATION, unresolved_counts
from new_domain.domain.ownership import Ownership
from new_domain.ingest.ports import DecisionCount

T = TypeVar("T")
_QUERY_CANCELED = "57014"  # PostgreSQL: statement_timeout (or a cancel request)


@dataclass(frozen=True)
class Allocation:
    """One allocated line of an order."""

    sku: str
    batchref: str


class ReadTimeout(TimeoutError):
    """The read model gave up on a query after its ``time_limit``."""


# One fixed statement text on PostgreSQL: psycopg prepares it on the server after a few
# uses per connection, and no SQL is built or looked up in a cache per read.
_ALLOCATIONS_SQL = "SELECT sku, batchref FROM allocations_view WHERE orderid = %(orderid)s"


class ReadModel:
    """Queries on the read-model tables; safe to share between threads.

    ``time_limit``: the seconds after which a read gives up with :class:`ReadTimeout`,
    enforced by the database connection itself (see ``create_engine``), so a caller
    needs no thread of its own to bound a read; None when nothing bounds it.
    """

    def __init__(
        self, engine: Engine, *, owns_engine: bool = False, time_limit: float | None = None
    ) -> None:
        self.engine = engine
        self._owns_engine = owns_engine
        self.time_limit = time_limit
        self._fixed_sql = engine.dialect.name == "postgresql" and engine.dialect.driver == "psycopg"

    def allocations_for(self, orderid: str) -> list[Allocation]:
        """The allocations of ``orderid`` ordered by sku then batchref (code point order,
        whatever the database's collation); ``[]`` when there are none."""
        if self._fixed_sql:

            def query() -> list[Any]:
                with self.engine.connect() as connection:
                    cursor = connection.exec_driver_sql(_ALLOCATIONS_SQL, {"orderid": orderid})
                    return list(cursor.all())

        else:
            view = orm.allocations_view
            statement = select(view.c.sku, view.c.batchref).where(view.c.orderid == orderid)

            def query() -> list[Any]:
                with self.engine.connect() as connection:
                    return list(connection.execute(statement).all())

        rows = self._bounded(query)
        return [Allocation(sku, batchref) for sku, batchref in sorted(rows)]

    def _bounded(self, query: Callable[[], T]) -> T:
        """``query`` (retried once on a dead connection); :class:`ReadTimeout` when the
        database cancelled it or no pooled connection came within ``time_limit``."""
        try:
            return retry_on_disconnect(query)
        except sa_exc.TimeoutError as error:  # the pool's wait
            raise ReadTimeout(f"no database connection within {self.time_limit} s") from error
        except sa_exc.OperationalError as error:
            if getattr(error.orig, "sqlstate", None) == _QUERY_CANCELED:
                raise ReadTimeout(f"the read took longer than {self.time_limit} s") from error
            raise

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

        return self._bounded(query)

    def decision_parity(self) -> dict[str, DecisionCount]:
        """Decision parity per write route (``POST /allocate``, ...): how many legacy
        decisions the new rules took the same way and differently; route
        ``unclassified`` counts legacy transactions that were no one decision."""

        def query() -> dict[str, DecisionCount]:
            with self.engine.connect() as connection:
                return {count.route: count for count in decision_counts(connection)}

        return self._bounded(query)

    def write_ownership(self, group: str) -> Ownership:
        """The write group's ownership: its rule, epoch and state (``legacy``, epoch 0,
        when it never moved)."""

        def query() -> Ownership:
            with self.engine.connect() as connection:
                return read_ownership(connection, group)

        return self._bounded(query)

    def ownership_problems(self) -> dict[str, int]:
        """How many ownership violations (``ownership_violations``) and echo anomalies
        (``echo_anomalies``) nobody resolved yet: while any exists, a write group's gate
        refuses to give the new system more products."""

        def query() -> dict[str, int]:
            with self.engine.connect() as connection:
                counts = unresolved_counts(connection)
            return {
                "ownership_violations": counts[VIOLATION],
                "echo_anomalies": counts[ECHO_ANOMALY],
            }

        return self._bounded(query)

    def close(self) -> None:
        if self._owns_engine:
            self.engine.dispose()

    def __enter__(self) -> ReadModel:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def open_read_model(new_db_url: str, *, time_limit: float | None = None) -> ReadModel:
    """A read model on the new database at ``new_db_url``; ``close()`` it when done.

    With ``time_limit`` (seconds; PostgreSQL) every read is bounded by the database
    connection (statement timeout, pool wait, TCP user timeout) and fails with
    :class:`ReadTimeout`; elsewhere it is ignored and ``time_limit`` is None.
    """
    engine = create_engine(new_db_url, for_reads=True, time_limit=time_limit)
    bounded = time_limit if engine.dialect.name == "postgresql" else None
    return ReadModel(engine, owns_engine=True, time_limit=bounded)
