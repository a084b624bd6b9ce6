"""The allocation model: a ``Product`` aggregate owning its ``Batch``es.

Two kinds of operation live here.

**The new domain's own write rules** (for when it owns a product's writes). Each one is
split into a pure decision and the action that applies it: ``decide_*`` says what the
rule would do and changes nothing (no state, no event, no version), and the mutating
method calls it and applies exactly that decision, so the two can never differ. The
decisions are what legacy decides, refusal for refusal:

- ``allocate`` (``decide_allocation``): an order holding a line of the sku in any batch
  is refused (``AlreadyAllocated``); otherwise the first batch with the line's quantity
  available, in allocation preference order (below), takes it; none: ``OutOfStock``.
- ``deallocate`` (``decide_deallocation``): removes the order's line from the batch
  holding it; none holds one: ``NotAllocated``.
- ``add_batch`` (``decide_add_batch``): a reference this product uses already is
  refused (``DuplicateBatch``; a reference of another product is the handler's check,
  as only the repository knows every product).
- ``set_batch_quantity`` (``decide_batch_quantity``): unknown batch: ``UnknownBatch``;
  otherwise the quantity is set and, while the batch's lines exceed it, its most recent
  allocations are removed (newest first); then the removed lines are allocated again
  oldest first, each with the allocate rule on the state left by the previous ones (the
  cut batch included); a line that fits nowhere stays unallocated (an ``OutOfStock``
  event). The result is a list of :class:`Move`.

  The book reallocates through its handler chain (each ``Deallocated`` event's handler
  allocates the line again). Here the aggregate does it in the same call: legacy
  removes every line that must go before reallocating any, oldest first, in one
  transaction; doing the same in the aggregate gives exactly that result whatever
  else handles the events, the caller gets the moves as one answer, and the published
  ``Deallocated`` event keeps its schema. The events are what the book's chain would
  raise: ``BatchQuantityChanged``, one ``Deallocated`` per removed line (newest first),
  then ``Allocated`` (or ``OutOfStock``) per line, oldest first.

**Allocation preference order.** Warehouse stock (``eta`` None) first, then shipments by
earliest ``eta``; batches that tie (same ``eta``, or both in the warehouse) are ordered
by :class:`TieBreak`, an attribute of the product (``Product.tie_break``, which the
bootstrap's ``tie_break`` sets for the owner handlers):

- ``TieBreak.CREATED`` (the default): the order the batches were created in (the
  product's ``batches`` list, kept in the order of each batch's ``creation_number``).
  This is legacy's rule: it orders equal arrival dates by ``lot_id``. A batch mirrored
  from legacy is numbered with its ``lot_id``, because legacy numbers its lots as it
  inserts them and two lots created at once can commit (and reach the consumer) in the
  other order; a batch the new system creates gets the next number after its product's
  highest, and legacy, given it by back-sync, numbers it after every earlier lot too.
- ``TieBreak.REFERENCE``: batch reference order (string order).

**Allocation order.** Each batch numbers its allocations (``Allocations``): a new line
gets the next number, so a quantity cut knows its newest lines (legacy's ``alloc_id``
order). Replacing an order's line keeps its number; removing it and allocating it again
gives a new one.

**Mirroring legacy** while legacy still owns the writes: ``record_allocation``,
``record_deallocation`` and ``change_batch_quantity`` mirror decisions legacy already
took. They check the new model's invariants but never refuse legacy's fact: a
violation is applied anyway and reported as a ``LegacyInvariantViolated`` event.
``change_batch_quantity`` only sets the quantity (legacy moves the lines itself, and
those moves arrive as their own changes). ``sync_allocation`` is the idempotent form used
for snapshot reads of legacy rows.

Every change bumps ``Product.version_number`` (the optimistic-concurrency token).
A batch's allocations are an :class:`Allocations` keyed by order, so a repository can
load only the orders a unit of work touches, however many lines a product holds.

**Refusals** are :class:`DomainError` subclasses whose message is legacy's ``detail``
for the same refusal, so a write path can answer exactly as legacy does:
``UnknownSku`` (400 unknown sku), ``AlreadyAllocated`` and ``OutOfStock`` (409),
``NotAllocated`` and ``UnknownBatch`` (404 not found), ``DuplicateBatch`` (409).
"""

