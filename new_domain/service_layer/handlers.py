"""Handlers: plain functions; their parameters name their dependencies.

The two tables at the bottom are the routing table bootstrap wires into the bus.
``add_batch``, ``allocate``, ``deallocate`` and ``set_batch_quantity`` apply the new
domain's own rules and let its refusals (``DomainError``) propagate, so nothing commits;
the owner handlers decide with the ``tie_break`` bootstrap injects. The ``mirror_*``,
``sync_allocation`` and ``change_batch_quantity`` handlers mirror legacy's decisions.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from new_domain import metrics
from new_domain.domain import commands, events
from new_domain.domain.model import (
    Batch,
    DuplicateBatch,
    Move,
    OrderLine,
    Product,
    TieBreak,
    UnknownBatch,
    UnknownSku,
)
from new_domain.service_layer.unit_of_work import AbstractUnitOfWork

logger = logging.getLogger(__name__)

InvalidSku = UnknownSku
"""The book's name for an allocation of an unknown sku."""


# -- the new domain's own rules -------------------------------------------------------


def add_batch(command: commands.CreateBatch, uow: AbstractUnitOfWork) -> None:
    with uow:
        if uow.products.get_by_batchref(command.ref) is not None:
            raise DuplicateBatch(command.ref)
        product = _product(uow, command.sku)
        number = command.creation_number
        product.add_batch(Batch(command.ref, command.sku, command.qty, command.eta, None, number))
        uow.commit()


def allocate(
    command: commands.Allocate, uow: AbstractUnitOfWork, tie_break: TieBreak = TieBreak.CREATED
) -> str:
    with uow:
        product = _owned(uow.products.get(command.sku), command.sku, tie_break)
        batchref = product.allocate(OrderLine(command.orderid, command.sku, command.qty))
        uow.commit()
    return batchref


def deallocate(command: commands.Deallocate, uow: AbstractUnitOfWork) -> str:
    with uow:
        product = uow.products.get(command.sku)
        if product is None:
            raise UnknownSku(command.sku)
        batchref = product.deallocate(command.orderid)
        uow.commit()
    return batchref


def set_batch_quantity(
    command: commands.SetBatchQuantity,
    uow: AbstractUnitOfWork,
    tie_break: TieBreak = TieBreak.CREATED,
) -> list[Move]:
    with uow:
        product = uow.products.get_by_batchref(command.ref)
        if product is None:
            raise UnknownBatch(command.ref)
        product.tie_break = tie_break
        moves = product.set_batch_quantity(command.ref, command.qty)
        uow.commit()
    return moves


# -- mirroring legacy's decisions -----------------------------------------------------


def mirror_allocation(command: commands.MirrorAllocation, uow: AbstractUnitOfWork) -> None:
    with uow:
        product = _product(uow, command.sku)
        line = OrderLine(command.orderid, command.sku, command.qty)
        product.record_allocation(line, command.batchref)
        uow.commit()


def sync_allocation(command: commands.SyncAllocation, uow: AbstractUnitOfWork) -> None:
    with uow:
        product = _product(uow, command.sku)
        line = OrderLine(command.orderid, command.sku, command.qty)
        product.sync_allocation(line, command.batchref)
        uow.commit()


def mirror_deallocation(command: commands.MirrorDeallocation, uow: AbstractUnitOfWork) -> None:
    with uow:
        product = _product(uow, command.sku)
        product.record_deallocation(command.orderid, command.batchref)
        uow.commit()


def change_batch_quantity(command: commands.ChangeBatchQuantity, uow: AbstractUnitOfWork) -> None:
    with uow:
        product = uow.products.get_by_batchref(command.ref)
        if product is None:
            raise UnknownBatch(command.ref)
        product.change_batch_quantity(command.ref, command.qty)
        uow.commit()


def add_allocation_to_read_model(event: events.Allocated, uow: AbstractUnitOfWork) -> None:
    with uow:
        uow.allocations_view.add(event.orderid, event.sku, event.batchref)
        uow.commit()


def remove_allocation_from_read_model(event: events.Deallocated, uow: AbstractUnitOfWork) -> None:
    with uow:
        uow.allocations_view.remove(event.orderid, event.sku, event.batchref)
        uow.commit()


def record_anomaly(event: events.LegacyInvariantViolated, uow: AbstractUnitOfWork) -> None:
    with uow:
        change_id = uow.change_id
        uow.anomalies.record(event.reason, event.sku, event.detail, change_id)
        uow.after_commit(lambda: _report_anomaly(event, change_id))
        uow.commit()


def add_to_outbox(
    event: events.BatchCreated
    | events.Allocated
    | events.Deallocated
    | events.BatchQuantityChanged,
    uow: AbstractUnitOfWork,
) -> None:
    with uow:
        uow.outbox.add(event, uow.change_id)
        uow.commit()


def log_out_of_stock(event: events.OutOfStock) -> None:
    logger.info("out of stock: %s", event.sku)


def _report_anomaly(event: events.LegacyInvariantViolated, change_id: str | None) -> None:
    logger.warning(
        "legacy anomaly (%s) for sku %s: %s [change %s]",
        event.reason,
        event.sku,
        event.detail,
        change_id,
    )
    metrics.ANOMALIES.labels(kind=event.reason).inc()


def _owned(product: Product | None, sku: str, tie_break: TieBreak) -> Product:
    """``product``, deciding with ``tie_break``; ``UnknownSku`` if there is none."""
    if product is None:
        raise UnknownSku(sku)
    product.tie_break = tie_break
    return product


def _product(uow: AbstractUnitOfWork, sku: str) -> Product:
    """The product of ``sku``, created on first use."""
    product = uow.products.get(sku)
    if product is None:
        product = Product(sku)
        uow.products.add(product)
    return product


EVENT_HANDLERS: dict[type[events.Event], list[Callable[..., Any]]] = {
    events.BatchCreated: [add_to_outbox],
    events.Allocated: [add_allocation_to_read_model, add_to_outbox],
    events.Deallocated: [remove_allocation_from_read_model, add_to_outbox],
    events.BatchQuantityChanged: [add_to_outbox],
    events.OutOfStock: [log_out_of_stock],
    events.LegacyInvariantViolated: [record_anomaly],
}

COMMAND_HANDLERS: dict[type[commands.Command], Callable[..., Any]] = {
    commands.CreateBatch: add_batch,
    commands.Allocate: allocate,
    commands.Deallocate: deallocate,
    commands.SetBatchQuantity: set_batch_quantity,
    commands.MirrorAllocation: mirror_allocation,
    commands.SyncAllocation: sync_allocation,
    commands.MirrorDeallocation: mirror_deallocation,
    commands.ChangeBatchQuantity: change_batch_quantity,
}
