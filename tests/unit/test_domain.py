"""The allocation model on its own: batches, the new domain's own write rules (the
book's scenarios and legacy's refusals), mirroring legacy."""

from __future__ import annotations

from datetime import date, timedelta

import pytest

from new_domain.domain import events
from new_domain.domain.model import (
    AlreadyAllocated,
    Batch,
    DuplicateBatch,
    Move,
    NotAllocated,
    OrderLine,
    OutOfStock,
    Product,
    TieBreak,
    UnknownBatch,
)

today = date(2024, 5, 1)
tomorrow = today + timedelta(days=1)
later = today + timedelta(days=10)


def make_batch_and_line(sku: str, batch_qty: int, line_qty: int) -> tuple[Batch, OrderLine]:
    return Batch("batch-001", sku, batch_qty, eta=today), OrderLine("order-123", sku, line_qty)


# -- batches ---------------------------------------------------------------------------


def test_allocating_to_a_batch_reduces_the_available_quantity() -> None:
    batch, line = make_batch_and_line("SMALL-TABLE", 20, 2)
    batch.allocate(line)
    assert batch.available_quantity == 18
    assert batch.allocations == {line}


def test_can_allocate_if_available_greater_than_or_equal_to_required() -> None:
    assert Batch("b", "LAMP", 20, None).can_allocate(OrderLine("o", "LAMP", 2))
    assert Batch("b", "LAMP", 2, None).can_allocate(OrderLine("o", "LAMP", 2))


def test_cannot_allocate_if_available_smaller_than_required() -> None:
    batch, line = make_batch_and_line("ELEGANT-LAMP", 2, 20)
    assert batch.can_allocate(line) is False
    batch.allocate(line)
    assert batch.available_quantity == 2


def test_cannot_allocate_if_skus_do_not_match() -> None:
    assert Batch("b", "CHAIR", 100, None).can_allocate(OrderLine("o", "TOASTER", 10)) is False


def test_allocation_is_idempotent() -> None:
    batch, line = make_batch_and_line("ANGULAR-DESK", 20, 2)
    batch.allocate(line)
    batch.allocate(line)
    assert batch.available_quantity == 18


def test_deallocate_only_removes_allocated_lines() -> None:
    batch, line = make_batch_and_line("DECORATIVE-TRINKET", 20, 2)
    batch.deallocate(line)
    assert batch.available_quantity == 20
    batch.allocate(line)
    batch.deallocate(line)
    assert batch.available_quantity == 20


def test_warehouse_stock_sorts_before_shipments_and_shipments_by_eta() -> None:
    warehouse = Batch("in-stock", "CLOCK", 1, None)
    soon = Batch("soon", "CLOCK", 1, tomorrow)
    late = Batch("late", "CLOCK", 1, later)
    assert sorted([late, warehouse, soon]) == [warehouse, soon, late]


def test_order_lines_are_frozen_values() -> None:
    line = OrderLine("o1", "LAMP", 3)
    assert line == OrderLine("o1", "LAMP", 3)
    with pytest.raises(AttributeError):
        line.qty = 4  # type: ignore[misc]


# -- the product aggregate --------------------------------------------------------------


def test_allocate_prefers_warehouse_stock_then_the_earliest_eta() -> None:
    product = Product(
        "CLOCK",
        [
            Batch("late", "CLOCK", 100, later),
            Batch("in-stock", "CLOCK", 100, None),
            Batch("soon", "CLOCK", 100, tomorrow),
        ],
    )
    assert product.allocate(OrderLine("o1", "CLOCK", 10)) == "in-stock"
    assert product.events == [events.Allocated("o1", "CLOCK", 10, "in-stock")]


def test_allocate_skips_batches_without_enough_stock() -> None:
    product = Product(
        "CLOCK", [Batch("in-stock", "CLOCK", 5, None), Batch("soon", "CLOCK", 50, today)]
    )
    assert product.allocate(OrderLine("o1", "CLOCK", 10)) == "soon"


def test_allocate_when_nothing_fits_is_refused_and_changes_nothing() -> None:
    product = Product("FORK", [Batch("b1", "FORK", 10, None)], version_number=3)
    with pytest.raises(OutOfStock, match="no batch of sku FORK has 11 units available"):
        product.allocate(OrderLine("o1", "FORK", 11))
    assert product.events == []
    assert product.version_number == 3
    assert product.batch("b1").allocations == frozenset()  # type: ignore[union-attr]