from __future__ import annotations

import bisect
import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date

from new_domain.domain import events


class DomainError(Exception):
    """A command the model refuses; the message is legacy's answer's ``detail``."""


class UnknownSku(DomainError):
    """No product has this sku (legacy: 400 unknown sku)."""

    def __init__(self, sku: str) -> None:
        super().__init__(f"unknown sku {sku}")
        self.sku = sku


class DuplicateBatch(DomainError):
    """A batch with this reference exists already (legacy: 409 duplicate batch)."""

    def __init__(self, reference: str) -> None:
        super().__init__(f"batch {reference} already exists")
        self.reference = reference


class UnknownBatch(DomainError):
    """No batch has this reference (legacy: 404 not found)."""

    def __init__(self, reference: str) -> None:
        super().__init__(f"no batch {reference}")
        self.reference = reference


class AlreadyAllocated(DomainError):
    """The order holds a line of this sku already (legacy: 409 already allocated)."""

    def __init__(self, orderid: str, sku: str, batchref: str) -> None:
        super().__init__(f"order {orderid} already has sku {sku} allocated to batch {batchref}")
        self.orderid = orderid
        self.sku = sku
        self.batchref = batchref


class OutOfStock(DomainError):
    """No batch has the line's quantity available (legacy: 409 out of stock, with the
    sku in the body)."""

    def __init__(self, sku: str, qty: int) -> None:
        super().__init__(f"no batch of sku {sku} has {qty} units available")
        self.sku = sku
        self.qty = qty


class NotAllocated(DomainError):
    """The order holds no line of this sku (legacy: 404 not found)."""

    def __init__(self, orderid: str, sku: str) -> None:
        super().__init__(f"order {orderid} has no allocation of sku {sku}")
        self.orderid = orderid
        self.sku = sku


class TieBreak(enum.Enum):
    """How batches with the same eta (or both in the warehouse) are ordered."""

    CREATED = "created"
    """Batch creation order: legacy's rule (its ``lot_id`` order). The default."""

    REFERENCE = "reference"
    """Batch reference order."""


@dataclass(frozen=True)
class OrderLine:
    """A quantity of one sku for one order (a value object)."""

    orderid: str
    sku: str
    qty: int


@dataclass(frozen=True)
class Move:
    """What a quantity cut does to one line: removed from ``from_batch`` and allocated to
    ``to_batch`` (which may be ``from_batch`` again), or left unallocated (None)."""

    orderid: str
    from_batch: str
    to_batch: str | None


class Allocations:
    """The order lines allocated to one batch (at most one per order), their total, and
    the order they were allocated in (each line's sequence number).

    The model only uses the methods below, so a repository may hand out a subclass that
    loads lines on demand instead of all of them up front.
    """

    def __init__(self, lines: Iterable[OrderLine] = (), last_seq: int = 0) -> None:
        self._lines: dict[str, OrderLine] = {}
        self._seqs: dict[str, int] = {}
        self._quantity = 0
        self._last_seq = last_seq
        for line in lines:
            self.put(line)

    def get(self, orderid: str) -> OrderLine | None:
        return self._lines.get(orderid)

    def seq(self, orderid: str) -> int | None:
        """The sequence number of ``orderid``'s line (higher: allocated later)."""
        return self._seqs.get(orderid) if self.get(orderid) is not None else None

    @property
    def last_seq(self) -> int:
        """The highest sequence number handed out so far."""
        return self._last_seq

    def put(self, line: OrderLine) -> None:
        """Hold ``line``, replacing the line of the same order if there is one (which
        keeps its sequence number); a new order's line gets the next number."""
        previous = self.get(line.orderid)
        if previous is not None:
            self._quantity -= previous.qty
        else:
            self._last_seq += 1
            self._seqs[line.orderid] = self._last_seq
        self._lines[line.orderid] = line
        self._quantity += line.qty

    def remove(self, orderid: str) -> None:
        line = self.get(orderid)
        if line is not None:
            del self._lines[orderid]
            self._seqs.pop(orderid, None)
            self._quantity -= line.qty

    @property
    def quantity(self) -> int:
        return self._quantity

    def lines(self) -> frozenset[OrderLine]:
        return frozenset(self._lines.values())

    def in_order(self) -> list[OrderLine]:
        """Every line, oldest allocation first (order id between equal numbers)."""
        self.lines()  # a subclass loads what it has not loaded yet
        return sorted(
            self._lines.values(), key=lambda line: (self._seqs.get(line.orderid, 0), line.orderid)
        )


