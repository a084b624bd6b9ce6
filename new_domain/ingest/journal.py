"""The decision journal: each legacy write decision with what the new rules looked at.

With ``strangler consume --journal-decisions``, decision parity keeps, next to each
verdict, one JSON entry per legacy decision (table ``decision_journal``, written in the
same transaction as the effect): legacy's decision, and the product's state as the
allocation rules read it just before legacy decided. ``strangler decisions replay``
judges the journal again with the rules of the code that runs it (after a rule changed,
or with another tie-break), without touching any state.

The state is what the rules read, not the whole product, so that journaling costs no
read the judgement did not make: every batch in creation order (reference, eta,
purchased and allocated quantities), the batch holding the order's line (allocate and
deallocate), the lines of the batch whose quantity changed in allocation order, and the
product holding a batch reference (add batch). A rule that reads more than this cannot be
replayed from the journal; the replay says so where a decision needs a line it lacks.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date
from typing import Any

from new_domain.domain.model import Allocations, Batch, OrderLine, Product, TieBreak
from new_domain.ingest.decisions import (
    Allocation,
    Deallocation,
    LegacyDecision,
    NewBatch,
    QuantityChange,
    decision_words,
    describe,
    new_decision,
)

VERSION = 1
FILLER = "\x00allocated elsewhere"
"""The order id of the line standing for the allocations a journal entry does not list
(no order id from legacy can hold a NUL)."""


class JournalError(ValueError):
    """A journal entry this code cannot read."""


@dataclass(frozen=True)
class Restored:
    """A journal entry read back: the decision, the product as the rules saw it, and the
    product that held the new batch's reference (add batch)."""

    decision: LegacyDecision
    product: Product | None
    holder: Product | None


def entry(decision: LegacyDecision, product: Product | None, holder: Product | None) -> str:
    """The journal entry of ``decision`` taken on ``product`` (JSON text)."""
    state: dict[str, Any] = {"version": VERSION, "decision": _decision(decision)}
    if product is not None:
        state["product"] = _product(decision, product)
    if holder is not None:
        state["holder"] = _product(decision, holder)
    return json.dumps(state, separators=(",", ":"), sort_keys=True)


def restore(text: str) -> Restored:
    """Read a journal entry back (:class:`JournalError` when it is not one)."""
    try:
        state = json.loads(text)
        if state.get("version") != VERSION:
            raise JournalError(f"journal entry of version {state.get('version')!r}")
        decision = _read_decision(state["decision"])
        product = _read_product(state["product"]) if "product" in state else None
        holder = _read_product(state["holder"]) if "holder" in state else None
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        if isinstance(error, JournalError):
            raise
        raise JournalError(f"unreadable journal entry: {error}") from None
    return Restored(decision, product, holder)


def _decision(decision: LegacyDecision) -> dict[str, Any]:
    match decision:
        case Allocation():
            return {"kind": "allocate", "orderid": decision.orderid, "sku": decision.sku,
                    "qty": decision.qty, "batchref": decision.batchref}  # fmt: skip
        case Deallocation():
            return {"kind": "deallocate", "orderid": decision.orderid, "sku": decision.sku,
                    "batchref": decision.batchref}  # fmt: skip
        case NewBatch():
            return {"kind": "add_batch", "ref": decision.ref, "sku": decision.sku}
        case QuantityChange():
            moves = sorted(decision.moves, key=lambda m: (m[0], m[1] or ""))
            return {"kind": "change_quantity", "ref": decision.ref, "sku": decision.sku,
                    "qty": decision.qty, "moves": [list(m) for m in moves]}  # fmt: skip


def _read_decision(data: dict[str, Any]) -> LegacyDecision:
    kind = data["kind"]
    if kind == "allocate":
        return Allocation(data["orderid"], data["sku"], int(data["qty"]), data["batchref"])
    if kind == "deallocate":
        return Deallocation(data["orderid"], data["sku"], data["batchref"])
    if kind == "add_batch":
        return NewBatch(data["ref"], data["sku"])
    if kind == "change_quantity":
        moves = frozenset((str(m[0]), None if m[1] is None else str(m[1])) for m in data["moves"])
        return QuantityChange(data["ref"], data["sku"], int(data["qty"]), moves)
    raise JournalError(f"unknown decision kind {kind!r}")


def _product(decision: LegacyDecision, product: Product) -> dict[str, Any]:
    """The product as the rules read it for ``decision``."""
    orderid = decision.orderid if isinstance(decision, Allocation | Deallocation) else None
    changed = decision.ref if isinstance(decision, QuantityChange) else None
    batches = []
    for batch in product.batches:
        listed: list[list[Any]] = []
        if batch.reference == changed:
            listed = [[line.orderid, line.qty] for line in batch.allocations_in_order()]
        elif orderid is not None and (line := batch.line_for(orderid)) is not None:
            listed = [[line.orderid, line.qty]]
        eta = batch.eta.isoformat() if batch.eta else None
        batches.append(
            [batch.reference, eta, batch.purchased_quantity, batch.allocated_quantity, listed]
        )
    return {"sku": product.sku, "version": product.version_number, "batches": batches}


def _read_product(data: dict[str, Any]) -> Product:
    sku = str(data["sku"])
    batches = []
    for reference, eta, purchased, allocated, listed in data["batches"]:
        lines = [OrderLine(str(orderid), sku, int(qty)) for orderid, qty in listed]
        rest = int(allocated) - sum(line.qty for line in lines)
        if rest < 0:
            raise JournalError(f"batch {reference!r} lists more than it has allocated")
        filler = [OrderLine(FILLER, sku, rest)] if rest else []
        batch = Batch(
            str(reference),
            sku,
            int(purchased),
            date.fromisoformat(eta) if eta else None,
            Allocations([*filler, *lines]),
        )
        batches.append(batch)
    return Product(sku, batches, version_number=int(data["version"]))


@dataclass(frozen=True)
class Rejudged:
    """A journaled decision judged again: the route, both decisions in decision parity's
    words, whether they agree now, and the product's state when they do not."""

    route: str
    sku: str
    agree: bool
    legacy: str
    new: str
    state: str


def rejudge(text: str, tie_break: TieBreak = TieBreak.CREATED) -> Rejudged:
    """Judge the journal entry ``text`` with this code's rules and ``tie_break``
    (:class:`JournalError` when it cannot be read); nothing is changed anywhere."""
    restored = restore(text)
    decision, product = restored.decision, restored.product
    if product is not None:
        product.tie_break = tie_break
    route, legacy = decision_words(decision)
    new = new_decision(decision, product, restored.holder)
    agree = new == legacy
    state = "" if agree else describe(product).replace(FILLER, "others")
    return Rejudged(route, decision.sku, agree, legacy, new, state)
