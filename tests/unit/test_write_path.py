"""Spec of the new write path: the new system decides only about the products it owns,
in one transaction that checks the ownership first; it refuses what legacy refuses, with
legacy's words; every decision's events carry its decision block. Driven through the
real message bus with an in-memory unit of work."""

from __future__ import annotations

import json
from datetime import date
from itertools import count
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from new_domain import (
    AlreadyAllocated,
    DomainError,
    DuplicateBatch,
    NotAllocated,
    NotOwned,
    OutOfStock,
    Owner,
    Ownership,
    OwnershipRule,
    QuantityChanged,
    UnknownBatch,
    UnknownSku,
    WritePath,
)
from new_domain.domain import commands
from new_domain.domain.ownership import State, bucket
from tests.fakes import InMemoryUnitOfWork

GROUP = "allocation"
SCHEMAS = Path(__file__).resolve().parents[2] / "docs" / "schemas"
SCHEMA_OF = {
    "BatchCreated": "new-domain-batch-created",
    "Allocated": "new-domain-allocated",
    "Deallocated": "new-domain-deallocated",
    "BatchQuantityChanged": "new-domain-batch-quantity-changed",
}


def sku_in_bucket(low: int, high: int) -> str:
    """A sku whose bucket is in [low, high)."""
    return next(f"SKU-{i}" for i in count() if low <= bucket(f"SKU-{i}") < high)


IN_CANARY = sku_in_bucket(0, 3000)  # owned by canary 30
OUTSIDE = sku_in_bucket(3000, 10000)  # not owned by canary 30


@pytest.fixture
def uow() -> InMemoryUnitOfWork:
    uow = InMemoryUnitOfWork()
    uow.ownership.give(GROUP, "new")
    return uow


@pytest.fixture
def write_path(uow: InMemoryUnitOfWork) -> WritePath:
    return WritePath.on(lambda: uow)


def bodies(uow: InMemoryUnitOfWork) -> list[dict[str, Any]]:
    return [json.loads(row["body"]) for row in uow.outbox.rows]


def stocked(write_path: WritePath, sku: str = "LAMP") -> None:
    """Warehouse batch b1 (10) and a shipment b2 (10)."""
    write_path.add_batch("b1", sku, 10, None)
    write_path.add_batch("b2", sku, 10, date(2027, 1, 1))


class TestDecisions:
    def test_allocate_answers_the_batch_and_commits_once(
        self, write_path: WritePath, uow: InMemoryUnitOfWork
    ) -> None:
        stocked(write_path)
        commits = uow.commits
        assert write_path.allocate("o1", "LAMP", 3) == "b1"
        assert uow.commits == commits + 1
        assert uow.allocations_view.rows_for("o1") == [("LAMP", "b1")]

    def test_deallocate_answers_the_batch_the_line_had(self, write_path: WritePath) -> None:
        stocked(write_path)
        write_path.allocate("o1", "LAMP", 3)
        assert write_path.deallocate("o1", "LAMP") == "b1"

    def test_a_quantity_cut_answers_the_moves_in_legacys_order(self, write_path: WritePath) -> None:
        stocked(write_path)
        write_path.allocate("o1", "LAMP", 4)
        write_path.allocate("o2", "LAMP", 4)
        write_path.allocate("o3", "LAMP", 6)  # b2: 4 left
        assert write_path.change_batch_quantity("b1", 1) == QuantityChanged(
            sku="LAMP", reallocated=[("o1", "b2")], unallocated=["o2"]
        )

    def test_the_tie_break_is_the_write_paths(self, uow: InMemoryUnitOfWork) -> None:
        write_path = WritePath.on(lambda: uow, tie_break="reference")
        write_path.add_batch("b-2", "LAMP", 9, date(2027, 1, 1))
        write_path.add_batch("b-1", "LAMP", 9, date(2027, 1, 1))
        assert write_path.allocate("o1", "LAMP", 1) == "b-1"

    def test_the_ownership_is_read_for_share_inside_the_decisions_transaction(
        self, write_path: WritePath, uow: InMemoryUnitOfWork
    ) -> None:
        stocked(write_path)
        uow.log.clear()
        write_path.allocate("o1", "LAMP", 1)
        assert uow.log == ["begin", "read ownership of allocation for share", "commit", "end"]

    def test_reads_take_no_lock(self, write_path: WritePath, uow: InMemoryUnitOfWork) -> None:
        stocked(write_path)
        uow.log.clear()
        assert write_path.ownership().rule == OwnershipRule("new")
        assert write_path.sku_of_batch("b2") == "LAMP"
        assert write_path.sku_of_batch("nope") is None
        assert "read ownership of allocation" in uow.log
        assert not any(entry.endswith("for share") for entry in uow.log)


