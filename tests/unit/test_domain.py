"""The allocation model on its own: batches, the allocation rule, mirroring legacy."""

from __future__ import annotations

from datetime import date, timedelta

import pytest

from new_domain.domain import events
from new_domain.domain.model import Batch, DuplicateBatch, OrderLine, Product, UnknownBatch

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


def test_allocate_when_nothing_fits_emits_out_of_stock_and_changes_nothing() -> None:
    product = Product("FORK", [Batch("b1", "FORK", 10, None)], version_number=3)
    assert product.allocate(OrderLine("o1", "FORK", 11)) is None
    assert product.events == [events.OutOfStock("FORK")]
    assert product.version_number == 3


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
