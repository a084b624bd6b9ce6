"""Decision parity: every legacy write decision, judged against the new rules.

The consumer applies legacy's changes in commit order, so just before it applies a
legacy transaction the new model holds exactly legacy's state before that transaction.
When the transaction is one write decision (the anti-corruption layer recognises it by
its shape: see :class:`~new_domain.ingest.translators.Recognizer`), the new rules are
asked what they would have decided on that state, without changing it (the model's
``decide_*`` methods), and the verdict (agree, or differ with both decisions and the
product's state) is recorded in the same database transaction as the change's effect:
exactly once, like the effect. This is dark launching without a side effect, and more
exact than comparing answers could be for writes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from new_domain.domain.model import DomainError, OrderLine, Product, TieBreak
from new_domain.ingest.ports import Verdict

if TYPE_CHECKING:
    from new_domain.service_layer.unit_of_work import AbstractUnitOfWork

ALLOCATE = "POST /allocate"
DEALLOCATE = "POST /deallocate"
ADD_BATCH = "POST /batches"
CHANGE_QUANTITY = "PATCH /batches/<ref>"
WRITE_ROUTES = (ADD_BATCH, CHANGE_QUANTITY, ALLOCATE, DEALLOCATE)

Moves = frozenset[tuple[str, str | None]]
"""Order lines a quantity change moved: (orderid, batch it went to, or None)."""


@dataclass(frozen=True)
class Allocation:
    """Legacy allocated the order's line of ``sku`` to ``batchref``."""

    orderid: str
    sku: str
    qty: int
    batchref: str


@dataclass(frozen=True)
class Deallocation:
    """Legacy removed the order's allocated line of ``sku`` (from ``batchref``)."""

    orderid: str
    sku: str
    batchref: str


@dataclass(frozen=True)
class NewBatch:
    """Legacy created batch ``ref`` of ``sku``."""

    ref: str
    sku: str


@dataclass(frozen=True)
class QuantityChange:
    """Legacy set batch ``ref``'s quantity to ``qty`` and moved these lines off it."""

    ref: str
    sku: str
    qty: int
    moves: Moves


LegacyDecision = Allocation | Deallocation | NewBatch | QuantityChange


def judge(
    decision: LegacyDecision, uow: AbstractUnitOfWork, tie_break: TieBreak = TieBreak.CREATED
) -> Verdict:
    """What the new rules (with ``tie_break`` between batches of equal eta) decide on the
    unit of work's current state, next to legacy's."""
    route, legacy = decision_words(decision)
    product = uow.products.get(decision.sku)
    if product is not None:
        product.tie_break = tie_break
    new = new_decision(decision, product, holder_of(decision, uow))
    agree = new == legacy
    state = "" if agree else describe(product)
    return Verdict(route, decision.sku, agree, legacy, new, state)


def holder_of(decision: LegacyDecision, uow: AbstractUnitOfWork) -> Product | None:
    """For a new batch, the product that holds its reference already (references are
    unique across products); None for the other decisions."""
    if isinstance(decision, NewBatch):
        return uow.products.get_by_batchref(decision.ref)
    return None


def new_decision(decision: LegacyDecision, product: Product | None, holder: Product | None) -> str:
    """What the new rules decide for ``decision`` on ``product`` (``holder``: see
    :func:`holder_of`), in decision parity's words; a refusal names its domain error."""
    try:
        return _new(decision, product, holder)
    except DomainError as refused:
        return f"refused: {type(refused).__name__}: {refused}"


def decision_words(decision: LegacyDecision) -> tuple[str, str]:
    """The write route that takes ``decision`` and what it decided, in decision parity's
    words (``"POST /allocate"``, ``"allocated to b1"``): the words of an origin marker's
    ``route`` and ``summary`` too."""
    match decision:
        case Allocation():
            return ALLOCATE, f"allocated to {decision.batchref}"
        case Deallocation():
            return DEALLOCATE, f"deallocated from {decision.batchref}"
        case NewBatch():
            return ADD_BATCH, "created"
        case QuantityChange():
            return CHANGE_QUANTITY, _moves(decision.moves)


def _new(decision: LegacyDecision, product: Product | None, holder: Product | None) -> str:
    if isinstance(decision, NewBatch):  # batch references are unique across products
        if holder is not None:
            holder.decide_add_batch(decision.ref)
        return "created"
    if product is None:
        return f"refused: UnknownSku: unknown sku {decision.sku}"
    match decision:
        case Allocation():
            line = OrderLine(decision.orderid, decision.sku, decision.qty)
            return f"allocated to {product.decide_allocation(line)}"
        case Deallocation():
            return f"deallocated from {product.decide_deallocation(decision.orderid)}"
        case QuantityChange():
            moves = product.decide_batch_quantity(decision.ref, decision.qty)
            return _moves(frozenset((m.orderid, m.to_batch) for m in moves))


def _moves(moves: Moves) -> str:
    if not moves:
        return "no line moved"
    return "; ".join(f"{orderid} -> {to or 'unallocated'}" for orderid, to in sorted(moves))


def describe(product: Product | None) -> str:
    """The product's batches as the new rules saw them: quantity, eta, allocations."""
    if product is None:
        return "no such product"
    parts = []
    for batch in product.batches:
        lines = ", ".join(
            f"{line.orderid}:{line.qty}" for line in sorted(batch.allocations, key=str)
        )
        eta = batch.eta.isoformat() if batch.eta else "warehouse"
        parts.append(f"{batch.reference} ({eta}, {batch.purchased_quantity}): {lines or '-'}")
    return f"{product.sku} v{product.version_number}: " + "; ".join(parts)
