"""Repositories of ``Product`` aggregates, tracking every aggregate they hand out.

The SQL repository is a hand-written data mapper over ``products``, ``batches`` and
``batch_allocations``. An aggregate is loaded with its batches and each batch's
allocated total, but only with the order lines of the orders the unit of work asks
about (a batch's :class:`~new_domain.domain.model.Allocations` loads an order's lines on
first use; :meth:`SqlAlchemyRepository.preload` loads many orders in one query). At
commit, :meth:`SqlAlchemyRepository.flush` compares each aggregate with what was loaded
and writes every kind of change with one statement: a batch of a thousand legacy
changes costs a handful of round trips, whatever the size of the aggregates.

Each line is stored with its sequence number in its batch (``batch_allocations.seq``,
the allocation order) and each batch with the highest number it handed out, so an
aggregate knows a batch's newest allocations; when the model asks for a batch's lines in
allocation order (a quantity cut), all of that batch's lines load in one query.
"""

from __future__ import annotations

import abc
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from sqlalchemy import ColumnElement, or_, select
from sqlalchemy.engine import Connection

from new_domain.adapters import orm
from new_domain.adapters.bulk import FEW, delete_rows, fetch, insert_rows, member, update_rows
from new_domain.adapters.database import ConcurrentUpdate
from new_domain.domain.model import Allocations, Batch, OrderLine, Product


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

    def sku_of_batch(self, batchref: str) -> str | None:
        """The sku of the product batch ``batchref`` belongs to (None: no such batch),
        without handing out (or locking) the aggregate."""
        product = self._get_by_batchref(batchref)
        return None if product is None else product.sku

    def preload(
        self,
        skus: Collection[str] = (),
        batchrefs: Collection[str] = (),
        orderids: Collection[str] = (),
    ) -> None:
        """Load these aggregates, and these orders' lines in them, ahead in bulk
        (an optimisation: everything also loads on first use)."""
        return None  # an optional optimisation: nothing to do without a store

    @abc.abstractmethod
    def _add(self, product: Product) -> None: ...

    @abc.abstractmethod
    def _get(self, sku: str) -> Product | None: ...

    @abc.abstractmethod
    def _get_by_batchref(self, batchref: str) -> Product | None: ...


