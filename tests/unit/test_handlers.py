"""Spec of the new domain's behaviour, driven through the real message bus with an
in-memory unit of work."""

from __future__ import annotations

from datetime import date

import pytest

from new_domain.bootstrap import bootstrap
from new_domain.domain import commands, events
from new_domain.domain.model import (
    AlreadyAllocated,
    DuplicateBatch,
    NotAllocated,
    OrderLine,
    OutOfStock,
    Product,
    TieBreak,
    UnknownBatch,
    UnknownSku,
)
from new_domain.service_layer.handlers import InvalidSku
from new_domain.service_layer.messagebus import MessageBus
from tests.fakes import InMemoryUnitOfWork


class FakeUnitOfWork(InMemoryUnitOfWork):
    pass


@pytest.fixture
def uow() -> FakeUnitOfWork:
    return FakeUnitOfWork()


@pytest.fixture
def bus(uow: FakeUnitOfWork) -> MessageBus:
    return bootstrap(uow=uow)


@pytest.fixture
def published(bus: MessageBus) -> list[events.Event]:
    """Every event the bus dispatched, in order."""
    seen: list[events.Event] = []
    for handlers in bus.event_handlers.values():
        handlers.append(seen.append)  # type: ignore[attr-defined]
    return seen


def product(uow: FakeUnitOfWork, sku: str) -> Product:
    found = uow.products.get(sku)
    assert found is not None
    return found


class TestAddBatch:
    def test_for_a_new_product_creates_it(self, bus: MessageBus, uow: FakeUnitOfWork) -> None:
        bus.handle(commands.CreateBatch("b1", "CRUNCHY-ARMCHAIR", 100, None))
        assert product(uow, "CRUNCHY-ARMCHAIR").batch("b1") is not None
        assert uow.commits == 1

    def test_for_an_existing_product_adds_to_it(self, bus: MessageBus, uow: FakeUnitOfWork) -> None:
        bus.handle(commands.CreateBatch("b1", "GARISH-RUG", 100, None))
        bus.handle(commands.CreateBatch("b2", "GARISH-RUG", 99, None))
        assert [b.reference for b in product(uow, "GARISH-RUG").batches] == ["b1", "b2"]

    def test_raises_batch_created(self, bus: MessageBus, published: list[events.Event]) -> None:
        bus.handle(commands.CreateBatch("b1", "RUG", 7, date(2024, 6, 1)))
        assert published == [events.BatchCreated("b1", "RUG", 7, date(2024, 6, 1))]

    def test_refuses_a_reference_used_by_another_product(self, bus: MessageBus) -> None:
        bus.handle(commands.CreateBatch("b1", "RUG", 7, None))
        with pytest.raises(DuplicateBatch):
            bus.handle(commands.CreateBatch("b1", "LAMP", 7, None))


