"""docs/architecture.md's "How to capture one more legacy table", followed once.

The legacy shop gains a table ``lot_recount`` (a stock count of a lot). The new domain
learns it with one registry entry (a translator and the legacy keys its rows hold), and
the bridge starts capturing it with ``install(tables=[...])``; no migration is needed
because the new domain keeps no state of its own for it. A recount then changes the
batch's quantity in the new model, through the real bridge, broker and consumer.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

import broker
import legacy_bridge
import new_domain
from examples import legacy_shop
from new_domain.domain import commands
from new_domain.ingest import LEGACY_SHOP, LegacyChange, Translator, UnknownLegacyRow
from new_domain.ingest.ports import LOT, AbstractLegacyKeys
from new_domain.ingest.translators import int_column

SHOP_TABLES = ["prod_catalog", "stock_lot", "cust_order_line", "lot_allocation"]


def lot_recount(change: LegacyChange, keys: AbstractLegacyKeys) -> list[commands.Command]:
    """A recount sets the counted lot's quantity (the registry entry's translator)."""
    if change.op == "d":
        return []
    lot_id = int_column(change, change.row, "lot_id")
    lot = keys.lot(lot_id)
    if lot is None:
        raise UnknownLegacyRow(f"lot_recount refers to stock_lot {lot_id}, never seen")
    return [
        commands.ChangeBatchQuantity(lot.batchref, int_column(change, change.row, "counted_qty"))
    ]


TRANSLATORS = LEGACY_SHOP.with_table(Translator("lot_recount", lot_recount, keys={"lot_id": LOT}))


@pytest.fixture
def pipeline(tmp_path: Path) -> Iterator[tuple[str, str, legacy_bridge.Relay, new_domain.Consumer]]:
    legacy_db, new_db = f"sqlite:///{tmp_path / 'legacy.db'}", f"sqlite:///{tmp_path / 'new.db'}"
    broker_url = f"memory://recount-{uuid.uuid4().hex[:8]}"
    legacy_shop.create_app(legacy_db)  # creates the shop's schema
    legacy_bridge.install(legacy_db, tables=SHOP_TABLES)
    new_domain.upgrade_database(new_db)
    consumer = new_domain.Consumer(
        new_domain.bootstrap(new_db), lambda: broker.connect(broker_url), translators=TRANSLATORS
    )
    consumer.connect()
    relay = legacy_bridge.Relay(legacy_db, broker_factory=lambda: broker.connect(broker_url))
    yield legacy_db, new_db, relay, consumer
    relay.close()
    consumer.close()
    consumer.bus.uow.close()


def flow(relay: legacy_bridge.Relay, consumer: new_domain.Consumer) -> None:
    while relay.run_once():
        pass
    while consumer.run_once():
        pass


def test_a_new_legacy_table_is_captured_and_applied_with_one_registry_entry(
    pipeline: tuple[str, str, legacy_bridge.Relay, new_domain.Consumer],
) -> None:
    legacy_db, new_db, relay, consumer = pipeline
    shop = legacy_shop.create_app(legacy_db).test_client()
    assert (
        shop.post("/batches", json={"ref": "b1", "sku": "LAMP", "qty": 10, "eta": None}).status_code
        < 300
    )
    engine = create_engine(legacy_db)
    with engine.begin() as c:  # the legacy system gains a table
        c.execute(
            text(
                "CREATE TABLE lot_recount (recount_id INTEGER PRIMARY KEY,"
                " lot_id INTEGER NOT NULL, counted_qty INTEGER NOT NULL)"
            )
        )
    installed = legacy_bridge.install(legacy_db, tables=["lot_recount"])  # step 3: capture it
    assert "lot_recount" in [t.name for t in installed.tables]
    with engine.begin() as c:
        lot_id = c.execute(text("SELECT lot_id FROM stock_lot WHERE lot_ref = 'b1'")).scalar_one()
        c.execute(
            text("INSERT INTO lot_recount (lot_id, counted_qty) VALUES (:l, 7)"), {"l": lot_id}
        )
    engine.dispose()
    flow(relay, consumer)

    with consumer.bus.uow as uow:
        product = uow.products.get("LAMP")
        assert product is not None
        batch = product.batch("b1")
        assert batch is not None and batch.purchased_quantity == 7  # the recount applied
    assert consumer.failures.publish_dead_letters(broker.connect("memory://unused")) == 0


def test_without_the_registry_entry_the_new_table_is_ignored(tmp_path: Path) -> None:
    change = new_domain.parse_change(
        {
            "op": "c",
            "before": None,
            "after": {"recount_id": 1, "lot_id": 1, "counted_qty": 7},
            "source": {"table": "lot_recount", "seq": 1, "db": "legacy", "name": "legacy"},
        }
    )
    assert LEGACY_SHOP.referenced_keys([change]) == {}
    assert TRANSLATORS.referenced_keys([change]) == {LOT: {1}}
