"""Units of work: one database transaction, and the repositories that live in it.

One unit of work serves one thread. Each outermost ``with uow:`` opens a fresh
session (one transaction); a nested ``with uow:`` joins it, and there ``commit()``
does nothing: the outermost block commits (flushing everything at once) or rolls back
everything. That is how the message bus applies a command and all the events it
raised in one transaction, and how the consumer applies a whole batch of legacy
changes in one transaction, while each handler keeps the plain
``with uow: ...; uow.commit()`` shape.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator
from types import TracebackType
from typing import Self

from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from new_domain.adapters.allocations_view import (
    AbstractAllocationsView,
    InMemoryAllocationsView,
    SqlAlchemyAllocationsView,
)
from new_domain.adapters.anomalies import (
    AbstractAnomalyLog,
    InMemoryAnomalyLog,
    SqlAlchemyAnomalyLog,
)
from new_domain.adapters.change_positions import (
    AbstractChangePositions,
    InMemoryChangePositions,
    SqlAlchemyChangePositions,
)
from new_domain.adapters.legacy_keys import (
    AbstractLegacyKeys,
    InMemoryLegacyKeys,
    SqlAlchemyLegacyKeys,
)
from new_domain.adapters.repository import (
    AbstractRepository,
    InMemoryRepository,
    SqlAlchemyRepository,
)
from new_domain.domain.events import Event
from new_domain.domain.model import Product


class AbstractUnitOfWork(abc.ABC):
    products: AbstractRepository
    allocations_view: AbstractAllocationsView
    legacy_keys: AbstractLegacyKeys
    positions: AbstractChangePositions
    anomalies: AbstractAnomalyLog

    change_id: str | None = None
    """``message_id`` of the legacy change being applied (recorded with anomalies)."""

    _depth = 0

    def __enter__(self) -> Self:
        if self._depth == 0:
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
                self._end()

    @property
    def in_transaction(self) -> bool:
        return self._depth > 0

    def commit(self) -> None:
        """Commit; inside an enclosing ``with`` block, leave it to that block."""
        if self._depth <= 1:
            self._commit()

    def rollback(self) -> None:
        """Roll back the whole transaction (only the outermost block may)."""
        if self._depth > 1:
            raise RuntimeError("rollback inside a joined unit of work: raise instead")
        self._rollback()

    def collect_new_events(self) -> Iterator[Event]:
        for product in list(self.products.seen):
            while product.events:
                yield product.events.pop(0)

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
    """A new ``Session`` per outermost block; never share one between threads."""

    session: Session

    def __init__(self, engine: Engine, *, owns_engine: bool = True) -> None:
        self.engine = engine
        self._owns_engine = owns_engine
        self.session_factory = sessionmaker(bind=engine)

    def _begin(self) -> None:
        self.session = self.session_factory()
        self.products = SqlAlchemyRepository(self.session)
        self.allocations_view = SqlAlchemyAllocationsView(self.session)
        self.legacy_keys = SqlAlchemyLegacyKeys(self.session)
        self.positions = SqlAlchemyChangePositions(self.session)
        self.anomalies = SqlAlchemyAnomalyLog(self.session)

    positions: SqlAlchemyChangePositions

    def _commit(self) -> None:
        self.positions.write()
        self.session.commit()

    def _rollback(self) -> None:
        self.session.rollback()

    def _end(self) -> None:
        self.session.close()

    def close(self) -> None:
        if self._owns_engine:
            self.engine.dispose()


class InMemoryUnitOfWork(AbstractUnitOfWork):
    """Dict-backed repositories for specs of the handlers; not transactional.

    ``commits`` counts real (outermost) commits.
    """

    def __init__(self) -> None:
        self.stored_products: dict[str, Product] = {}
        self.allocations_view = InMemoryAllocationsView()
        self.legacy_keys = InMemoryLegacyKeys()
        self.positions = InMemoryChangePositions()
        self.anomalies = InMemoryAnomalyLog()
        self.products = InMemoryRepository(self.stored_products)
        self.commits = 0

    def _begin(self) -> None:
        self.products = InMemoryRepository(self.stored_products)

    def _commit(self) -> None:
        self.commits += 1

    def _rollback(self) -> None:
        pass

    def _end(self) -> None:
        pass

    def close(self) -> None:
        pass
