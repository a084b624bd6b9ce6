"""Repositories of ``Product`` aggregates, tracking every aggregate they hand out."""

from __future__ import annotations

import abc

from sqlalchemy import select
from sqlalchemy.orm import Session

from new_domain.adapters import orm
from new_domain.domain.model import Product


class AbstractRepository(abc.ABC):
    """Products by sku or by one of their batch references.

    ``seen`` holds every aggregate added or loaded, so the unit of work can collect
    the events they raised.
    """

    def __init__(self) -> None:
        self.seen: set[Product] = set()

    def add(self, product: Product) -> None:
        self._add(product)
        self.seen.add(product)

    def get(self, sku: str) -> Product | None:
        product = self._get(sku)
        if product is not None:
            self.seen.add(product)
        return product

    def get_by_batchref(self, batchref: str) -> Product | None:
        product = self._get_by_batchref(batchref)
        if product is not None:
            self.seen.add(product)
        return product

    @abc.abstractmethod
    def _add(self, product: Product) -> None: ...

    @abc.abstractmethod
    def _get(self, sku: str) -> Product | None: ...

    @abc.abstractmethod
    def _get_by_batchref(self, batchref: str) -> Product | None: ...


class SqlAlchemyRepository(AbstractRepository):
    """Loads each aggregate with its product row locked (``FOR UPDATE`` on PostgreSQL;
    SQLite has a single writer and ignores the clause).

    The lock serialises writers of one product and lasts until the transaction ends,
    so an aggregate already loaded in this transaction is handed out again without a
    query. ``version_number`` (the mapper's version column) additionally turns any
    unlocked concurrent update into a ``StaleDataError`` instead of a lost update.
    """

    def __init__(self, session: Session) -> None:
        super().__init__()
        self.session = session
        self._held: dict[str, Product] = {}  # loaded (and locked) in this transaction

    def _add(self, product: Product) -> None:
        self.session.add(product)
        self._held[product.sku] = product

    def _get(self, sku: str) -> Product | None:
        if sku in self._held:
            return self._held[sku]
        statement = (
            select(Product).where(orm.products.c.sku == sku).with_for_update(of=orm.products)
        )
        return self._hold(self.session.scalars(statement).one_or_none())

    def _get_by_batchref(self, batchref: str) -> Product | None:
        for product in self._held.values():
            if product.batch(batchref) is not None:
                return product
        statement = (
            select(Product)
            .join(orm.batches, orm.batches.c.sku == orm.products.c.sku)
            .where(orm.batches.c.reference == batchref)
            .with_for_update(of=orm.products)
        )
        return self._hold(self.session.scalars(statement).one_or_none())

    def _hold(self, product: Product | None) -> Product | None:
        if product is not None:
            self._held[product.sku] = product
        return product


class InMemoryRepository(AbstractRepository):
    """Products in a dict (for tests of the handlers)."""

    def __init__(self, products: dict[str, Product] | None = None) -> None:
        super().__init__()
        self.products = products if products is not None else {}

    def _add(self, product: Product) -> None:
        self.products[product.sku] = product

    def _get(self, sku: str) -> Product | None:
        return self.products.get(sku)

    def _get_by_batchref(self, batchref: str) -> Product | None:
        return next((p for p in self.products.values() if p.batch(batchref) is not None), None)