class TestAllocate:
    def test_allocates_to_warehouse_stock_first(self, bus: MessageBus, uow: FakeUnitOfWork) -> None:
        bus.handle(commands.CreateBatch("shipment", "CLOCK", 100, date(2024, 6, 1)))
        bus.handle(commands.CreateBatch("warehouse", "CLOCK", 100, None))
        bus.handle(commands.Allocate("o1", "CLOCK", 10))
        assert product(uow, "CLOCK").batch("warehouse").available_quantity == 90  # type: ignore[union-attr]

    def test_then_the_earliest_shipment(self, bus: MessageBus, uow: FakeUnitOfWork) -> None:
        bus.handle(commands.CreateBatch("late", "CLOCK", 100, date(2024, 7, 1)))
        bus.handle(commands.CreateBatch("soon", "CLOCK", 100, date(2024, 6, 1)))
        bus.handle(commands.Allocate("o1", "CLOCK", 10))
        assert uow.allocations_view.rows_for("o1") == [("CLOCK", "soon")]

    def test_unknown_sku_is_an_error(self, bus: MessageBus) -> None:
        bus.handle(commands.CreateBatch("b1", "AREALSKU", 100, None))
        with pytest.raises(InvalidSku, match="NONEXISTENTSKU"):
            bus.handle(commands.Allocate("o1", "NONEXISTENTSKU", 10))

    def test_out_of_stock_is_refused_and_nothing_commits(
        self, bus: MessageBus, uow: FakeUnitOfWork, published: list[events.Event]
    ) -> None:
        bus.handle(commands.CreateBatch("b1", "POPULAR-CURTAINS", 9, None))
        published.clear()
        commits = uow.commits
        with pytest.raises(OutOfStock, match="POPULAR-CURTAINS"):
            bus.handle(commands.Allocate("o1", "POPULAR-CURTAINS", 10))
        assert published == []
        assert uow.commits == commits
        assert uow.allocations_view.rows_for("o1") == []

    def test_an_order_allocated_already_is_refused(
        self, bus: MessageBus, uow: FakeUnitOfWork, published: list[events.Event]
    ) -> None:
        bus.handle(commands.CreateBatch("b1", "LAMP", 9, None))
        bus.handle(commands.CreateBatch("b2", "LAMP", 9, None))
        bus.handle(commands.Allocate("o1", "LAMP", 9))
        published.clear()
        version = product(uow, "LAMP").version_number
        with pytest.raises(AlreadyAllocated, match="allocated to batch b1"):
            bus.handle(commands.Allocate("o1", "LAMP", 1))
        assert published == []
        assert product(uow, "LAMP").version_number == version
        assert uow.allocations_view.rows_for("o1") == [("LAMP", "b1")]

    def test_the_tie_break_comes_from_bootstrap(self) -> None:
        uow = FakeUnitOfWork()
        bus = bootstrap(uow=uow, tie_break=TieBreak.REFERENCE)
        bus.handle(commands.CreateBatch("b-2", "LAMP", 9, date(2024, 6, 1)))
        bus.handle(commands.CreateBatch("b-1", "LAMP", 9, date(2024, 6, 1)))
        bus.handle(commands.Allocate("o1", "LAMP", 1))
        assert uow.allocations_view.rows_for("o1") == [("LAMP", "b-1")]

    def test_by_default_equal_etas_go_by_creation(
        self, bus: MessageBus, uow: FakeUnitOfWork
    ) -> None:
        bus.handle(commands.CreateBatch("b-2", "LAMP", 9, date(2024, 6, 1)))
        bus.handle(commands.CreateBatch("b-1", "LAMP", 9, date(2024, 6, 1)))
        bus.handle(commands.Allocate("o1", "LAMP", 1))
        assert uow.allocations_view.rows_for("o1") == [("LAMP", "b-2")]

    def test_command_and_read_model_commit_together(
        self, bus: MessageBus, uow: FakeUnitOfWork
    ) -> None:
        bus.handle(commands.CreateBatch("b1", "LAMP", 9, None))
        commits = uow.commits
        bus.handle(commands.Allocate("o1", "LAMP", 1))
        assert uow.commits == commits + 1
        assert uow.allocations_view.rows_for("o1") == [("LAMP", "b1")]


class TestDeallocate:
    def test_removes_the_line_and_hides_it(
        self, bus: MessageBus, uow: FakeUnitOfWork, published: list[events.Event]
    ) -> None:
        bus.handle(commands.CreateBatch("b1", "LAMP", 10, None))
        bus.handle(commands.Allocate("o1", "LAMP", 3))
        published.clear()
        bus.handle(commands.Deallocate("o1", "LAMP"))
        assert published == [events.Deallocated("o1", "LAMP", "b1")]
        assert product(uow, "LAMP").batch("b1").available_quantity == 10  # type: ignore[union-attr]
        assert uow.allocations_view.rows_for("o1") == []

    def test_an_order_without_a_line_is_refused(self, bus: MessageBus, uow: FakeUnitOfWork) -> None:
        bus.handle(commands.CreateBatch("b1", "LAMP", 10, None))
        commits = uow.commits
        with pytest.raises(NotAllocated, match="^order o1 has no allocation of sku LAMP$"):
            bus.handle(commands.Deallocate("o1", "LAMP"))
        assert uow.commits == commits

    def test_an_unknown_sku_is_refused(self, bus: MessageBus) -> None:
        with pytest.raises(UnknownSku, match="^unknown sku NOPE$"):
            bus.handle(commands.Deallocate("o1", "NOPE"))