class SqlAlchemyRepository(AbstractRepository):
    """Aggregates in the new database, for one transaction.

    Each aggregate is loaded with its product row locked (``FOR UPDATE`` on PostgreSQL;
    SQLite has one writer at a time and ignores the clause), so writers of one product
    serialise and an aggregate loaded once is handed out again without a query. The
    version check on write turns any unlocked concurrent update into
    :class:`ConcurrentUpdate` instead of a lost update.
    """

    def __init__(self, connection: Connection) -> None:
        super().__init__()
        self.connection = connection
        self._held: dict[str, Product | None] = {}  # sku -> aggregate (None: no such sku)
        self._stored: dict[str, _StoredProduct] = {}  # what was loaded, by sku
        self._owner: dict[str, str | None] = {}  # batchref -> sku (None: no such batch)

    # -- reading -------------------------------------------------------------------------

    def _add(self, product: Product) -> None:
        self._held[product.sku] = product

    def _get(self, sku: str) -> Product | None:
        if sku not in self._held:
            self._load([sku], [], [])
        return self._held[sku]

    def _get_by_batchref(self, batchref: str) -> Product | None:
        for product in self._held.values():
            if product is not None and product.batch(batchref) is not None:
                return product
        if batchref not in self._owner:
            self._load([], [batchref], [])
        sku = self._owner[batchref]
        return None if sku is None else self._get(sku)

    def sku_of_batch(self, batchref: str) -> str | None:
        if batchref in self._owner:
            return self._owner[batchref]
        b = orm.batches
        sku = self.connection.scalar(select(b.c.sku).where(b.c.reference == batchref))
        return None if sku is None else str(sku)

    def preload(
        self,
        skus: Collection[str] = (),
        batchrefs: Collection[str] = (),
        orderids: Collection[str] = (),
    ) -> None:
        wanted = sorted({sku for sku in skus if sku not in self._held})
        refs = sorted({ref for ref in batchrefs if ref not in self._owner})
        if wanted or refs:
            self._load(wanted, refs, sorted(set(orderids)))

    def _load(self, skus: list[str], refs: list[str], orders: list[str]) -> None:
        """Load (and lock) the aggregates of ``skus`` and of the batches ``refs``, with
        the lines of ``orders`` in them: three queries, sent together when pipelined."""
        p, b, a = orm.products, orm.batches, orm.batch_allocations
        c = self.connection
        # one decision (a key or two) probes the indexes; a batch's long lists hash
        few = len(skus) + len(refs) + len(orders) <= FEW
        kind = "few" if few else "many"

        def asked(sku: ColumnElement[str]) -> ColumnElement[bool]:
            owners = select(b.c.sku).where(member(b.c.reference, "refs", c, few=few))
            return or_(member(sku, "skus", c, few=few), sku.in_(owners))

        params = {"skus": skus, "refs": refs, "orders": orders}
        versions: dict[str, int] = {}
        batch_rows: list[Any] = []
        fetch(
            c,
            f"repository.products.{kind}",
            lambda: (
                select(p.c.sku, p.c.version_number)
                .where(asked(p.c.sku))
                .order_by(p.c.sku)
                .with_for_update(of=p)
            ),
            params,
            lambda rows: versions.update({sku: int(v) for sku, v in rows}),
        )
        fetch(
            c,
            f"repository.batches.{kind}",
            lambda: (
                select(
                    b.c.sku,
                    b.c.reference,
                    b.c.purchased_quantity,
                    b.c.eta,
                    b.c.allocated_quantity,
                    b.c.last_allocation_seq,
                    b.c.creation_number,
                )
                .where(asked(b.c.sku))
                .order_by(b.c.creation_number.asc().nulls_first(), b.c.id)
            ),
            params,
            batch_rows.extend,
        )
        fetch(
            c,
            f"repository.lines.{kind}",
            lambda: select(a.c.batchref, a.c.orderid, a.c.sku, a.c.qty, a.c.seq).where(
                member(a.c.orderid, "orders", c, few=few), asked(a.c.sku)
            ),
            params,
            lambda line_rows: self._loaded(skus, refs, orders, versions, batch_rows, line_rows),
        )

    def _loaded(
        self,
        skus: list[str],
        refs: list[str],
        orders: list[str],
        versions: dict[str, int],
        batch_rows: list[Any],
        line_rows: list[Any],
    ) -> None:
        """Build the aggregates from what :meth:`_load` read."""
        stored = {
            sku: _StoredProduct(sku, version, self.connection)
            for sku, version in versions.items()
            if sku not in self._held  # an aggregate in hand is never replaced
        }
        for sku, ref, qty, eta, allocated, last_seq, number in batch_rows:
            self._owner[ref] = sku
            if sku in stored:
                tracked = _TrackedAllocations(ref, int(allocated), int(last_seq), stored[sku])
                batch = Batch(ref, sku, int(qty), _date(eta), tracked, number)
                stored[sku].batches[ref] = _StoredBatch(batch, tracked)
        for ref, orderid, sku, qty, seq in line_rows:
            if sku in stored:
                stored[sku].loaded(ref, OrderLine(orderid, sku, int(qty)), int(seq))
        for sku, entry in stored.items():
            entry.known_orders.update(orders)
            self._stored[sku] = entry
            batches = [stored_batch.batch for stored_batch in entry.batches.values()]
            self._held[sku] = Product(sku, batches, entry.version_number)
        for sku in skus:
            self._held.setdefault(sku, None)
        for ref in refs:
            self._owner.setdefault(ref, None)

    # -- writing -------------------------------------------------------------------------

    def flush(self) -> None:
        """Write what changed in every aggregate since it was loaded, added or flushed."""
        writes = _Writes()
        for sku, product in self._held.items():
            if product is None:
                continue
            stored = self._stored.get(sku)
            if stored is None:
                writes.new_products.append({"sku": sku, "version_number": product.version_number})
                stored = self._stored[sku] = _StoredProduct(sku, 0, self.connection)
            elif product.version_number != stored.version_number:
                writes.versions.append(
                    {
                        "sku": sku,
                        "version_number": product.version_number,
                        "old_version": stored.version_number,
                    }
                )
            stored.version_number = product.version_number
            for batch in product.batches:
                entry = stored.batches.get(batch.reference)
                if entry is None:
                    writes.add_batch(batch)
                    stored.batches[batch.reference] = _StoredBatch(batch, None)
                else:
                    writes.update_batch(entry, batch)
                    entry.written()
        writes.execute(self.connection)