class TestNotOwned:
    def test_a_group_never_moved_is_legacys(self) -> None:
        uow = InMemoryUnitOfWork()
        with pytest.raises(NotOwned) as refused:
            WritePath.on(lambda: uow).add_batch("b1", "LAMP", 10, None)
        assert (refused.value.sku, refused.value.owner) == ("LAMP", Owner.LEGACY)
        assert uow.stored_products == {} and uow.outbox.rows == []

    @pytest.mark.parametrize("rule", ["legacy", "shadow", "canary 0"])
    def test_no_product_is_owned_under_a_rule_that_owns_none(
        self, uow: InMemoryUnitOfWork, write_path: WritePath, rule: str
    ) -> None:
        uow.ownership.give(GROUP, rule)
        with pytest.raises(NotOwned) as refused:
            write_path.add_batch("b1", IN_CANARY, 10, None)
        assert refused.value.owner is Owner.LEGACY

    def test_a_canary_decides_only_about_its_products(
        self, uow: InMemoryUnitOfWork, write_path: WritePath
    ) -> None:
        uow.ownership.give(GROUP, "canary 30")
        write_path.add_batch("b1", IN_CANARY, 10, None)
        with pytest.raises(NotOwned) as refused:
            write_path.add_batch("b2", OUTSIDE, 10, None)
        assert (refused.value.sku, refused.value.owner) == (OUTSIDE, Owner.LEGACY)
        assert set(uow.stored_products) == {IN_CANARY}

    def test_every_route_refuses_a_product_it_does_not_own_and_changes_nothing(
        self, uow: InMemoryUnitOfWork, write_path: WritePath
    ) -> None:
        stocked(write_path, OUTSIDE)
        write_path.allocate("o1", OUTSIDE, 2)
        uow.ownership.give(GROUP, "canary 30")
        product = uow.stored_products[OUTSIDE]
        version, rows, commits = product.version_number, len(uow.outbox.rows), uow.commits
        for decide in (
            lambda: write_path.add_batch("b3", OUTSIDE, 1, None),
            lambda: write_path.allocate("o2", OUTSIDE, 1),
            lambda: write_path.deallocate("o1", OUTSIDE),
            lambda: write_path.change_batch_quantity("b1", 0),  # the batch's product
        ):
            with pytest.raises(NotOwned) as refused:
                decide()
            assert (refused.value.sku, refused.value.owner) == (OUTSIDE, Owner.LEGACY)
        assert (product.version_number, len(uow.outbox.rows), uow.commits) == (
            version,
            rows,
            commits,
        )

    def test_a_product_changing_hands_is_nobodys(
        self, uow: InMemoryUnitOfWork, write_path: WritePath
    ) -> None:
        moving = Ownership(
            GROUP, OwnershipRule.parse("new"), OwnershipRule.parse("canary 30"), 2, State.MOVING
        )
        uow.ownership.set(moving)
        write_path.add_batch("b1", IN_CANARY, 10, None)  # new's under both rules
        with pytest.raises(NotOwned, match=f"^product {OUTSIDE} is changing owner; retry$") as e:
            write_path.add_batch("b2", OUTSIDE, 10, None)
        assert e.value.owner is Owner.CHANGING

    def test_a_refusal_checks_the_ownership_in_its_transaction_and_commits_nothing(
        self, uow: InMemoryUnitOfWork, write_path: WritePath
    ) -> None:
        uow.ownership.give(GROUP, "legacy")
        uow.log.clear()
        with pytest.raises(NotOwned):
            write_path.allocate("o1", "LAMP", 1)
        assert uow.log == ["begin", "read ownership of allocation for share", "end"]

    def test_an_unknown_batch_is_legacys_in_a_canary(
        self, uow: InMemoryUnitOfWork, write_path: WritePath
    ) -> None:
        uow.ownership.give(GROUP, "canary 30")
        with pytest.raises(NotOwned) as refused:
            write_path.change_batch_quantity("nope", 1)
        assert (refused.value.sku, refused.value.owner) == ("", Owner.LEGACY)

    def test_an_unknown_batch_waits_while_new_takes_everything_over(
        self, uow: InMemoryUnitOfWork, write_path: WritePath
    ) -> None:
        uow.ownership.set(
            Ownership(GROUP, OwnershipRule("new"), OwnershipRule("canary", 30), 2, State.MOVING)
        )
        with pytest.raises(NotOwned) as refused:
            write_path.change_batch_quantity("nope", 1)
        assert refused.value.owner is Owner.CHANGING