class Batch:
    """Stock of one sku: in the warehouse (``eta`` None) or on its way."""

    def __init__(
        self,
        reference: str,
        sku: str,
        purchased_quantity: int,
        eta: date | None = None,
        allocations: Allocations | None = None,
        creation_number: int | None = None,
    ) -> None:
        self.reference = reference
        self.sku = sku
        self.eta = eta
        self.creation_number = creation_number
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

    def allocations_in_order(self) -> list[OrderLine]:
        """The lines allocated here, oldest allocation first."""
        return self._allocations.in_order()

    def allocation_seq(self, orderid: str) -> int | None:
        """The sequence number of ``orderid``'s line here (higher: allocated later)."""
        return self._allocations.seq(orderid)

    @property
    def last_allocation_seq(self) -> int:
        return self._allocations.last_seq

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


def preference_order(batches: Iterable[Batch], tie_break: TieBreak) -> list[Batch]:
    """``batches`` in the order the allocate rule tries them: warehouse stock, then by
    earliest eta, ties by ``tie_break`` (``batches`` is in creation order)."""

    def key(entry: tuple[int, Batch]) -> tuple[bool, date, int | str]:
        created, batch = entry
        tie: int | str = created if tie_break is TieBreak.CREATED else batch.reference
        return (batch.eta is not None, batch.eta or date.min, tie)

    return [batch for _, batch in sorted(enumerate(batches), key=key)]


def _held(batch: Batch, orderid: str) -> OrderLine:
    line = batch.line_for(orderid)
    if line is None:
        raise NotAllocated(orderid, batch.sku)
    return line