@dataclass
class _StoredProduct:
    """An aggregate as stored: its version, its batches, and which orders are loaded."""

    sku: str
    version_number: int
    connection: Connection
    batches: dict[str, _StoredBatch] = field(default_factory=dict)
    known_orders: set[str] = field(default_factory=set)

    def loaded(self, batchref: str, line: OrderLine, seq: int) -> None:
        entry = self.batches.get(batchref)
        if entry is not None and entry.tracked is not None:
            entry.tracked.loaded(line, seq)

    def ensure(self, orderid: str) -> None:
        """Load ``orderid``'s lines of this product unless they are loaded."""
        if orderid in self.known_orders:
            return
        a = orm.batch_allocations
        rows = self.connection.execute(
            select(a.c.batchref, a.c.orderid, a.c.sku, a.c.qty, a.c.seq).where(
                a.c.orderid == orderid, a.c.sku == self.sku
            )
        )
        for ref, order, sku, qty, seq in rows:
            self.loaded(ref, OrderLine(order, sku, int(qty)), int(seq))
        self.known_orders.add(orderid)

    def load_batch(self, tracked: _TrackedAllocations) -> None:
        """Load every line of one batch, in allocation order."""
        a = orm.batch_allocations
        rows = self.connection.execute(
            select(a.c.orderid, a.c.sku, a.c.qty, a.c.seq)
            .where(a.c.batchref == tracked.batchref)
            .order_by(a.c.seq, a.c.orderid)
        )
        for orderid, sku, qty, seq in rows:
            tracked.loaded(OrderLine(orderid, sku, int(qty)), int(seq))


_Entry = tuple[OrderLine, int]
"""A stored line and its sequence number in its batch."""


class _StoredBatch:
    """A batch as stored: loaded ones track their lines, written ones remember them."""

    def __init__(self, batch: Batch, tracked: _TrackedAllocations | None) -> None:
        self.batch = batch
        self.tracked = tracked
        self.purchased_quantity = batch.purchased_quantity
        self.allocated_quantity = batch.allocated_quantity
        self.last_allocation_seq = batch.last_allocation_seq
        self.lines = _entries(batch) if tracked is None else {}

    def changes(self) -> tuple[list[str], list[_Entry]]:
        """Orders whose stored line goes, and lines to store, since last written."""
        if self.tracked is not None:
            return self.tracked.changes()
        now = _entries(self.batch)
        return (
            sorted(o for o, entry in self.lines.items() if now.get(o) != entry),
            sorted(
                (entry for o, entry in now.items() if self.lines.get(o) != entry),
                key=lambda entry: entry[1],
            ),
        )

    def written(self) -> None:
        self.purchased_quantity = self.batch.purchased_quantity
        self.allocated_quantity = self.batch.allocated_quantity
        self.last_allocation_seq = self.batch.last_allocation_seq
        if self.tracked is not None:
            self.tracked.original.clear()
        else:
            self.lines = _entries(self.batch)