class TestDomainRefusals:
    """Each refusal is the model's error, its message legacy's ``detail``, and nothing
    commits or is published."""

    @pytest.mark.parametrize(
        ("decide", "error", "detail"),
        [
            (lambda w: w.allocate("o1", "NOPE", 1), UnknownSku, "unknown sku NOPE"),
            (lambda w: w.deallocate("o1", "NOPE"), UnknownSku, "unknown sku NOPE"),
            (
                lambda w: w.allocate("o9", "LAMP", 11),
                OutOfStock,
                "no batch of sku LAMP has 11 units available",
            ),
            (
                lambda w: w.allocate("o1", "LAMP", 1),
                AlreadyAllocated,
                "order o1 already has sku LAMP allocated to batch b1",
            ),
            (
                lambda w: w.deallocate("o9", "LAMP"),
                NotAllocated,
                "order o9 has no allocation of sku LAMP",
            ),
            (lambda w: w.change_batch_quantity("nope", 1), UnknownBatch, "no batch nope"),
            (
                lambda w: w.add_batch("b1", "LAMP", 1, None),
                DuplicateBatch,
                "batch b1 already exists",
            ),
            (
                lambda w: w.add_batch("b2", "RUG", 1, None),
                DuplicateBatch,
                "batch b2 already exists",
            ),
        ],
    )
    def test_is_legacys(
        self,
        write_path: WritePath,
        uow: InMemoryUnitOfWork,
        decide: Any,
        error: type[DomainError],
        detail: str,
    ) -> None:
        stocked(write_path)
        write_path.allocate("o1", "LAMP", 10)  # b1 is full, b2 has 10
        rows, commits = len(uow.outbox.rows), uow.commits
        with pytest.raises(error) as refused:
            decide(write_path)
        assert str(refused.value) == detail
        assert isinstance(refused.value, DomainError)
        assert (len(uow.outbox.rows), uow.commits) == (rows, commits)
        assert set(uow.stored_products) == {"LAMP"}


