"""Commands: what the new domain is asked to do (one handler each).

``CreateBatch``, ``Allocate``, ``Deallocate`` and ``SetBatchQuantity`` apply the new
domain's own rules (for a product whose writes it owns); ``MirrorAllocation``,
``SyncAllocation``, ``MirrorDeallocation`` and ``ChangeBatchQuantity`` mirror decisions
the legacy system took.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date


class Command:
    """Base class of every command."""


@dataclass(frozen=True)
class CreateBatch(Command):
    ref: str
    sku: str
    qty: int
    eta: date | None = None
    creation_number: int | None = None
    """Its place in its product's creation order when the source knows it (legacy's
    ``lot_id`` for a batch legacy created); None: after every batch of the product."""


@dataclass(frozen=True)
class Allocate(Command):
    """Choose a batch for an order line with the new domain's own rule."""

    orderid: str
    sku: str
    qty: int


@dataclass(frozen=True)
class Deallocate(Command):
    """Remove the order's allocated line of ``sku`` with the new domain's own rule."""

    orderid: str
    sku: str


@dataclass(frozen=True)
class SetBatchQuantity(Command):
    """Set a batch's quantity with the new domain's own rule: lines that no longer fit
    are moved (the newest allocations, reallocated oldest first)."""

    ref: str
    qty: int


@dataclass(frozen=True)
class MirrorAllocation(Command):
    """Record an allocation the legacy system already decided."""

    orderid: str
    sku: str
    qty: int
    batchref: str


@dataclass(frozen=True)
class SyncAllocation(Command):
    """Make the new domain hold the allocation a legacy snapshot shows (idempotent)."""

    orderid: str
    sku: str
    qty: int
    batchref: str


@dataclass(frozen=True)
class MirrorDeallocation(Command):
    """Record that the legacy system removed an allocation."""

    orderid: str
    sku: str
    batchref: str


@dataclass(frozen=True)
class ChangeBatchQuantity(Command):
    """Mirror legacy's new quantity of a batch (legacy moves the lines itself)."""

    ref: str
    qty: int
