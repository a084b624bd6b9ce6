"""Decision parity: every legacy write decision is judged against the new rules on the
state just before it, and recorded with the effect, exactly once."""

from __future__ import annotations

from new_domain.bootstrap import bootstrap
from new_domain.domain.model import TieBreak
from new_domain.ingest import apply_changes, parse_change
from new_domain.ingest.decisions import ADD_BATCH, ALLOCATE, CHANGE_QUANTITY, DEALLOCATE
from new_domain.ingest.ports import Verdict
from tests.fakes import InMemoryUnitOfWork
from tests.integration.consumer_streams import LegacyShopStream


def applied(stream: LegacyShopStream, tie_break: TieBreak = TieBreak.CREATED) -> InMemoryUnitOfWork:
    uow = InMemoryUnitOfWork()
    bus = bootstrap(uow=uow)
    changes = [parse_change(m.body, m.message_id) for m in stream.messages]
    apply_changes(bus, changes, tie_break=tie_break)
    return uow


def by_route(verdicts: list[Verdict]) -> dict[str, tuple[int, int]]:
    counts: dict[str, tuple[int, int]] = {}
    for v in verdicts:
        agree, differ = counts.get(v.route, (0, 0))
        counts[v.route] = (agree + v.agree, differ + (not v.agree))
    return counts


def test_on_a_busy_day_the_new_rules_decide_every_time_as_legacy_did() -> None:
    stream = LegacyShopStream(seed=3)
    stream.busy_day(3000, products=8, lots_per_product=4)
    uow = applied(stream)
    counts = by_route(uow.decisions.verdicts)
    assert set(counts) == {ADD_BATCH, ALLOCATE, DEALLOCATE, CHANGE_QUANTITY}
    assert all(differ == 0 and agree > 0 for agree, differ in counts.values()), counts
    assert uow.decisions.unclassified_count == 0


def test_a_different_tie_break_is_listed_exactly() -> None:
    stream = LegacyShopStream()
    stream.add_batch("ship-zz", "LAMP", 10, "2027-01-01")  # created first
    stream.add_batch("ship-aa", "LAMP", 10, "2027-01-01")  # same eta, earlier reference
    stream.allocate("o1", "LAMP", 2)  # legacy: creation order
    uow = applied(stream, TieBreak.REFERENCE)
    differences = [v for v in uow.decisions.verdicts if not v.agree]
    assert [(v.route, v.sku, v.legacy, v.new) for v in differences] == [
        (ALLOCATE, "LAMP", "allocated to ship-zz", "allocated to ship-aa")
    ]
    assert "ship-aa (2027-01-01, 10)" in differences[0].state
    assert applied(stream, TieBreak.CREATED).decisions.verdicts[-1].agree


def test_a_decision_is_judged_once_however_often_its_changes_arrive() -> None:
    stream = LegacyShopStream()
    stream.add_batch("b1", "LAMP", 10, None)
    stream.allocate("o1", "LAMP", 2)
    uow = InMemoryUnitOfWork()
    bus = bootstrap(uow=uow)
    changes = [parse_change(m.body, m.message_id) for m in stream.messages]
    apply_changes(bus, changes)
    apply_changes(bus, changes)  # redelivered: already applied, not judged again
    assert [v.route for v in uow.decisions.verdicts] == [ADD_BATCH, ALLOCATE]


def test_a_transaction_split_across_batches_is_unclassified_not_guessed() -> None:
    stream = LegacyShopStream()
    stream.add_batch("b1", "LAMP", 10, None)
    stream.allocate("o1", "LAMP", 2)  # two changes: the order line, the allocation
    uow = InMemoryUnitOfWork()
    bus = bootstrap(uow=uow)
    changes = [parse_change(m.body, m.message_id) for m in stream.messages]
    apply_changes(bus, changes[:-1])
    apply_changes(bus, changes[-1:])
    assert [v.route for v in uow.decisions.verdicts] == [ADD_BATCH]
    assert uow.decisions.unclassified_count == 1


def test_lots_committed_out_of_lot_order_keep_legacys_tie_order() -> None:
    stream = LegacyShopStream()
    taken = stream.reserve_lot()  # one request inserts its lot (lot_id 1) ...
    stream.add_batch("wh-b", "LAMP", 10, None)  # ... another inserts lot 2 and commits first
    stream.add_batch("wh-a", "LAMP", 10, None, lot_id=taken)  # then the first commits
    stream.allocate("o1", "LAMP", 2)  # legacy: the lowest lot_id of equal etas, wh-a
    uow = applied(stream)
    assert [v.route for v in uow.decisions.verdicts if not v.agree] == []
    product = uow.products.get("LAMP")
    assert product is not None
    assert [b.reference for b in product.batches] == ["wh-a", "wh-b"]
    wh_a = product.batch("wh-a")
    assert wh_a is not None and [line.orderid for line in wh_a.allocations_in_order()] == ["o1"]