def test_every_change_increments_the_version_number() -> None:
    product = Product("LAMP")
    product.add_batch(Batch("b1", "LAMP", 10, None))
    product.allocate(OrderLine("o1", "LAMP", 1))
    product.record_allocation(OrderLine("o2", "LAMP", 1), "b1")
    product.record_deallocation("o2", "b1")
    product.change_batch_quantity("b1", 5)
    assert product.version_number == 5


def test_adding_a_batch_twice_is_refused() -> None:
    product = Product("LAMP", [Batch("b1", "LAMP", 10, None)])
    with pytest.raises(DuplicateBatch):
        product.add_batch(Batch("b1", "LAMP", 3, None))


def test_batches_keep_their_creation_order_by_number() -> None:
    product = Product("LAMP")
    product.add_batch(Batch("b-7", "LAMP", 10, None, creation_number=7))
    product.add_batch(Batch("b-5", "LAMP", 10, None, creation_number=5))  # committed later
    product.add_batch(Batch("b-own", "LAMP", 10, None))  # no number: after every batch
    assert [(b.reference, b.creation_number) for b in product.batches] == [
        ("b-5", 5),
        ("b-7", 7),
        ("b-own", 8),
    ]
    # equal etas: the lowest number first, as legacy takes the lowest lot_id
    assert product.allocate(OrderLine("o1", "LAMP", 1)) == "b-5"


def test_changing_the_quantity_of_an_unknown_batch_is_refused() -> None:
    with pytest.raises(UnknownBatch):
        Product("LAMP").change_batch_quantity("nope", 3)


def test_mirrored_quantity_change_only_sets_the_quantity() -> None:
    """Legacy deallocates lines that no longer fit itself; those arrive as their own changes."""
    batch = Batch("b1", "LAMP", 10, None)
    product = Product("LAMP", [batch])
    product.record_allocation(OrderLine("o1", "LAMP", 8), "b1")
    product.events.clear()
    product.change_batch_quantity("b1", 5)
    assert batch.allocations == {OrderLine("o1", "LAMP", 8)}
    assert batch.available_quantity == -3
    assert product.events == [events.BatchQuantityChanged("b1", "LAMP", 5)]


def test_record_allocation_keeps_legacy_fact_and_reports_short_stock() -> None:
    batch = Batch("b1", "LAMP", 2, None)
    product = Product("LAMP", [batch])
    product.record_allocation(OrderLine("o1", "LAMP", 5), "b1")
    assert batch.allocations == {OrderLine("o1", "LAMP", 5)}
    assert [type(e) for e in product.events] == [events.LegacyInvariantViolated, events.Allocated]
    violation = product.events[0]
    assert isinstance(violation, events.LegacyInvariantViolated)
    assert violation.reason == "insufficient_stock"


def test_record_deallocation_of_a_line_not_held_reports_it() -> None:
    product = Product("LAMP", [Batch("b1", "LAMP", 2, None)], version_number=1)
    product.record_deallocation("o1", "b1")
    assert product.events == [
        events.LegacyInvariantViolated(
            "not_allocated", "LAMP", "order o1 deallocated from b1 but not held there"
        ),
        events.Deallocated("o1", "LAMP", "b1"),
    ]
    assert product.version_number == 1


# -- snapshot reads: idempotent upserts ------------------------------------------------


def test_syncing_an_allocation_already_held_changes_nothing() -> None:
    product = Product("LAMP", [Batch("b1", "LAMP", 10, None)])
    product.record_allocation(OrderLine("o1", "LAMP", 2), "b1")
    product.events.clear()
    version = product.version_number
    product.sync_allocation(OrderLine("o1", "LAMP", 2), "b1")
    assert product.events == []
    assert product.version_number == version


def test_syncing_an_allocation_held_elsewhere_moves_it() -> None:
    product = Product("LAMP", [Batch("b1", "LAMP", 10, None), Batch("b2", "LAMP", 10, None)])
    product.record_allocation(OrderLine("o1", "LAMP", 2), "b1")
    product.events.clear()
    product.sync_allocation(OrderLine("o1", "LAMP", 3), "b2")
    assert product.events == [
        events.Deallocated("o1", "LAMP", "b1"),
        events.Allocated("o1", "LAMP", 3, "b2"),
    ]
    assert product.batch("b1").allocations == frozenset()  # type: ignore[union-attr]
    assert product.batch("b2").allocated_quantity == 3  # type: ignore[union-attr]


def test_setting_the_quantity_a_batch_has_is_no_change() -> None:
    product = Product("LAMP", [Batch("b1", "LAMP", 10, None)], version_number=1)
    product.change_batch_quantity("b1", 10)
    assert product.events == [] and product.version_number == 1


