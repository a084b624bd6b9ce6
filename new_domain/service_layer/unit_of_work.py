"""Units of work: one database transaction, and the repositories that live in it.

One unit of work serves one thread. Each outermost ``with uow:`` opens a fresh
transaction; a nested ``with uow:`` joins it, and there ``commit()`` does nothing: the
outermost block commits (writing everything at once) or rolls back everything. That
is how the message bus applies a command and all the events it raised in one
transaction, and how the consumer applies a whole batch of legacy changes in one
transaction, while each handler keeps the plain ``with uow: ...; uow.commit()`` shape.

The SQL unit of work buffers writes in its adapters and sends them just before the
commit, one statement per kind of row; callbacks registered with :meth:`after_commit`
run once the commit succeeded (logging and metrics that must not count rolled-back
work).
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from types import TracebackType
from typing import Self

from sqlalchemy import String, bindparam, func, select
from sqlalchemy.engine import Connection, Engine

from new_domain.adapters.allocations_view import AbstractAllocationsView, SqlAlchemyAllocationsView
from new_domain.adapters.anomalies import AbstractAnomalyLog, SqlAlchemyAnomalyLog
from new_domain.adapters.bulk import fetch, pipelined
from new_domain.adapters.change_positions import SqlAlchemyChangePositions
from new_domain.adapters.database import is_transient
from new_domain.adapters.dead_letters import SqlAlchemyDeadLetters
from new_domain.adapters.decisions import SqlAlchemyDecisionLog
from new_domain.adapters.lag import AbstractProgress, SqlAlchemyProgress
from new_domain.adapters.legacy_keys import SqlAlchemyLegacyKeys
from new_domain.adapters.outbox import AbstractOutbox, SqlAlchemyOutbox
from new_domain.adapters.ownership_records import AbstractWriteOwnership, SqlAlchemyWriteOwnership
from new_domain.adapters.repository import AbstractRepository, SqlAlchemyRepository
from new_domain.domain.events import Event
from new_domain.ingest.ports import (
    AbstractChangePositions,
    AbstractDeadLetters,
    AbstractDecisionLog,
    AbstractLegacyKeys,
)

logger = logging.getLogger(__name__)


class AbstractUnitOfWork(abc.ABC):
    products: AbstractRepository
    allocations_view: AbstractAllocationsView
    legacy_keys: AbstractLegacyKeys
    positions: AbstractChangePositions
    anomalies: AbstractAnomalyLog
    dead_letters: AbstractDeadLetters
    outbox: AbstractOutbox
    progress: AbstractProgress
    decisions: AbstractDecisionLog
    ownership: AbstractWriteOwnership

    change_id: str | None = None
    """``message_id`` of the legacy change being applied (recorded with anomalies and
    published events)."""

    _depth = 0
    _after_commit: list[Callable[[], None]]

    def __enter__(self) -> Self:
        if self._depth == 0:
            self._after_commit = []
            self._begin()
        self._depth += 1
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._depth -= 1
        if self._depth == 0:
            try:
                self._rollback()  # nothing left to roll back after a commit
            finally:
                self.change_id = None
                self._after_commit = []
                self._end()

    @property
    def in_transaction(self) -> bool:
        return self._depth > 0

    def commit(self) -> None:
        """Commit; inside an enclosing ``with`` block, leave it to that block."""
        if self._depth <= 1:
            self._commit()
            callbacks, self._after_commit = self._after_commit, []
            for callback in callbacks:
                try:
                    callback()
                except Exception:  # noqa: BLE001 - the transaction is committed anyway
                    logger.exception("after-commit callback failed")

    def rollback(self) -> None:
        """Roll back the whole transaction (only the outermost block may)."""
        if self._depth > 1:
            raise RuntimeError("rollback inside a joined unit of work: raise instead")
        self._after_commit = []
        self._rollback()

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` once the current transaction has committed (never if not)."""
        if self._depth == 0:
            raise RuntimeError("after_commit outside a unit of work")
        self._after_commit.append(callback)

    def reading_ahead(self) -> AbstractContextManager[None]:
        """A block whose ``preload`` reads are sent together when it ends (the results
        are there after it, not inside it)."""
        return nullcontext()

    def limit_waits(self, seconds: float) -> None:
        """Bound every lock wait and statement of this transaction to ``seconds`` (where
        the database supports it): a caller that must not hang on a hung database."""
        del seconds  # the fakes keep nothing that could wait

    def collect_new_events(self) -> Iterator[Event]:
        for product in list(self.products.seen):
            while product.events:
                yield product.events.pop(0)

    def is_transient(self, error: BaseException) -> bool:
        """Is ``error`` a failure of the database itself (a retry may cure it) rather than
        of what was written? The rule is written once, in ``adapters.database``."""
        return is_transient(error)

    @abc.abstractmethod
    def close(self) -> None:
        """Release what the unit of work holds (connection pools)."""

    @abc.abstractmethod
    def _begin(self) -> None: ...

    @abc.abstractmethod
    def _commit(self) -> None: ...

    @abc.abstractmethod
    def _rollback(self) -> None: ...

    @abc.abstractmethod
    def _end(self) -> None: ...


