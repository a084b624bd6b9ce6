"""Spec of write ownership in the domain: which system owns a product under a rule, how a
canary grows, and who decides while a move is under way."""

from __future__ import annotations

import hashlib
from itertools import count

import pytest
from hypothesis import given
from hypothesis import strategies as st

from new_domain.domain.ownership import (
    BUCKETS,
    InvalidRule,
    NotOwned,
    Owner,
    Ownership,
    OwnershipRule,
    State,
    bucket,
)

SKUS = [f"SKU-{i}" for i in range(4000)]
percentages = st.integers(0, 10_000).map(lambda hundredths: hundredths / 100)


def canary(percent: float) -> OwnershipRule:
    return OwnershipRule("canary", percent)


def sku_in_bucket(low: int, high: int) -> str:
    return next(f"SKU-{i}" for i in count() if low <= bucket(f"SKU-{i}") < high)


def moving(previous: str, rule: str) -> Ownership:
    return Ownership(
        "allocation", OwnershipRule.parse(rule), OwnershipRule.parse(previous), 3, State.MOVING
    )


class TestBucket:
    def test_is_the_documented_hash(self) -> None:
        for sku in SKUS[:500] + ["é", "", "LAMP", "a" * 300]:
            digest = hashlib.sha256(sku.encode("utf-8")).digest()
            assert bucket(sku) == int.from_bytes(digest[:8], "big") % 10000

    def test_is_the_same_in_every_process_and_version(self) -> None:
        # pinned: a change of the hash would move products between systems
        assert [bucket(sku) for sku in ("LAMP", "RED-CHAIR", "sku-1", "é")] == [
            3443,
            3189,
            5829,
            2051,
        ]

    @given(st.text())
    def test_is_one_of_ten_thousand(self, sku: str) -> None:
        assert 0 <= bucket(sku) < BUCKETS

    def test_spreads_skus_evenly(self) -> None:
        owned = sum(canary(30).owns(sku) for sku in SKUS)
        assert 0.27 * len(SKUS) < owned < 0.33 * len(SKUS)


class TestRules:
    @pytest.mark.parametrize("rule", ["legacy", "shadow", "canary 0"])
    def test_owning_nothing(self, rule: str) -> None:
        parsed = OwnershipRule.parse(rule)
        assert not any(parsed.owns(sku) for sku in SKUS)
        assert not parsed.owns_any

    @pytest.mark.parametrize("rule", ["new", "canary 100"])
    def test_owning_everything(self, rule: str) -> None:
        parsed = OwnershipRule.parse(rule)
        assert all(parsed.owns(sku) for sku in SKUS)
        assert parsed.owns_any

    def test_a_canary_owns_the_skus_below_its_share_of_buckets(self) -> None:
        assert canary(12.5).owns(sku_in_bucket(1249, 1250))
        assert not canary(12.5).owns(sku_in_bucket(1250, 1251))

    @given(percentages, percentages, st.text())
    def test_growing_a_canary_only_adds_products(self, a: float, b: float, sku: str) -> None:
        smaller, larger = sorted((a, b))
        if canary(smaller).owns(sku):
            assert canary(larger).owns(sku)

    def test_growing_a_canary_keeps_every_product_it_had(self) -> None:
        shares = [0, 0.01, 1, 12.5, 30, 50, 99.99, 100]
        owned = [{sku for sku in SKUS if canary(p).owns(sku)} for p in shares]
        for before, after in zip(owned, owned[1:], strict=False):
            assert before <= after
        assert len(owned[3]) < len(owned[4]) < len(owned[5])

    @pytest.mark.parametrize(
        ("text", "rule"),
        [
            ("legacy", OwnershipRule("legacy")),
            ("Shadow", OwnershipRule("shadow")),
            ("canary 30", canary(30)),
            ("canary 12.5%", canary(12.5)),
            (" new ", OwnershipRule("new")),
        ],
    )
    def test_parses(self, text: str, rule: OwnershipRule) -> None:
        assert OwnershipRule.parse(text) == rule
        assert OwnershipRule.parse(str(rule)) == rule

    @pytest.mark.parametrize(
        "text",
        ["", "banana", "canary", "canary 101", "canary -1", "canary 1.234", "canary nan", "new 5"],
    )
    def test_refuses_what_is_no_rule(self, text: str) -> None:
        with pytest.raises(InvalidRule):
            OwnershipRule.parse(text)