def test_a_batch_holds_one_line_per_order_and_knows_its_total() -> None:
    batch = Batch("b1", "LAMP", 10, None)
    batch.allocate(OrderLine("o1", "LAMP", 2))
    batch.allocate(OrderLine("o1", "LAMP", 3))  # the order holds a line here already
    batch.record(OrderLine("o2", "LAMP", 4))
    batch.record(OrderLine("o2", "LAMP", 1))  # replaces o2's line
    assert batch.allocations == {OrderLine("o1", "LAMP", 2), OrderLine("o2", "LAMP", 1)}
    assert batch.allocated_quantity == 3
    assert batch.line_for("o2") == OrderLine("o2", "LAMP", 1)


# -- the book's product scenarios, on the new domain's own rules -----------------------


def test_prefers_current_stock_batches_to_shipments() -> None:
    in_stock = Batch("in-stock-batch", "RETRO-CLOCK", 100, eta=None)
    shipment = Batch("shipment-batch", "RETRO-CLOCK", 100, eta=tomorrow)
    product = Product("RETRO-CLOCK", [in_stock, shipment])
    product.allocate(OrderLine("oref", "RETRO-CLOCK", 10))
    assert in_stock.available_quantity == 90
    assert shipment.available_quantity == 100


def test_prefers_earlier_batches() -> None:
    earliest = Batch("speedy-batch", "MINIMALIST-SPOON", 100, eta=today)
    medium = Batch("normal-batch", "MINIMALIST-SPOON", 100, eta=tomorrow)
    latest = Batch("slow-batch", "MINIMALIST-SPOON", 100, eta=later)
    product = Product("MINIMALIST-SPOON", [medium, earliest, latest])
    product.allocate(OrderLine("order1", "MINIMALIST-SPOON", 10))
    assert earliest.available_quantity == 90
    assert medium.available_quantity == 100
    assert latest.available_quantity == 100


def test_returns_allocated_batch_ref() -> None:
    in_stock = Batch("in-stock-batch-ref", "HIGHBROW-POSTER", 100, eta=None)
    shipment = Batch("shipment-batch-ref", "HIGHBROW-POSTER", 100, eta=tomorrow)
    product = Product("HIGHBROW-POSTER", [in_stock, shipment])
    assert product.allocate(OrderLine("oref", "HIGHBROW-POSTER", 10)) == "in-stock-batch-ref"


def test_outputs_allocated_event() -> None:
    product = Product("RED-CHAIR", [Batch("batchref", "RED-CHAIR", 100, eta=None)])
    product.allocate(OrderLine("oref", "RED-CHAIR", 10))
    assert product.events[-1] == events.Allocated("oref", "RED-CHAIR", 10, "batchref")


def test_raises_out_of_stock_exception_if_cannot_allocate() -> None:
    product = Product("SMALL-FORK", [Batch("batch1", "SMALL-FORK", 10, eta=today)])
    product.allocate(OrderLine("order1", "SMALL-FORK", 10))
    with pytest.raises(OutOfStock, match="SMALL-FORK") as refused:
        product.allocate(OrderLine("order2", "SMALL-FORK", 1))
    assert (refused.value.sku, refused.value.qty) == ("SMALL-FORK", 1)


def test_increments_version_number() -> None:
    product = Product("SCANDI-PEN", [Batch("b1", "SCANDI-PEN", 100, eta=None)], version_number=7)
    product.allocate(OrderLine("oref", "SCANDI-PEN", 10))
    assert product.version_number == 8


def test_records_out_of_stock_event_when_a_cut_line_fits_nowhere() -> None:
    """The book emits OutOfStock when a reallocation finds no batch: the line stays
    unallocated, as in legacy."""
    batch = Batch("batch1", "SMALL-FORK", 10, eta=today)
    product = Product("SMALL-FORK", [batch])
    product.allocate(OrderLine("order1", "SMALL-FORK", 10))
    product.events.clear()
    assert product.set_batch_quantity("batch1", 5) == [Move("order1", "batch1", None)]
    assert product.events == [
        events.BatchQuantityChanged("batch1", "SMALL-FORK", 5),
        events.Deallocated("order1", "SMALL-FORK", "batch1"),
        events.OutOfStock("SMALL-FORK"),
    ]
    assert batch.allocations == frozenset()


# -- legacy's refusals ------------------------------------------------------------------


