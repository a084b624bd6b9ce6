"""The new domain's own write rules against legacy's, and their decisions being pure.

Random sequences of write requests go to the legacy shop's operations (on an in-memory
SQLite database) and to a ``Product`` side by side: every answer (the batch chosen, the
lines a quantity cut moved, the refusal) and the state after it must be the same. And
``decide_*`` never changes a product, whatever its state.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import date
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine, select
from sqlalchemy.engine import Connection, Engine

from examples.legacy_shop import errors as legacy_errors
from examples.legacy_shop import operations as legacy
from examples.legacy_shop.schema import (
    create_schema,
    cust_order_line,
    lot_allocation,
    stock_lot,
)
from new_domain.domain import model
from new_domain.domain.model import Batch, Move, OrderLine, Product, TieBreak

SKU = "LAMP"
REFS = ["b-c", "b-a", "b-d", "b-b"]  # created in this order: not reference order
ORDERS = [f"o{n}" for n in range(6)]
ETAS = [None, date(2024, 6, 1), date(2024, 7, 1)]

REFUSALS: dict[type[Exception], type[Exception]] = {
    legacy_errors.OutOfStock: model.OutOfStock,
    legacy_errors.AlreadyAllocated: model.AlreadyAllocated,
    legacy_errors.DuplicateBatch: model.DuplicateBatch,
}
"""Legacy's refusal -> the model's (``NotFound`` depends on the request: see below)."""


@dataclass(frozen=True)
class AddBatch:
    ref: str
    qty: int
    eta: date | None


@dataclass(frozen=True)
class Allocate:
    orderid: str
    qty: int


@dataclass(frozen=True)
class Deallocate:
    orderid: str


@dataclass(frozen=True)
class SetQuantity:
    ref: str
    qty: int


requests = st.one_of(
    st.builds(AddBatch, st.sampled_from(REFS), st.integers(0, 10), st.sampled_from(ETAS)),
    st.builds(Allocate, st.sampled_from(ORDERS), st.integers(1, 5)),
    st.builds(Allocate, st.sampled_from(ORDERS), st.integers(1, 3)),
    st.builds(Deallocate, st.sampled_from(ORDERS)),
    st.builds(SetQuantity, st.sampled_from(["b-first", *REFS]), st.integers(0, 12)),
    st.builds(SetQuantity, st.sampled_from(["b-first", *REFS]), st.integers(0, 4)),
)
first_batch = st.builds(AddBatch, st.just("b-first"), st.integers(0, 10), st.sampled_from(ETAS))


@contextmanager
def legacy_shop() -> Iterator[Engine]:
    engine = create_engine("sqlite://")
    create_schema(engine)
    try:
        yield engine
    finally:
        engine.dispose()


def ask_legacy(engine: Engine, request: object) -> object:
    """Legacy's answer: what it returned, or the type of its refusal."""
    operation: Callable[[Connection], Any]
    match request:
        case AddBatch(ref, qty, eta):
            operation = lambda c: legacy.add_batch(c, ref, SKU, qty, eta)  # noqa: E731
        case Allocate(orderid, qty):
            operation = lambda c: legacy.allocate(c, orderid, SKU, qty)  # noqa: E731
        case Deallocate(orderid):
            operation = lambda c: legacy.deallocate(c, orderid, SKU)  # noqa: E731
        case SetQuantity(ref, qty):
            operation = lambda c: legacy.change_batch_qty(c, ref, qty)  # noqa: E731
        case _:
            raise TypeError(request)
    try:
        with engine.begin() as connection:
            answer = operation(connection)
    except legacy_errors.NotFound:
        not_found = model.UnknownBatch if isinstance(request, SetQuantity) else model.NotAllocated
        return not_found
    except legacy_errors.ShopError as refused:
        return REFUSALS[type(refused)]
    if isinstance(answer, legacy.QtyChange):
        return (
            [(r.orderid, r.batchref) for r in answer.reallocated],
            [u.orderid for u in answer.unallocated],
        )
    return answer


def ask_model(product: Product, request: object) -> object:
    """The model's answer, in the same shape as :func:`ask_legacy`'s."""
    try:
        match request:
            case AddBatch(ref, qty, eta):
                product.add_batch(Batch(ref, SKU, qty, eta))
                return None
            case Allocate(orderid, qty):
                return product.allocate(OrderLine(orderid, SKU, qty))
            case Deallocate(orderid):
                return product.deallocate(orderid)
            case SetQuantity(ref, qty):
                moves = product.set_batch_quantity(ref, qty)
                return (
                    [(m.orderid, m.to_batch) for m in moves if m.to_batch is not None],
                    [m.orderid for m in moves if m.to_batch is None],
                )
    except model.DomainError as refused:
        return type(refused)
    raise TypeError(request)


def legacy_state(engine: Engine) -> dict[str, tuple[int, list[tuple[str, int]]]]:
    """Each lot's quantity and its lines in allocation order (``alloc_id``)."""
    with engine.connect() as connection:
        lots = dict(connection.execute(select(stock_lot.c.lot_ref, stock_lot.c.qty_units)).all())
        lines = connection.execute(
            select(stock_lot.c.lot_ref, cust_order_line.c.order_no, cust_order_line.c.qty_units)
            .join(lot_allocation, lot_allocation.c.lot_id == stock_lot.c.lot_id)
            .join(cust_order_line, cust_order_line.c.line_id == lot_allocation.c.line_id)
            .order_by(lot_allocation.c.alloc_id)
        ).all()
    return {
        ref: (qty, [(order, n) for lot, order, n in lines if lot == ref])
        for ref, qty in lots.items()
    }


