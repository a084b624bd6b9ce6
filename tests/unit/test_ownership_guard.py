"""Echoes, fences and ownership violations: what the consumer does with the kit's own
legacy transactions and with legacy's writes to products the new system owns
(docs/write-path.md, "Echoes and the ownership guard")."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pytest
from prometheus_client import REGISTRY

from new_domain.bootstrap import bootstrap
from new_domain.domain import commands
from new_domain.domain.ownership import Ownership, OwnershipRule, State, bucket
from new_domain.ingest import ChangeFailed, LegacyChange, MalformedChange, apply_changes
from new_domain.ingest import parse_change as parse
from new_domain.ingest.decisions import ADD_BATCH, ALLOCATE, CHANGE_QUANTITY, DEALLOCATE
from new_domain.ingest.ports import LegacyLine, LegacyLot
from new_domain.service_layer.messagebus import MessageBus
from tests.fakes import InMemoryUnitOfWork
from tests.integration.consumer_streams import LegacyShopStream

GROUP = "allocation"


def _sku(owned_by_canary_50: bool) -> str:
    return next(
        f"SKU-{n}" for n in range(1000) if (bucket(f"SKU-{n}") < 5000) == owned_by_canary_50
    )


OWNED, LEGACY_OWNED = _sku(True), _sku(False)
"""Under ``canary 50`` the new system owns the first sku, legacy the second."""


@dataclass
class Shop:
    """The legacy shop's change stream, delivered batch by batch to a consumer's
    ``apply_changes`` on an in-memory unit of work."""

    stream: LegacyShopStream = field(default_factory=LegacyShopStream)
    uow: InMemoryUnitOfWork = field(default_factory=InMemoryUnitOfWork)
    sent: int = 0

    def __post_init__(self) -> None:
        self.bus: MessageBus = bootstrap(uow=self.uow)

    def changes(self, start: int = 0, stop: int | None = None) -> list[LegacyChange]:
        return [parse(m.body, m.message_id) for m in self.stream.messages[start:stop]]

    def deliver(self, upto: int | None = None) -> int:
        """Apply the changes not delivered yet (up to ``upto``) as one batch."""
        changes = self.changes(self.sent, upto)
        self.sent = len(self.stream.messages) if upto is None else upto
        return apply_changes(self.bus, changes).applied

    def own(
        self, rule: str, epoch: int = 1, previous: str | None = None, moving: bool = False
    ) -> None:
        self.uow.ownership.ownerships[GROUP] = Ownership(
            GROUP,
            OwnershipRule.parse(rule),
            None if previous is None else OwnershipRule.parse(previous),
            epoch,
            State.MOVING if moving else State.ACTIVE,
        )

    def state(self) -> dict[str, Any]:
        """Everything a change could have done."""
        uow = self.uow
        return {
            "products": {
                sku: (p.version_number, repr(p)) for sku, p in uow.stored_products.items()
            },
            "view": set(uow.allocations_view.rows),
            "outbox": len(uow.outbox.rows),
            "anomalies": len(uow.anomalies.anomalies),
            "verdicts": list(uow.decisions.verdicts),
            "unclassified": uow.decisions.unclassified_count,
            "violations": list(uow.ownership.violations),
            "echo_anomalies": list(uow.ownership.echo_anomalies),
            "ownership": dict(uow.ownership.ownerships),
        }

    def redelivered_changes_nothing(self) -> None:
        """Every change delivered again, in batches of 2 and then at once: no effect."""
        before = self.state()
        for start in range(0, self.sent, 2):
            apply_changes(self.bus, self.changes(start, min(start + 2, self.sent)))
        assert apply_changes(self.bus, self.changes(0, self.sent)).applied == 0
        assert self.state() == before


def violations_counted() -> float:
    labels = {"group": GROUP}
    return REGISTRY.get_sample_value("strangler_ownership_violations_total", labels) or 0.0


def echo_anomalies_counted() -> float:
    return REGISTRY.get_sample_value("strangler_echo_anomalies_total") or 0.0


# -- echoes ----------------------------------------------------------------------------------


def test_an_echo_applies_nothing_and_raises_no_event_but_teaches_legacy_keys() -> None:
    shop = Shop()
    shop.stream.add_batch("b1", "LAMP", 10, None)
    shop.deliver()
    shop.own("new")
    shop.bus.handle(commands.Allocate("o1", "LAMP", 2))  # the new system decides
    decided = shop.state()
    with shop.stream.echo(ALLOCATE, "allocated to b1", "LAMP"):
        shop.stream.allocate("o1", "LAMP", 2)  # back-sync writes it into legacy

    assert shop.deliver() == 3  # the marker, the order line, the allocation
    assert shop.state() == decided  # nothing applied twice, no event, no verdict
    assert shop.uow.allocations_view.rows == {("o1", "LAMP", "b1")}
    line_id = shop.stream.line_of("o1")
    assert shop.uow.legacy_keys.lines == {line_id: LegacyLine("o1", "LAMP", 2)}
    shop.redelivered_changes_nothing()


def test_a_later_legacy_change_to_the_lot_an_echo_created_translates() -> None:
    shop = Shop()
    shop.own("new")
    shop.bus.handle(commands.CreateBatch("b-new", "LAMP", 10, None))
    with shop.stream.echo(ADD_BATCH, "created", "LAMP"):
        shop.stream.add_batch("b-new", "LAMP", 10, None)  # prod_catalog and stock_lot rows
    shop.deliver()
    assert shop.uow.legacy_keys.lots == {1: LegacyLot("b-new", "LAMP")}
    assert shop.uow.legacy_keys.products == {1: "LAMP"}
    assert [b.reference for b in shop.uow.stored_products["LAMP"].batches] == ["b-new"]

    shop.own("legacy", epoch=2)  # handed back: legacy decides again
    shop.stream.allocate("o1", "LAMP", 3)  # its allocation names the echo's lot id
    shop.deliver()
    assert shop.uow.allocations_view.rows == {("o1", "LAMP", "b-new")}
    assert shop.uow.ownership.violations == []
    shop.redelivered_changes_nothing()


def test_an_echo_whose_rows_show_another_decision_is_an_echo_anomaly() -> None:
    shop = Shop()
    shop.stream.add_batch("b1", "LAMP", 10, None)
    shop.stream.add_batch("b2", "LAMP", 10, "2027-01-01")
    shop.deliver()
    shop.own("new")
    counted = echo_anomalies_counted()
    with shop.stream.echo(ALLOCATE, "allocated to b2", "LAMP", decision_id="d-7"):
        shop.stream.allocate("o1", "LAMP", 2)  # legacy's rows: b1
    marker_of_d7 = shop.stream.messages[-3].message_id
    with shop.stream.echo(ALLOCATE, "allocated to b1", "LAMP", decision_id="d-8"):
        shop.stream.allocate("o2", "LAMP", 1)  # as decided: no anomaly
    lot = {"lot_id": 2, "lot_ref": "b2", "prod_id": 1, "qty_units": 10, "arrival_date": None}
    with shop.stream.echo(DEALLOCATE, "deallocated from b1", "LAMP", decision_id="d-9"):
        shop.stream.emit("stock_lot", "d", lot, None)  # no decision at all
    marker_of_d9 = shop.stream.messages[-2].message_id
    shop.deliver()

    found = [
        (a.decision_id, a.route, a.sku, a.expected, a.found, a.change_id)
        for a in shop.uow.ownership.echo_anomalies
    ]
    assert found == [
        (
            "d-7",
            ALLOCATE,
            "LAMP",
            "POST /allocate: allocated to b2",
            "POST /allocate: allocated to b1",
            marker_of_d7,
        ),
        (
            "d-9",
            DEALLOCATE,
            "LAMP",
            "POST /deallocate: deallocated from b1",
            "unrecognised",
            marker_of_d9,
        ),
    ]
    assert echo_anomalies_counted() == counted + 2
    assert shop.uow.allocations_view.rows == set()  # echoes apply nothing
    assert [v.route for v in shop.uow.decisions.verdicts] == [ADD_BATCH, ADD_BATCH]
    assert shop.uow.decisions.unclassified_count == 0
    shop.redelivered_changes_nothing()
    assert echo_anomalies_counted() == counted + 2


def test_a_long_summary_cut_in_its_marker_is_compared_as_cut() -> None:
    """A quantity cut that moves many lines says so in over 1,000 characters; the marker's
    column holds 1,000, so back-sync cuts it to 999 and an ellipsis."""
    shop = Shop()
    shop.stream.add_batch("b1", "LAMP", 100, None)
    shop.stream.add_batch("b2", "LAMP", 100, "2027-01-01")
    orders = [f"order-with-a-long-reference-{n:03d}" for n in range(40)]
    for orderid in orders:
        shop.stream.allocate(orderid, "LAMP", 2)
    shop.deliver()
    shop.own("new")
    moved = "; ".join(f"{orderid} -> b2" for orderid in sorted(orders))
    assert len(moved) > 1000
    cut = moved[:999] + "…"
    with shop.stream.echo(CHANGE_QUANTITY, cut, "LAMP", decision_id="d-1"):
        shop.stream.change_quantity(1, 0)  # every line moves to b2, as decided
    wrong = cut[:-2] + "X…"
    with shop.stream.echo(CHANGE_QUANTITY, wrong, "LAMP", decision_id="d-2"):
        shop.stream.change_quantity(2, 200)  # no line moves: no match, cut or not

    shop.deliver()

    assert [(a.decision_id, a.expected, a.found) for a in shop.uow.ownership.echo_anomalies] == [
        ("d-2", f"{CHANGE_QUANTITY}: {wrong}", f"{CHANGE_QUANTITY}: no line moved")
    ]


def test_an_echo_split_across_batches_and_redelivered_after_a_crash_stays_an_echo() -> None:
    shop = Shop()
    shop.stream.add_batch("b1", OWNED, 10, None)
    shop.deliver()
    shop.own("new")
    shop.bus.handle(commands.Allocate("o1", OWNED, 2))
    decided = shop.state()
    with shop.stream.echo(ALLOCATE, "allocated to b1", OWNED):
        shop.stream.allocate("o1", OWNED, 2)
    marker = shop.sent
    shop.deliver(upto=marker + 2)  # an unfinished transaction: the marker, the order line
    # the consumer crashed after that commit: the whole echo is redelivered
    assert apply_changes(shop.bus, shop.changes(marker)).applied == 1
    shop.sent = len(shop.stream.messages)
    assert shop.state() == decided

    shop.stream.allocate("o2", OWNED, 1)  # legacy's own write after the echo
    shop.deliver()
    assert [v.change_id for v in shop.uow.ownership.violations] == [
        m.message_id for m in shop.stream.messages[-2:]
    ]


# -- fences ----------------------------------------------------------------------------------


def test_a_fence_settles_only_its_own_epoch() -> None:
    shop = Shop()
    shop.own("new", epoch=3, previous="legacy", moving=True)
    shop.stream.fence(2)  # a superseded move's fence
    shop.deliver()
    assert shop.uow.ownership.read(GROUP).state is State.MOVING

    shop.stream.fence(3)
    shop.deliver()
    settled = shop.uow.ownership.read(GROUP)
    assert (settled.state, settled.epoch, settled.previous_rule) == (State.ACTIVE, 3, None)
    assert str(settled.rule) == "new"
    assert shop.uow.decisions.unclassified_count == 0  # the kit's own: no legacy decision
    shop.redelivered_changes_nothing()


def test_a_hand_back_is_guarded_until_its_fence_and_not_after_it() -> None:
    shop = Shop()
    shop.stream.add_batch("b1", "LAMP", 10, None)
    shop.deliver()
    shop.own("legacy", epoch=4, previous="new", moving=True)
    shop.stream.allocate("o1", "LAMP", 1)  # before the fence: the new system's product
    shop.stream.fence(4)
    shop.stream.allocate("o2", "LAMP", 1)  # after it: legacy's again
    shop.deliver()  # one batch
    violations = shop.uow.ownership.violations
    assert {v.change_id for v in violations} == {m.message_id for m in shop.stream.messages[2:4]}
    assert "(legacy, epoch 4, moving from new)" in violations[0].detail
    assert shop.uow.allocations_view.rows == {("o2", "LAMP", "b1")}
    shop.redelivered_changes_nothing()


# -- ownership violations --------------------------------------------------------------------


def test_a_legacy_write_to_an_owned_product_is_a_violation_and_is_not_applied() -> None:
    shop = Shop()
    shop.stream.add_batch("b-own", OWNED, 10, None)
    shop.stream.add_batch("b-leg", LEGACY_OWNED, 10, None)
    shop.deliver()
    shop.own("canary 50", epoch=2)
    counted = violations_counted()
    before = shop.sent
    shop.stream.allocate("o1", OWNED, 2)  # legacy wrote on its own: a violation
    shop.stream.allocate("o2", LEGACY_OWNED, 2)  # legacy's product: applied
    shop.deliver()

    violations = shop.uow.ownership.violations
    written = [parse(m.body, m.message_id) for m in shop.stream.messages[before : before + 2]]
    assert [(v.group_name, v.sku, v.change_id, v.stream, v.position) for v in violations] == [
        (GROUP, OWNED, c.message_id, c.stream, c.position) for c in written
    ]
    assert "cust_order_line" in violations[0].detail and "canary 50" in violations[0].detail
    assert "\n" not in violations[0].detail
    assert violations_counted() == counted + 2
    assert shop.uow.allocations_view.rows == {("o2", LEGACY_OWNED, "b-leg")}
    assert shop.uow.stored_products[OWNED].batch("b-own").allocated_quantity == 0  # type: ignore[union-attr]
    assert [v.route for v in shop.uow.decisions.verdicts] == [ADD_BATCH, ADD_BATCH, ALLOCATE]
    assert shop.uow.decisions.unclassified_count == 0  # a violation is no decision to judge
    assert shop.uow.positions.get(written[0].stream) == shop.sent  # stored, not retried
    shop.redelivered_changes_nothing()
    assert violations_counted() == counted + 2


def test_the_same_write_while_legacy_owns_every_product_applies() -> None:
    shop = Shop()
    shop.stream.add_batch("b-own", OWNED, 10, None)
    shop.deliver()
    shop.own("shadow", epoch=1)
    shop.stream.allocate("o1", OWNED, 2)
    shop.deliver()
    assert shop.uow.allocations_view.rows == {("o1", OWNED, "b-own")}
    assert shop.uow.ownership.violations == []


# -- the kit's own table -----------------------------------------------------------------------


def test_other_changes_of_the_origin_table_mean_nothing_and_are_never_dead_lettered() -> None:
    shop = Shop()
    row = {"origin_id": 9, "kind": "decision", "group_name": GROUP}
    shop.stream.emit("strangler_origin", "u", row, {**row, "summary": "x"})
    shop.stream.emit("strangler_origin", "d", row, None)
    shop.stream.emit("strangler_origin", "r", None, row)
    assert shop.deliver() == 3
    assert shop.uow.dead_letters.rows == {}
    assert shop.uow.decisions.unclassified_count == 0  # the kit's own: no legacy decision


@pytest.mark.parametrize(
    "marker",
    [
        {"kind": "takeover", "group_name": GROUP},
        {"kind": "fence", "group_name": GROUP, "epoch": None},
        {"kind": "fence", "epoch": 3},
    ],
)
def test_a_broken_origin_marker_fails_as_its_own_change(marker: dict[str, Any]) -> None:
    shop = Shop()
    change = shop.stream.emit("strangler_origin", "c", None, {"origin_id": 1, **marker})
    with pytest.raises(ChangeFailed) as failed:
        apply_changes(shop.bus, [parse(change.body, change.message_id)])
    assert isinstance(failed.value.error, MalformedChange)
    assert json.loads(change.body)["source"]["table"] == "strangler_origin"