def test_an_order_holding_a_line_in_the_chosen_batch_is_refused() -> None:
    """Formerly allocate raised Allocated and bumped the version while the batch ignored
    the line; legacy answers 409 already allocated."""
    batch = Batch("b1", "LAMP", 10, None)
    product = Product("LAMP", [batch])
    product.allocate(OrderLine("o1", "LAMP", 2))
    product.events.clear()
    version = product.version_number
    with pytest.raises(
        AlreadyAllocated, match="^order o1 already has sku LAMP allocated to batch b1$"
    ):
        product.allocate(OrderLine("o1", "LAMP", 3))
    assert product.events == []
    assert product.version_number == version
    assert batch.allocations == {OrderLine("o1", "LAMP", 2)}


def test_an_order_holding_a_line_in_another_batch_is_refused() -> None:
    full = Batch("full", "LAMP", 2, None)
    spare = Batch("spare", "LAMP", 10, None)
    product = Product("LAMP", [full, spare])
    product.allocate(OrderLine("o1", "LAMP", 2))
    with pytest.raises(AlreadyAllocated) as refused:
        product.allocate(OrderLine("o1", "LAMP", 1))  # would otherwise go to "spare"
    assert refused.value.batchref == "full"
    assert spare.allocations == frozenset()


def test_deallocate_removes_the_orders_line_and_names_its_batch() -> None:
    batch = Batch("b1", "LAMP", 10, None)
    product = Product("LAMP", [batch], version_number=2)
    product.allocate(OrderLine("o1", "LAMP", 4))
    product.events.clear()
    assert product.deallocate("o1") == "b1"
    assert batch.available_quantity == 10
    assert product.events == [events.Deallocated("o1", "LAMP", "b1")]
    assert product.version_number == 4


def test_deallocating_an_order_without_a_line_is_refused() -> None:
    product = Product("LAMP", [Batch("b1", "LAMP", 10, None)], version_number=2)
    with pytest.raises(NotAllocated, match="^order o1 has no allocation of sku LAMP$"):
        product.deallocate("o1")
    assert product.events == [] and product.version_number == 2


def test_a_duplicate_batch_is_refused_with_legacys_detail() -> None:
    product = Product("LAMP", [Batch("b1", "LAMP", 10, None)])
    with pytest.raises(DuplicateBatch, match="^batch b1 already exists$"):
        product.decide_add_batch("b1")
    assert product.decide_add_batch("b2") is None


def test_setting_the_quantity_of_an_unknown_batch_is_refused() -> None:
    product = Product("LAMP", [Batch("b1", "LAMP", 10, None)])
    with pytest.raises(UnknownBatch, match="^no batch nope$"):
        product.set_batch_quantity("nope", 3)


# -- the tie-break between batches with the same eta ------------------------------------


def tied_product(tie_break: TieBreak) -> Product:
    """Created in the order b-2, b-1: creation and reference order disagree."""
    return Product(
        "LAMP",
        [Batch("b-2", "LAMP", 10, tomorrow), Batch("b-1", "LAMP", 10, tomorrow)],
        tie_break=tie_break,
    )


def test_equal_etas_go_by_creation_order_by_default() -> None:
    assert Product("LAMP").tie_break is TieBreak.CREATED
    product = tied_product(TieBreak.CREATED)
    assert product.allocate(OrderLine("o1", "LAMP", 1)) == "b-2"


def test_equal_etas_can_go_by_reference_order() -> None:
    product = tied_product(TieBreak.REFERENCE)
    assert product.allocate(OrderLine("o1", "LAMP", 1)) == "b-1"


@pytest.mark.parametrize(("tie_break", "chosen"), [("created", "w-b"), ("reference", "w-a")])
def test_warehouse_batches_tie_too(tie_break: str, chosen: str) -> None:
    product = Product(
        "LAMP",
        [
            Batch("s-0", "LAMP", 10, today),
            Batch("w-b", "LAMP", 10, None),
            Batch("w-a", "LAMP", 10, None),
        ],
        tie_break=TieBreak(tie_break),
    )
    assert product.decide_allocation(OrderLine("o1", "LAMP", 1)) == chosen


def test_the_tie_break_only_orders_equal_etas() -> None:
    product = Product(
        "LAMP",
        [Batch("z-soon", "LAMP", 10, tomorrow), Batch("a-late", "LAMP", 10, later)],
        tie_break=TieBreak.REFERENCE,
    )
    assert product.decide_allocation(OrderLine("o1", "LAMP", 1)) == "z-soon"


# -- a quantity cut moves the newest allocations ---------------------------------------


def allocated(product: Product, *lines: tuple[str, int]) -> None:
    for orderid, qty in lines:
        product.allocate(OrderLine(orderid, product.sku, qty))