class TestOwner:
    def test_a_settled_group_has_one_owner_per_product(self) -> None:
        ownership = Ownership("allocation", canary(30), epoch=1)
        inside, outside = sku_in_bucket(0, 3000), sku_in_bucket(3000, 10000)
        assert (ownership.owner(inside), ownership.owner(outside)) == (Owner.NEW, Owner.LEGACY)

    def test_a_group_never_moved_is_legacys(self) -> None:
        assert Ownership("allocation").owner("LAMP") is Owner.LEGACY

    def test_while_moving_only_the_products_the_rules_disagree_about_change_hands(self) -> None:
        ownership = moving("canary 30", "canary 50")
        assert ownership.owner(sku_in_bucket(0, 3000)) is Owner.NEW
        assert ownership.owner(sku_in_bucket(3000, 5000)) is Owner.CHANGING
        assert ownership.owner(sku_in_bucket(5000, 10000)) is Owner.LEGACY

    def test_a_hand_back_stops_every_product_the_new_system_had(self) -> None:
        ownership = moving("new", "legacy")
        assert {ownership.owner(sku) for sku in SKUS[:200]} == {Owner.CHANGING}

    def test_once_settled_the_new_rule_alone_decides(self) -> None:
        ownership = Ownership("allocation", canary(50), epoch=3)
        assert ownership.owner(sku_in_bucket(3000, 5000)) is Owner.NEW

    def test_legacys_changes_are_guarded_under_the_rule_in_force_until_the_fence(self) -> None:
        ownership = moving("canary 30", "canary 50")
        assert ownership.guarded_by_new(sku_in_bucket(0, 3000))
        assert not ownership.guarded_by_new(sku_in_bucket(3000, 5000))
        assert moving("new", "legacy").guarded_by_new("ANY")  # new's until the fence

    @pytest.mark.parametrize(
        ("current", "target", "changes"),
        [
            ("legacy", "shadow", False),
            ("shadow", "legacy", False),
            ("legacy", "canary 0", False),
            ("canary 100", "new", False),
            ("canary 30", "canary 30", False),
            ("legacy", "canary 0.01", True),
            ("canary 30", "canary 50", True),
            ("new", "shadow", True),
        ],
    )
    def test_hands_change_only_when_the_share_changes(
        self, current: str, target: str, changes: bool
    ) -> None:
        ownership = Ownership("allocation", OwnershipRule.parse(current))
        assert ownership.hands_change(OwnershipRule.parse(target)) is changes

    @pytest.mark.parametrize(
        ("ownership", "owner"),
        [
            (Ownership("allocation", OwnershipRule("new")), Owner.NEW),
            (Ownership("allocation", canary(100)), Owner.NEW),
            (Ownership("allocation", canary(99.99)), Owner.LEGACY),
            (Ownership("allocation"), Owner.LEGACY),
            (moving("canary 30", "new"), Owner.CHANGING),
            (moving("new", "canary 50"), Owner.CHANGING),
            (moving("canary 30", "canary 60"), Owner.LEGACY),
        ],
    )
    def test_an_unknown_batch_is_answered_by_whoever_owns_every_product(
        self, ownership: Ownership, owner: Owner
    ) -> None:
        assert ownership.owner_of_unknown_batch() is owner


def test_not_owned_says_whose_it_is() -> None:
    assert str(NotOwned("LAMP", Owner.CHANGING)) == "product LAMP is changing owner; retry"
    assert str(NotOwned("LAMP", Owner.LEGACY)) == "product LAMP is owned by legacy"
    assert NotOwned("", Owner.LEGACY).sku == ""