class SqlAlchemyUnitOfWork(AbstractUnitOfWork):
    """A new connection and transaction per outermost block; never share between threads."""

    connection: Connection
    products: SqlAlchemyRepository
    allocations_view: SqlAlchemyAllocationsView
    legacy_keys: SqlAlchemyLegacyKeys
    positions: SqlAlchemyChangePositions
    anomalies: SqlAlchemyAnomalyLog
    dead_letters: SqlAlchemyDeadLetters
    outbox: SqlAlchemyOutbox
    progress: SqlAlchemyProgress
    decisions: SqlAlchemyDecisionLog
    ownership: SqlAlchemyWriteOwnership

    def __init__(self, engine: Engine, *, owns_engine: bool = True) -> None:
        self.engine = engine
        self._owns_engine = owns_engine

    def _begin(self) -> None:
        self.connection = self.engine.connect()
        self.connection.begin()
        self.products = SqlAlchemyRepository(self.connection)
        self.allocations_view = SqlAlchemyAllocationsView(self.connection)
        self.legacy_keys = SqlAlchemyLegacyKeys(self.connection)
        self.positions = SqlAlchemyChangePositions(self.connection)
        self.anomalies = SqlAlchemyAnomalyLog(self.connection)
        self.dead_letters = SqlAlchemyDeadLetters(self.connection)
        self.outbox = SqlAlchemyOutbox(self.connection)
        self.progress = SqlAlchemyProgress(self.connection)
        self.decisions = SqlAlchemyDecisionLog(self.connection)
        self.ownership = SqlAlchemyWriteOwnership(self.connection)

    def reading_ahead(self) -> AbstractContextManager[None]:
        ahead: AbstractContextManager[None] = pipelined(self.connection)
        return ahead

    def limit_waits(self, seconds: float) -> None:
        if self.connection.dialect.name == "postgresql":
            ms = str(max(1, round(seconds * 1000)))
            # a read, so it goes with the other reads of a reading_ahead block
            fetch(
                self.connection,
                "unit_of_work.limit_waits",
                lambda: select(
                    func.set_config("lock_timeout", bindparam("ms", type_=String), True),
                    func.set_config("statement_timeout", bindparam("ms", type_=String), True),
                ),
                {"ms": ms},
                lambda _rows: None,
            )

    def flush(self) -> None:
        """Send every buffered write (the commit does this itself): on PostgreSQL all of
        them in one round trip."""
        with pipelined(self.connection):
            self.legacy_keys.flush()
            self.products.flush()
            self.allocations_view.flush()
            self.anomalies.flush()
            self.outbox.flush()
            self.progress.flush()
            self.decisions.flush()
            self.ownership.flush()
            self.positions.flush()

    def _commit(self) -> None:
        self.flush()
        self.connection.commit()  # a later statement in the same block begins anew

    def _rollback(self) -> None:
        self.connection.rollback()

    def _end(self) -> None:
        self.connection.close()

    def close(self) -> None:
        if self._owns_engine:
            self.engine.dispose()