class TestDecisionBlocks:
    def test_each_decision_is_one_block_in_decision_paritys_words(
        self, write_path: WritePath, uow: InMemoryUnitOfWork
    ) -> None:
        stocked(write_path)
        write_path.allocate("o1", "LAMP", 3)
        write_path.deallocate("o1", "LAMP")
        blocks = [
            (b["type"], b["decision"]["route"], b["decision"]["summary"]) for b in bodies(uow)
        ]
        assert blocks == [
            ("BatchCreated", "POST /batches", "created"),
            ("BatchCreated", "POST /batches", "created"),
            ("Allocated", "POST /allocate", "allocated to b1"),
            ("Deallocated", "POST /deallocate", "deallocated from b1"),
        ]
        assert len({b["decision"]["id"] for b in bodies(uow)}) == 4
        assert all(b["decision"]["sku"] == "LAMP" for b in bodies(uow))
        assert all((b["decision"]["events"], b["decision"]["index"]) == (1, 0) for b in bodies(uow))

    def test_a_quantity_cut_publishes_the_change_then_removals_newest_first_then_placements(
        self, write_path: WritePath, uow: InMemoryUnitOfWork
    ) -> None:
        stocked(write_path)
        for orderid, qty in (("o1", 3), ("o2", 2), ("o3", 4)):
            write_path.allocate(orderid, "LAMP", qty)  # b1: 9 of 10
        write_path.allocate("o4", "LAMP", 8)  # b2: 2 left
        del uow.outbox.rows[:]
        write_path.change_batch_quantity("b1", 4)  # o3 and o2 must go
        cut = bodies(uow)
        batch = lambda data: data.get("batchref", data.get("ref"))  # noqa: E731
        assert [(b["type"], b["data"].get("orderid"), batch(b["data"])) for b in cut] == [
            ("BatchQuantityChanged", None, "b1"),
            ("Deallocated", "o3", "b1"),
            ("Deallocated", "o2", "b1"),
            ("Allocated", "o2", "b2"),  # o3 fits nowhere: it stays unallocated
        ]
        [decision_id] = {b["decision"]["id"] for b in cut}
        assert decision_id
        assert [b["decision"]["index"] for b in cut] == [0, 1, 2, 3]
        assert {(b["decision"]["events"], b["decision"]["route"]) for b in cut} == {
            (4, "PATCH /batches/<ref>")
        }
        assert {b["decision"]["summary"] for b in cut} == {"o2 -> b2; o3 -> unallocated"}

    def test_a_quantity_set_to_what_it_is_publishes_nothing(
        self, write_path: WritePath, uow: InMemoryUnitOfWork
    ) -> None:
        stocked(write_path)
        del uow.outbox.rows[:]
        assert write_path.change_batch_quantity("b1", 10) == QuantityChanged("LAMP", [], [])
        assert uow.outbox.rows == []

    def test_a_raised_quantity_moves_no_line(
        self, write_path: WritePath, uow: InMemoryUnitOfWork
    ) -> None:
        stocked(write_path)
        del uow.outbox.rows[:]
        write_path.change_batch_quantity("b1", 20)
        [body] = bodies(uow)
        assert body["decision"]["summary"] == "no line moved"

    def test_events_mirrored_from_legacy_carry_no_decision(self, uow: InMemoryUnitOfWork) -> None:
        from new_domain import bootstrap

        bus = bootstrap(uow=uow)
        bus.handle(commands.CreateBatch("b1", "LAMP", 10, None))
        bus.handle(commands.MirrorAllocation("o1", "LAMP", 2, "b1"))
        assert [(b["type"], b["decision"]) for b in bodies(uow)] == [
            ("BatchCreated", None),
            ("Allocated", None),
        ]

    def test_bodies_follow_the_published_schemas(
        self, write_path: WritePath, uow: InMemoryUnitOfWork
    ) -> None:
        stocked(write_path)
        write_path.allocate("o1", "LAMP", 6)
        write_path.allocate("o2", "LAMP", 4)
        write_path.change_batch_quantity("b1", 5)
        write_path.deallocate("o2", "LAMP")
        checker = jsonschema.FormatChecker()
        assert {b["type"] for b in bodies(uow)} == set(SCHEMA_OF)
        for row, body in zip(uow.outbox.rows, bodies(uow), strict=True):
            schema = json.loads((SCHEMAS / f"{SCHEMA_OF[body['type']]}.schema.json").read_text())
            jsonschema.validate(body, schema, format_checker=checker)
            assert row["routing_key"] in ("batch.created", "batch.quantity_changed") or row[
                "routing_key"
            ].startswith("allocation.")

    def test_the_decision_schema_refuses_a_block_without_its_count(
        self, write_path: WritePath, uow: InMemoryUnitOfWork
    ) -> None:
        write_path.add_batch("b1", "LAMP", 1, None)
        [body] = bodies(uow)
        del body["decision"]["events"]
        schema = json.loads((SCHEMAS / "new-domain-batch-created.schema.json").read_text())
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(body, schema)