class _TrackedAllocations(Allocations):
    """A stored batch's lines: loaded per order on first use, changes remembered.

    The total comes from ``batches.allocated_quantity`` and the last sequence number
    from ``batches.last_allocation_seq``, so both are right before any line is loaded.
    """

    def __init__(
        self, batchref: str, quantity: int, last_seq: int, product: _StoredProduct
    ) -> None:
        super().__init__(last_seq=last_seq)
        self.batchref = batchref
        self._quantity = quantity
        self._product = product
        self._complete = False
        self.original: dict[str, _Entry | None] = {}  # touched orders, as stored

    def get(self, orderid: str) -> OrderLine | None:
        self._product.ensure(orderid)
        return self._lines.get(orderid)

    def put(self, line: OrderLine) -> None:
        self._touch(line.orderid)
        super().put(line)

    def remove(self, orderid: str) -> None:
        self._touch(orderid)
        super().remove(orderid)

    def lines(self) -> frozenset[OrderLine]:
        if not self._complete:
            self._product.load_batch(self)
            self._complete = True
        return super().lines()

    def loaded(self, line: OrderLine, seq: int) -> None:
        """A line read from the database; what this transaction changed wins."""
        if line.orderid not in self.original and line.orderid not in self._lines:
            self._lines[line.orderid] = line
            self._seqs[line.orderid] = seq
            self._last_seq = max(self._last_seq, seq)

    def changes(self) -> tuple[list[str], list[_Entry]]:
        gone, new = [], []
        for orderid, before in self.original.items():
            now = self._entry(orderid)
            if now == before:
                continue
            if before is not None:
                gone.append(orderid)
            if now is not None:
                new.append(now)
        return gone, new

    def _entry(self, orderid: str) -> _Entry | None:
        line = self._lines.get(orderid)
        return None if line is None else (line, self._seqs[orderid])

    def _touch(self, orderid: str) -> None:
        self._product.ensure(orderid)
        if orderid not in self.original:
            self.original[orderid] = self._entry(orderid)


@dataclass
class _Writes:
    """Every row to write for one flush, grouped by statement."""

    new_products: list[dict[str, object]] = field(default_factory=list)
    versions: list[dict[str, object]] = field(default_factory=list)
    new_batches: list[dict[str, object]] = field(default_factory=list)
    batch_updates: list[dict[str, object]] = field(default_factory=list)
    gone_lines: list[dict[str, object]] = field(default_factory=list)
    new_lines: list[dict[str, object]] = field(default_factory=list)

    def add_batch(self, batch: Batch) -> None:
        self.new_batches.append(
            {
                "reference": batch.reference,
                "sku": batch.sku,
                "purchased_quantity": batch.purchased_quantity,
                "eta": batch.eta,
                "allocated_quantity": batch.allocated_quantity,
                "last_allocation_seq": batch.last_allocation_seq,
                "creation_number": batch.creation_number,
            }
        )
        self.new_lines.extend(
            _line_row(batch.reference, entry)
            for entry in sorted(_entries(batch).values(), key=lambda entry: entry[1])
        )

    def update_batch(self, stored: _StoredBatch, batch: Batch) -> None:
        if (batch.purchased_quantity, batch.allocated_quantity, batch.last_allocation_seq) != (
            stored.purchased_quantity,
            stored.allocated_quantity,
            stored.last_allocation_seq,
        ):
            self.batch_updates.append(
                {
                    "reference": batch.reference,
                    "purchased_quantity": batch.purchased_quantity,
                    "allocated_quantity": batch.allocated_quantity,
                    "last_allocation_seq": batch.last_allocation_seq,
                }
            )
        gone, new = stored.changes()
        self.gone_lines.extend({"batchref": batch.reference, "orderid": o} for o in gone)
        self.new_lines.extend(_line_row(batch.reference, entry) for entry in new)

    def execute(self, connection: Connection) -> None:
        insert_rows(connection, orm.products, self.new_products)
        update_rows(
            connection,
            orm.products,
            self.versions,
            key=["sku"],
            expect={"old_version": "version_number"},
            all_or=ConcurrentUpdate,
        )
        insert_rows(connection, orm.batches, self.new_batches)
        update_rows(connection, orm.batches, self.batch_updates, key=["reference"])
        delete_rows(connection, orm.batch_allocations, self.gone_lines)
        insert_rows(connection, orm.batch_allocations, self.new_lines)


def _date(value: Any) -> date | None:
    """A date column's value (already a date, except when read raw from the driver)."""
    if value is None or isinstance(value, date):
        return value
    return date.fromisoformat(str(value))


def _entries(batch: Batch) -> dict[str, _Entry]:
    """A batch's lines with their sequence numbers, by order (all of them)."""
    return {
        line.orderid: (line, batch.allocation_seq(line.orderid) or 0) for line in batch.allocations
    }


def _line_row(batchref: str, entry: _Entry) -> dict[str, object]:
    line, seq = entry
    return {
        "batchref": batchref,
        "orderid": line.orderid,
        "sku": line.sku,
        "qty": line.qty,
        "seq": seq,
    }