class Product:
    """The aggregate: one sku and all its batches; the consistency boundary."""

    def __init__(
        self,
        sku: str,
        batches: Iterable[Batch] = (),
        version_number: int = 0,
        tie_break: TieBreak = TieBreak.CREATED,
    ) -> None:
        self.sku = sku
        self.batches: list[Batch] = list(batches)
        self.version_number = version_number
        self.tie_break = tie_break
        self.events: list[events.Event] = []

    def __repr__(self) -> str:
        return f"<Product {self.sku} v{self.version_number}>"

    def batch(self, reference: str) -> Batch | None:
        return next((b for b in self.batches if b.reference == reference), None)

    # -- the new domain's own rules: decisions (pure) ----------------------------------

    def decide_add_batch(self, ref: str) -> None:
        """Refuse a reference this product uses already (``DuplicateBatch``)."""
        if self.batch(ref) is not None:
            raise DuplicateBatch(ref)

    def decide_allocation(self, line: OrderLine) -> str:
        """The batch the allocate rule would give ``line``.

        Raises ``AlreadyAllocated`` when the order holds a line of this sku in any
        batch, ``OutOfStock`` when no batch has ``line.qty`` available.
        """
        for batch in self.batches:
            if batch.line_for(line.orderid) is not None:
                raise AlreadyAllocated(line.orderid, self.sku, batch.reference)
        available = {batch.reference: batch.available_quantity for batch in self.batches}
        chosen = self._choose(line.qty, available)
        if chosen is None:
            raise OutOfStock(self.sku, line.qty)
        return chosen

    def decide_deallocation(self, orderid: str) -> str:
        """The batch the order's line would be removed from (``NotAllocated``: none)."""
        batch = self._holding(orderid)
        if batch is None:
            raise NotAllocated(orderid, self.sku)
        return batch.reference

    def decide_batch_quantity(self, ref: str, qty: int) -> list[Move]:
        """The lines setting batch ``ref``'s quantity to ``qty`` would move, in the order
        the rule reallocates them (oldest allocation first); ``UnknownBatch`` if none."""
        batch = self.batch(ref)
        if batch is None:
            raise UnknownBatch(ref)
        allocated = batch.allocated_quantity
        if allocated <= qty:
            return []
        removed: list[OrderLine] = []
        for line in reversed(batch.allocations_in_order()):
            if allocated <= qty:
                break
            removed.append(line)
            allocated -= line.qty
        available = {b.reference: b.available_quantity for b in self.batches}
        available[ref] = qty - allocated
        moves = []
        for line in reversed(removed):
            target = self._choose(line.qty, available)
            if target is not None:
                available[target] -= line.qty
            moves.append(Move(line.orderid, ref, target))
        return moves

    def _choose(self, qty: int, available: Mapping[str, int]) -> str | None:
        """The first batch, in preference order, with ``qty`` of ``available``."""
        for batch in preference_order(self.batches, self.tie_break):
            if available[batch.reference] >= qty:
                return batch.reference
        return None

    def _holding(self, orderid: str) -> Batch | None:
        return next((b for b in self.batches if b.line_for(orderid) is not None), None)

    # -- the new domain's own rules: actions -------------------------------------------

    def add_batch(self, batch: Batch) -> None:
        """Add ``batch`` in its place in the creation order (``batches`` is kept sorted
        by ``creation_number``, a batch without one counting as 0): after every batch
        when it has none (it gets the next one), else by that number."""
        self.decide_add_batch(batch.reference)
        numbers = [b.creation_number or 0 for b in self.batches]
        if batch.creation_number is None:
            batch.creation_number = max(numbers, default=0) + 1
        self.batches.insert(bisect.bisect_right(numbers, batch.creation_number), batch)
        self._changed()
        self.events.append(
            events.BatchCreated(batch.reference, self.sku, batch.purchased_quantity, batch.eta)
        )

    def allocate(self, line: OrderLine) -> str:
        """Allocate ``line`` with the new rule and return its batch's reference."""
        batchref = self.decide_allocation(line)
        self._batch(batchref).record(line)
        self._changed()
        self.events.append(events.Allocated(line.orderid, line.sku, line.qty, batchref))
        return batchref

    def deallocate(self, orderid: str) -> str:
        """Remove the order's line; return the reference of the batch that held it."""
        batchref = self.decide_deallocation(orderid)
        batch = self._batch(batchref)
        batch.deallocate(_held(batch, orderid))
        self._changed()
        self.events.append(events.Deallocated(orderid, self.sku, batchref))
        return batchref

    def set_batch_quantity(self, ref: str, qty: int) -> list[Move]:
        """Set batch ``ref``'s quantity and move the lines that no longer fit (see the
        module's description); return the moves. Setting the quantity a batch has
        already, with nothing to move, changes nothing."""
        moves = self.decide_batch_quantity(ref, qty)
        batch = self._batch(ref)
        if batch.purchased_quantity == qty and not moves:
            return []
        lines = [_held(batch, move.orderid) for move in moves]
        batch.change_purchased_quantity(qty)
        self._changed()
        self.events.append(events.BatchQuantityChanged(ref, self.sku, qty))
        for line in reversed(lines):  # newest allocation first, as legacy removes them
            batch.deallocate(line)
            self.events.append(events.Deallocated(line.orderid, self.sku, ref))
        for move, line in zip(moves, lines, strict=True):  # oldest first
            if move.to_batch is None:
                self.events.append(events.OutOfStock(self.sku))
                continue
            self._batch(move.to_batch).record(line)
            self.events.append(events.Allocated(line.orderid, line.sku, line.qty, move.to_batch))
        return moves

    def _batch(self, reference: str) -> Batch:
        batch = self.batch(reference)
        if batch is None:
            raise UnknownBatch(reference)
        return batch

    # -- mirroring legacy's decisions ---------------------------------------------------

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
            raise UnknownBatch(reference)
        if batch.purchased_quantity == qty:
            return
        batch.change_purchased_quantity(qty)
        self._changed()
        self.events.append(events.BatchQuantityChanged(reference, self.sku, qty))

    def _changed(self) -> None:
        self.version_number += 1

    def _violated(self, reason: str, detail: str) -> None:
        self.events.append(events.LegacyInvariantViolated(reason, self.sku, detail))
