"""Events: facts that happened in the domain (handlers may react to each)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date


class Event:
    """Base class of every event."""


@dataclass(frozen=True)
class BatchCreated(Event):
    ref: str
    sku: str
    qty: int
    eta: date | None


@dataclass(frozen=True)
class Allocated(Event):
    orderid: str
    sku: str
    qty: int
    batchref: str


@dataclass(frozen=True)
class Deallocated(Event):
    orderid: str
    sku: str
    batchref: str


@dataclass(frozen=True)
class BatchQuantityChanged(Event):
    ref: str
    sku: str
    qty: int


@dataclass(frozen=True)
class OutOfStock(Event):
    sku: str


@dataclass(frozen=True)
class OwnershipMoved(Event):
    """A write group's ownership rule changed (epoch ``epoch``); its fence comes back
    through legacy (see docs/write-path.md)."""

    group: str
    epoch: int
    rule: str
    previous_rule: str


@dataclass(frozen=True)
class LegacyInvariantViolated(Event):
    """The legacy system did something the new model forbids; its fact was kept anyway.

    ``reason`` is a short code (``unknown_batch``, ``insufficient_stock``,
    ``already_allocated``, ``not_allocated``, ``duplicate_batch``, ``unsupported_change``);
    ``detail`` says what happened in one line.
    """

    reason: str
    sku: str | None
    detail: str
