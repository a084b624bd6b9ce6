"""The allocation model: a ``Product`` aggregate owning its ``Batch``es.

Two kinds of operation live here:

- ``allocate`` decides with the new domain's own rule (warehouse stock first, then the
  earliest shipment). A later cutover of the write routes uses it.
- ``record_allocation``, ``record_deallocation`` and ``change_batch_quantity`` mirror
  decisions the legacy system already took while it still owns the writes. They check
  the new model's invariants but never refuse legacy's fact: a violation is applied
  anyway and reported as a ``LegacyInvariantViolated`` event.

``sync_allocation`` is the idempotent form used for snapshot reads of legacy rows.

Every change bumps ``Product.version_number`` (the optimistic-concurrency token).
A batch's allocations are an :class:`Allocations` keyed by order, so a repository can
load only the orders a unit of work touches, however many lines a product holds.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date

from new_domain.domain import events


class DomainError(Exception):
    """A command the model refuses."""


class DuplicateBatch(DomainError):
    """A batch with this reference exists already."""


class UnknownBatch(DomainError):
    """No batch has this reference."""


@dataclass(frozen=True)
class OrderLine:
    """A quantity of one sku for one order (a value object)."""

    orderid: str
    sku: str
    qty: int


class Allocations:
    """The order lines allocated to one batch (at most one per order) and their total.

    The model only uses the methods below, so a repository may hand out a subclass that
    loads lines on demand instead of all of them up front.
    """

    def __init__(self, lines: Iterable[OrderLine] = ()) -> None:
        self._lines: dict[str, OrderLine] = {}
        self._quantity = 0
        for line in lines:
            self.put(line)

    def get(self, orderid: str) -> OrderLine | None:
        return self._lines.get(orderid)

    def put(self, line: OrderLine) -> None:
        """Hold ``line``, replacing the line of the same order if there is one."""
        previous = self.get(line.orderid)
        if previous is not None:
            self._quantity -= previous.qty
        self._lines[line.orderid] = line
        self._quantity += line.qty

    def remove(self, orderid: str) -> None:
        line = self.get(orderid)
        if line is not None:
            del self._lines[orderid]
            self._quantity -= line.qty

    @property
    def quantity(self) -> int:
        return self._quantity

    def lines(self) -> frozenset[OrderLine]:
        return frozenset(self._lines.values())


class Batch:
    """Stock of one sku: in the warehouse (``eta`` None) or on its way."""

    def __init__(
        self,
        reference: str,
        sku: str,
        purchased_quantity: int,
        eta: date | None = None,
        allocations: Allocations | None = None,
    ) -> None:
        self.reference = reference
        self.sku = sku
        self.eta = eta
        self._purchased_quantity = purchased_quantity
        self._allocations = allocations if allocations is not None else Allocations()

    def __repr__(self) -> str:
        return f"<Batch {self.reference}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Batch) and other.reference == self.reference

    def __hash__(self) -> int:
        return hash(self.reference)

    def __lt__(self, other: Batch) -> bool:
        """Warehouse stock sorts first, then shipments by earliest eta."""
        if self.eta is None:
            return other.eta is not None
        if other.eta is None:
            return False
        return self.eta < other.eta

    @property
    def purchased_quantity(self) -> int:
        return self._purchased_quantity

    @property
    def allocations(self) -> frozenset[OrderLine]:
        return self._allocations.lines()

    @property
    def allocated_quantity(self) -> int:
        return self._allocations.quantity

    @property
    def available_quantity(self) -> int:
        return self._purchased_quantity - self.allocated_quantity

    def can_allocate(self, line: OrderLine) -> bool:
        return self.sku == line.sku and self.available_quantity >= line.qty

    def line_for(self, orderid: str) -> OrderLine | None:
        """The line of ``orderid`` allocated to this batch, if any."""
        return self._allocations.get(orderid)

    def allocate(self, line: OrderLine) -> None:
        """Allocate ``line`` if it fits and its order holds nothing here yet."""
        if self.line_for(line.orderid) is None and self.can_allocate(line):
            self._allocations.put(line)

    def deallocate(self, line: OrderLine) -> None:
        if self.line_for(line.orderid) == line:
            self._allocations.remove(line.orderid)

    def record(self, line: OrderLine) -> None:
        """Hold ``line`` unconditionally, replacing another line of the same order."""
        self._allocations.put(line)

    def change_purchased_quantity(self, qty: int) -> None:
        self._purchased_quantity = qty


class Product:
    """The aggregate: one sku and all its batches; the consistency boundary."""

    def __init__(self, sku: str, batches: Iterable[Batch] = (), version_number: int = 0) -> None:
        self.sku = sku
        self.batches: list[Batch] = list(batches)
        self.version_number = version_number
        self.events: list[events.Event] = []

    def __repr__(self) -> str:
        return f"<Product {self.sku} v{self.version_number}>"

    def batch(self, reference: str) -> Batch | None:
        return next((b for b in self.batches if b.reference == reference), None)

    def add_batch(self, batch: Batch) -> None:
        if self.batch(batch.reference) is not None:
            raise DuplicateBatch(f"batch {batch.reference} exists already")
        self.batches.append(batch)
        self._changed()
        self.events.append(
            events.BatchCreated(batch.reference, self.sku, batch.purchased_quantity, batch.eta)
        )

    def allocate(self, line: OrderLine) -> str | None:
        """Allocate with the new rule; None (and an ``OutOfStock`` event) when nothing fits."""
        batch = next((b for b in sorted(self.batches) if b.can_allocate(line)), None)
        if batch is None:
            self.events.append(events.OutOfStock(line.sku))
            return None
        batch.allocate(line)
        self._changed()
        self.events.append(events.Allocated(line.orderid, line.sku, line.qty, batch.reference))
        return batch.reference

    def record_allocation(self, line: OrderLine, batchref: str) -> None:
        """Mirror legacy's allocation of ``line`` to ``batchref``; never raises.

        An allocation to a batch this product does not have cannot be held by the
        model, but ``Allocated`` is still emitted so the read model shows what legacy
        shows.
        """
        batch = self.batch(batchref)
        if batch is None:
            self._violated(
                "unknown_batch",
                f"order {line.orderid} allocated to {batchref}, not a batch of {self.sku}",
            )
        else:
            for other in self.batches:
                if other is not batch and other.line_for(line.orderid) is not None:
                    self._violated(
                        "already_allocated",
                        f"order {line.orderid} allocated to {batchref} while still "
                        f"allocated to {other.reference}",
                    )
            previous = batch.line_for(line.orderid)
            available = batch.available_quantity + (previous.qty if previous else 0)
            if available < line.qty:
                self._violated(
                    "insufficient_stock",
                    f"order {line.orderid} allocated {line.qty} of {batchref} "
                    f"with {available} available",
                )
            batch.record(line)
            self._changed()
        self.events.append(events.Allocated(line.orderid, line.sku, line.qty, batchref))

    def sync_allocation(self, line: OrderLine, batchref: str) -> None:
        """Make ``line`` allocated to ``batchref`` and nowhere else (a snapshot's upsert).

        Nothing changes, and no event is raised, when that is already so.
        """
        for other in self.batches:
            held = other.line_for(line.orderid)
            if other.reference != batchref and held is not None:
                other.deallocate(held)
                self._changed()
                self.events.append(events.Deallocated(line.orderid, self.sku, other.reference))
        batch = self.batch(batchref)
        if batch is not None and batch.line_for(line.orderid) == line:
            return
        self.record_allocation(line, batchref)

    def record_deallocation(self, orderid: str, batchref: str) -> None:
        """Mirror legacy's removal of the allocation of ``orderid`` from ``batchref``."""
        batch = self.batch(batchref)
        line = batch.line_for(orderid) if batch is not None else None
        if batch is None or line is None:
            self._violated(
                "not_allocated", f"order {orderid} deallocated from {batchref} but not held there"
            )
        else:
            batch.deallocate(line)
            self._changed()
        self.events.append(events.Deallocated(orderid, self.sku, batchref))

    def change_batch_quantity(self, reference: str, qty: int) -> None:
        """Set the purchased quantity (mirror mode: legacy moves the lines itself).

        Setting the quantity a batch already has changes nothing and raises no event.
        """
        batch = self.batch(reference)
        if batch is None:
            raise UnknownBatch(f"no batch {reference} in {self.sku}")
        if batch.purchased_quantity == qty:
            return
        batch.change_purchased_quantity(qty)
        self._changed()
        self.events.append(events.BatchQuantityChanged(reference, self.sku, qty))

    def _changed(self) -> None:
        self.version_number += 1

    def _violated(self, reason: str, detail: str) -> None:
        self.events.append(events.LegacyInvariantViolated(reason, self.sku, detail))