class TestSetBatchQuantity:
    """The book's ``ChangeBatchQuantity`` scenarios, with the new domain's own rule."""

    def test_changes_available_quantity(self, bus: MessageBus, uow: FakeUnitOfWork) -> None:
        bus.handle(commands.CreateBatch("batch1", "ADORABLE-SETTEE", 100, None))
        [batch] = product(uow, "ADORABLE-SETTEE").batches
        assert batch.available_quantity == 100
        bus.handle(commands.SetBatchQuantity("batch1", 50))
        assert batch.available_quantity == 50

    def test_reallocates_if_necessary(self, bus: MessageBus, uow: FakeUnitOfWork) -> None:
        bus.handle(commands.CreateBatch("batch1", "INDIFFERENT-TABLE", 50, None))
        bus.handle(commands.CreateBatch("batch2", "INDIFFERENT-TABLE", 50, date.today()))
        bus.handle(commands.Allocate("order1", "INDIFFERENT-TABLE", 20))
        bus.handle(commands.Allocate("order2", "INDIFFERENT-TABLE", 20))
        [batch1, batch2] = product(uow, "INDIFFERENT-TABLE").batches
        assert batch1.available_quantity == 10
        assert batch2.available_quantity == 50

        bus.handle(commands.SetBatchQuantity("batch1", 25))

        # the newest allocation, order2, is deallocated: 25 - 20
        assert batch1.available_quantity == 5
        # and its 20 reallocated to the next batch
        assert batch2.available_quantity == 30
        assert uow.allocations_view.rows_for("order2") == [("INDIFFERENT-TABLE", "batch2")]
        assert uow.allocations_view.rows_for("order1") == [("INDIFFERENT-TABLE", "batch1")]

    def test_publishes_the_moves_in_legacys_order(
        self, bus: MessageBus, uow: FakeUnitOfWork, published: list[events.Event]
    ) -> None:
        bus.handle(commands.CreateBatch("b1", "LAMP", 6, None))
        bus.handle(commands.CreateBatch("b2", "LAMP", 3, date(2024, 6, 1)))
        bus.handle(commands.Allocate("first", "LAMP", 3))
        bus.handle(commands.Allocate("second", "LAMP", 3))
        published.clear()
        bus.handle(commands.SetBatchQuantity("b1", 0))
        assert published == [
            events.BatchQuantityChanged("b1", "LAMP", 0),
            events.Deallocated("second", "LAMP", "b1"),
            events.Deallocated("first", "LAMP", "b1"),
            events.Allocated("first", "LAMP", 3, "b2"),
            events.OutOfStock("LAMP"),
        ]
        assert uow.allocations_view.rows_for("first") == [("LAMP", "b2")]
        assert uow.allocations_view.rows_for("second") == []
        assert [row["event_type"] for row in uow.outbox.rows] == [
            "BatchCreated",
            "BatchCreated",
            "Allocated",
            "Allocated",
            "BatchQuantityChanged",
            "Deallocated",
            "Deallocated",
            "Allocated",
        ]

    def test_an_unknown_batch_is_refused(self, bus: MessageBus) -> None:
        with pytest.raises(UnknownBatch, match="^no batch nope$"):
            bus.handle(commands.SetBatchQuantity("nope", 5))