def test_a_cut_deallocates_the_newest_lines_until_the_batch_fits() -> None:
    warehouse = Batch("warehouse", "LAMP", 10, None)
    shipment = Batch("shipment", "LAMP", 10, tomorrow)
    product = Product("LAMP", [warehouse, shipment])
    allocated(product, ("o-c", 3), ("o-a", 3), ("o-b", 3))  # not in order id order
    product.events.clear()
    assert product.set_batch_quantity("warehouse", 5) == [
        Move("o-a", "warehouse", "shipment"),
        Move("o-b", "warehouse", "shipment"),
    ]
    assert warehouse.allocations == {OrderLine("o-c", "LAMP", 3)}
    assert [line.orderid for line in shipment.allocations_in_order()] == ["o-a", "o-b"]
    assert product.events == [
        events.BatchQuantityChanged("warehouse", "LAMP", 5),
        events.Deallocated("o-b", "LAMP", "warehouse"),
        events.Deallocated("o-a", "LAMP", "warehouse"),
        events.Allocated("o-a", "LAMP", 3, "shipment"),
        events.Allocated("o-b", "LAMP", 3, "shipment"),
    ]


def test_a_cut_stops_removing_as_soon_as_the_batch_fits() -> None:
    batch = Batch("b1", "LAMP", 10, None)
    product = Product("LAMP", [batch, Batch("b2", "LAMP", 10, tomorrow)])
    allocated(product, ("old", 2), ("big", 5), ("new", 1))
    assert product.decide_batch_quantity("b1", 7) == [Move("new", "b1", "b2")]
    assert product.decide_batch_quantity("b1", 8) == []


def test_a_removed_line_can_fit_back_into_the_cut_batch() -> None:
    """Legacy reallocates with the allocate rule over every lot, the cut one included:
    removing a big line may leave room for a newer small one."""
    batch = Batch("b1", "LAMP", 10, None)
    product = Product("LAMP", [batch, Batch("b2", "LAMP", 10, tomorrow)])
    allocated(product, ("old", 4), ("big", 5), ("small", 1))
    moves = product.set_batch_quantity("b1", 5)
    assert moves == [Move("big", "b1", "b2"), Move("small", "b1", "b1")]
    assert batch.allocations == {OrderLine("old", "LAMP", 4), OrderLine("small", "LAMP", 1)}
    assert [line.orderid for line in batch.allocations_in_order()] == ["old", "small"]


def test_reallocated_lines_are_placed_oldest_first() -> None:
    """The older removed line gets the only room left elsewhere; the newer one none."""
    product = Product("LAMP", [Batch("b1", "LAMP", 6, None), Batch("b2", "LAMP", 3, tomorrow)])
    allocated(product, ("first", 3), ("second", 3))
    assert product.set_batch_quantity("b1", 0) == [
        Move("first", "b1", "b2"),
        Move("second", "b1", None),
    ]
    assert product.batch("b2").allocations == {OrderLine("first", "LAMP", 3)}  # type: ignore[union-attr]


def test_a_cut_bumps_the_version_once_and_a_no_change_not_at_all() -> None:
    product = Product("LAMP", [Batch("b1", "LAMP", 10, None), Batch("b2", "LAMP", 10, today)])
    allocated(product, ("o1", 4), ("o2", 4))
    version = product.version_number
    product.set_batch_quantity("b1", 4)
    assert product.version_number == version + 1
    product.events.clear()
    assert product.set_batch_quantity("b1", 4) == []
    assert product.events == [] and product.version_number == version + 1


def test_raising_the_quantity_moves_nothing() -> None:
    batch = Batch("b1", "LAMP", 10, None)
    product = Product("LAMP", [batch])
    allocated(product, ("o1", 10))
    product.events.clear()
    assert product.set_batch_quantity("b1", 20) == []
    assert product.events == [events.BatchQuantityChanged("b1", "LAMP", 20)]
    assert batch.available_quantity == 10


# -- allocation order -----------------------------------------------------------------


def test_a_batch_numbers_its_lines_in_allocation_order() -> None:
    batch = Batch("b1", "LAMP", 100, None)
    for orderid in ["o3", "o1", "o2"]:
        batch.allocate(OrderLine(orderid, "LAMP", 1))
    assert [batch.allocation_seq(o) for o in ["o3", "o1", "o2"]] == [1, 2, 3]
    batch.record(OrderLine("o3", "LAMP", 5))  # a replaced line keeps its place
    batch.deallocate(OrderLine("o1", "LAMP", 1))
    batch.allocate(OrderLine("o1", "LAMP", 1))  # allocated again: the newest
    assert [line.orderid for line in batch.allocations_in_order()] == ["o3", "o2", "o1"]
    assert batch.last_allocation_seq == 4
    assert batch.allocation_seq("nobody") is None
