"""The legacy shop's anti-corruption layer recognises each write route's transaction by
its shape, with what legacy decided in it; anything else is no decision (unclassified)."""

from __future__ import annotations

from itertools import groupby

from new_domain.ingest import LEGACY_SHOP, LegacyChange, parse_change
from new_domain.ingest.decisions import Allocation, Deallocation, NewBatch, QuantityChange
from tests.fakes import InMemoryLegacyKeys
from tests.integration.consumer_streams import LegacyShopStream


def decisions(stream: LegacyShopStream) -> list[object]:
    """What each legacy transaction of ``stream`` decided, with the key maps as they were
    before it (as the consumer reads them)."""
    keys = InMemoryLegacyKeys()
    changes = [parse_change(m.body, m.message_id) for m in stream.messages]
    found: list[object] = []
    for _, transaction in groupby(changes, key=lambda c: c.transaction_id):
        tx: list[LegacyChange] = list(transaction)
        found.append(LEGACY_SHOP.recognize(tx, keys))
        for change in tx:
            LEGACY_SHOP.translate(change, keys)
    return found


def test_each_write_route_is_recognised_with_legacys_decision() -> None:
    stream = LegacyShopStream()
    stream.add_batch("wh", "LAMP", 5, None)
    stream.add_batch("ship", "LAMP", 10, "2027-01-01")
    stream.allocate("o1", "LAMP", 3)
    stream.allocate("o2", "LAMP", 2)
    stream.allocate("o3", "LAMP", 3)
    stream.deallocate(stream.line_of("o1"))
    lot_id = next(lot.lot_id for lot in stream.lots.values() if lot.ref == "ship")
    stream.change_quantity(lot_id, 1)
    assert decisions(stream) == [
        NewBatch("wh", "LAMP"),
        NewBatch("ship", "LAMP"),
        Allocation("o1", "LAMP", 3, "wh"),
        Allocation("o2", "LAMP", 2, "wh"),
        Allocation("o3", "LAMP", 3, "ship"),
        Deallocation("o1", "LAMP", "wh"),
        QuantityChange("ship", "LAMP", 1, frozenset({("o3", "wh")})),
    ]


def test_a_quantity_cut_that_leaves_lines_unallocated_names_them() -> None:
    stream = LegacyShopStream()
    stream.add_batch("wh", "LAMP", 5, None)
    stream.allocate("o1", "LAMP", 2)
    stream.allocate("o2", "LAMP", 2)
    lot_id = next(iter(stream.lots))
    stream.change_quantity(lot_id, 1)
    assert decisions(stream)[-1] == QuantityChange(
        "wh", "LAMP", 1, frozenset({("o1", None), ("o2", None)})
    )


def test_other_transactions_are_no_decision() -> None:
    stream = LegacyShopStream()
    stream.add_batch("wh", "LAMP", 5, None)
    stream.emit(
        "cust_order_line", "c", None, {"line_id": 99, "order_no": "x", "prod_id": 1, "qty_units": 1}
    )
    stream.snapshot()
    found = decisions(stream)
    assert found[0] == NewBatch("wh", "LAMP")
    assert found[1] is None  # an order line alone is no route's decision
    assert all(d is None for d in found[2:])  # snapshot reads decide nothing