def model_state(product: Product) -> dict[str, tuple[int, list[tuple[str, int]]]]:
    return {
        batch.reference: (
            batch.purchased_quantity,
            [(line.orderid, line.qty) for line in batch.allocations_in_order()],
        )
        for batch in product.batches
    }


@settings(max_examples=300, deadline=None)
@given(first=first_batch, steps=st.lists(requests, max_size=30))
@example(  # the older removed line takes the only room left elsewhere
    first=AddBatch("b-first", 6, None),
    steps=[
        AddBatch("b-c", 3, ETAS[1]),
        Allocate("o0", 3),
        Allocate("o1", 3),
        SetQuantity("b-first", 0),
    ],
)
@example(  # a newer small line fits back into the cut batch
    first=AddBatch("b-first", 10, None),
    steps=[
        AddBatch("b-c", 10, ETAS[1]),
        Allocate("o0", 4),
        Allocate("o1", 5),
        Allocate("o2", 1),
        SetQuantity("b-first", 5),
    ],
)
@example(  # equal etas: legacy takes the lot created first
    first=AddBatch("b-first", 0, ETAS[1]),
    steps=[AddBatch("b-c", 5, ETAS[1]), AddBatch("b-a", 5, ETAS[1]), Allocate("o0", 1)],
)
def test_the_model_decides_as_legacy_does(first: AddBatch, steps: list[object]) -> None:
    product = Product(SKU)
    with legacy_shop() as engine:
        for request in [first, *steps]:
            assert ask_model(product, request) == ask_legacy(engine, request), request
            assert model_state(product) == legacy_state(engine), request


def fingerprint(product: Product) -> object:
    """Everything a decision could change."""
    return (
        product.version_number,
        list(product.events),
        product.tie_break,
        [
            (
                batch.reference,
                batch.eta,
                batch.purchased_quantity,
                batch.allocated_quantity,
                batch.last_allocation_seq,
                [
                    (line, batch.allocation_seq(line.orderid))
                    for line in batch.allocations_in_order()
                ],
            )
            for batch in product.batches
        ],
    )


decisions = st.one_of(
    st.builds(
        lambda o, q: ("allocation", OrderLine(o, SKU, q)),
        st.sampled_from(ORDERS),
        st.integers(1, 8),
    ),
    st.builds(lambda o: ("deallocation", o), st.sampled_from(ORDERS)),
    st.builds(
        lambda r, q: ("batch_quantity", r, q),
        st.sampled_from(["b-first", *REFS]),
        st.integers(-1, 12),
    ),
    st.builds(lambda r: ("add_batch", r), st.sampled_from(["b-first", *REFS])),
)


@settings(max_examples=200, deadline=None)
@given(
    first=first_batch,
    steps=st.lists(requests, max_size=20),
    tie_break=st.sampled_from(TieBreak),
    asked=st.lists(decisions, min_size=1, max_size=5),
)
def test_decisions_never_change_the_product(
    first: AddBatch, steps: list[object], tie_break: TieBreak, asked: list[tuple[Any, ...]]
) -> None:
    product = Product(SKU, tie_break=tie_break)
    for request in [first, *steps]:
        ask_model(product, request)
    before = fingerprint(product)
    for kind, *arguments in asked:
        decide = getattr(product, f"decide_{kind}")
        with suppress(model.DomainError):
            decide(*arguments)
        assert fingerprint(product) == before


@settings(max_examples=150, deadline=None)
@given(
    first=first_batch,
    steps=st.lists(requests, max_size=20),
    tie_break=st.sampled_from(TieBreak),
    ref=st.sampled_from(["b-first", *REFS]),
    qty=st.integers(0, 12),
)
def test_a_cut_does_what_its_decision_says(
    first: AddBatch, steps: list[object], tie_break: TieBreak, ref: str, qty: int
) -> None:
    product = Product(SKU, tie_break=tie_break)
    for request in [first, *steps]:
        ask_model(product, request)
    if product.batch(ref) is None:
        return
    decided = product.decide_batch_quantity(ref, qty)
    held = {line.orderid: line for line in product.batch(ref).allocations}  # type: ignore[union-attr]
    assert product.set_batch_quantity(ref, qty) == decided
    for move in decided:
        where = [
            b.reference for b in product.batches if b.line_for(move.orderid) == held[move.orderid]
        ]
        assert where == ([] if move.to_batch is None else [move.to_batch])
    assert product.batch(ref).allocated_quantity <= max(qty, 0) or not decided  # type: ignore[union-attr]


def test_a_cut_decision_lists_moves() -> None:
    product = Product(SKU, [Batch("b1", SKU, 4, None), Batch("b2", SKU, 4, None)])
    product.allocate(OrderLine("o1", SKU, 4))
    assert product.decide_batch_quantity("b1", 0) == [Move("o1", "b1", "b2")]
    with pytest.raises(model.UnknownBatch):
        product.decide_batch_quantity("nope", 0)