class TestMirrorLegacy:
    def test_mirrored_allocation_is_held_and_shown(
        self, bus: MessageBus, uow: FakeUnitOfWork
    ) -> None:
        bus.handle(commands.CreateBatch("b1", "LAMP", 10, None))
        bus.handle(commands.CreateBatch("b2", "LAMP", 10, None))
        bus.handle(commands.MirrorAllocation("o1", "LAMP", 3, "b2"))
        assert product(uow, "LAMP").batch("b2").allocations == {OrderLine("o1", "LAMP", 3)}  # type: ignore[union-attr]
        assert uow.allocations_view.rows_for("o1") == [("LAMP", "b2")]
        assert uow.anomalies.recorded() == []

    def test_mirrored_deallocation_releases_and_hides(
        self, bus: MessageBus, uow: FakeUnitOfWork
    ) -> None:
        bus.handle(commands.CreateBatch("b1", "LAMP", 10, None))
        bus.handle(commands.MirrorAllocation("o1", "LAMP", 3, "b1"))
        bus.handle(commands.MirrorDeallocation("o1", "LAMP", "b1"))
        assert product(uow, "LAMP").batch("b1").available_quantity == 10  # type: ignore[union-attr]
        assert uow.allocations_view.rows_for("o1") == []

    def test_over_allocation_is_kept_and_recorded_as_an_anomaly(
        self, bus: MessageBus, uow: FakeUnitOfWork
    ) -> None:
        bus.handle(commands.CreateBatch("b1", "LAMP", 2, None))
        with uow:
            uow.change_id = "install:42"  # what apply_change sets while applying a change
            bus.handle(commands.MirrorAllocation("o1", "LAMP", 5, "b1"))
        assert product(uow, "LAMP").batch("b1").available_quantity == -3  # type: ignore[union-attr]
        [anomaly] = uow.anomalies.recorded()
        assert (anomaly.kind, anomaly.sku, anomaly.message_id) == (
            "insufficient_stock",
            "LAMP",
            "install:42",
        )
        assert uow.allocations_view.rows_for("o1") == [("LAMP", "b1")]

    def test_line_allocated_twice_is_recorded(self, bus: MessageBus, uow: FakeUnitOfWork) -> None:
        bus.handle(commands.CreateBatch("b1", "LAMP", 10, None))
        bus.handle(commands.CreateBatch("b2", "LAMP", 10, None))
        bus.handle(commands.MirrorAllocation("o1", "LAMP", 1, "b1"))
        bus.handle(commands.MirrorAllocation("o1", "LAMP", 1, "b2"))
        assert [a.kind for a in uow.anomalies.recorded()] == ["already_allocated"]
        assert uow.allocations_view.rows_for("o1") == [("LAMP", "b1"), ("LAMP", "b2")]

    def test_allocation_to_a_batch_of_another_product_still_reaches_the_read_model(
        self, bus: MessageBus, uow: FakeUnitOfWork
    ) -> None:
        bus.handle(commands.CreateBatch("lamp-batch", "LAMP", 10, None))
        bus.handle(commands.MirrorAllocation("o1", "RUG", 1, "lamp-batch"))
        assert [a.kind for a in uow.anomalies.recorded()] == ["unknown_batch"]
        assert uow.allocations_view.rows_for("o1") == [("RUG", "lamp-batch")]
        assert product(uow, "LAMP").batch("lamp-batch").allocations == set()  # type: ignore[union-attr]

    def test_deallocating_what_is_not_allocated_is_recorded(
        self, bus: MessageBus, uow: FakeUnitOfWork
    ) -> None:
        bus.handle(commands.CreateBatch("b1", "LAMP", 10, None))
        bus.handle(commands.MirrorDeallocation("o1", "LAMP", "b1"))
        assert [a.kind for a in uow.anomalies.recorded()] == ["not_allocated"]

    def test_quantity_change_then_legacy_moves_the_lines(
        self, bus: MessageBus, uow: FakeUnitOfWork, published: list[events.Event]
    ) -> None:
        """Legacy's PATCH: qty first, then deallocations, then reallocations — no anomaly."""
        bus.handle(commands.CreateBatch("b1", "LAMP", 10, None))
        bus.handle(commands.CreateBatch("b2", "LAMP", 10, date(2024, 6, 1)))
        bus.handle(commands.MirrorAllocation("o1", "LAMP", 4, "b1"))
        bus.handle(commands.MirrorAllocation("o2", "LAMP", 4, "b1"))
        published.clear()
        bus.handle(commands.ChangeBatchQuantity("b1", 5))
        bus.handle(commands.MirrorDeallocation("o2", "LAMP", "b1"))
        bus.handle(commands.MirrorAllocation("o2", "LAMP", 4, "b2"))
        assert published == [
            events.BatchQuantityChanged("b1", "LAMP", 5),
            events.Deallocated("o2", "LAMP", "b1"),
            events.Allocated("o2", "LAMP", 4, "b2"),
        ]
        assert uow.anomalies.recorded() == []
        assert uow.allocations_view.rows_for("o2") == [("LAMP", "b2")]

    def test_quantity_change_of_an_unknown_batch_is_an_error(self, bus: MessageBus) -> None:
        with pytest.raises(UnknownBatch):
            bus.handle(commands.ChangeBatchQuantity("nope", 5))

    def test_each_change_increments_the_product_version(
        self, bus: MessageBus, uow: FakeUnitOfWork
    ) -> None:
        bus.handle(commands.CreateBatch("b1", "LAMP", 10, None))
        bus.handle(commands.MirrorAllocation("o1", "LAMP", 1, "b1"))
        bus.handle(commands.ChangeBatchQuantity("b1", 20))
        bus.handle(commands.MirrorDeallocation("o1", "LAMP", "b1"))
        assert product(uow, "LAMP").version_number == 4


def test_handler_failure_rolls_back_the_whole_message(bus: MessageBus, uow: FakeUnitOfWork) -> None:
    """A failing event handler fails the command too: nothing commits."""
    bus.handle(commands.CreateBatch("b1", "LAMP", 10, None))
    commits = uow.commits

    def broken(event: events.Event) -> None:
        raise RuntimeError("read model down")

    bus.event_handlers[events.Allocated].append(broken)  # type: ignore[attr-defined]
    with pytest.raises(RuntimeError):
        bus.handle(commands.Allocate("o1", "LAMP", 1))
    assert uow.commits == commits
