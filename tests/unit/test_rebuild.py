"""Rebuilds: the read model from the write model, and everything from a fresh snapshot
(op ``r`` events, applied as upserts). SQLite new database."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import delete, func, insert, select

from broker import Message
from new_domain import bootstrap, ingest, open_read_model
from new_domain.adapters import orm
from new_domain.adapters.database import create_engine
from new_domain.entrypoints.commands import rebuild
from new_domain.ingest import apply_change, apply_changes
from new_domain.service_layer.messagebus import MessageBus
from new_domain.service_layer.unit_of_work import SqlAlchemyUnitOfWork
from tests.integration.consumer_streams import LegacyShopStream, migrated_sqlite_url


@pytest.fixture
def new_db_url(tmp_path: Path) -> str:
    return migrated_sqlite_url(tmp_path)


@pytest.fixture
def bus(new_db_url: str) -> Iterator[MessageBus]:
    uow = SqlAlchemyUnitOfWork(create_engine(new_db_url, for_writes=True))
    yield bootstrap(uow=uow)
    uow.close()


def apply(bus: MessageBus, messages: list[Message]) -> None:
    apply_changes(bus, [ingest.parse_message(m.body, m.message_id, m.type) for m in messages])


def read_model(new_db_url: str) -> dict[str, list[tuple[str, str]]]:
    with open_read_model(new_db_url) as model:
        found = model.allocations_by_order(model.orderids())
    return {o: [(a.sku, a.batchref) for a in rows] for o, rows in found.items()}


def count(new_db_url: str, table: orm.Table) -> int:
    engine = create_engine(new_db_url)
    try:
        with engine.connect() as connection:
            return int(connection.scalar(select(func.count()).select_from(table)) or 0)
    finally:
        engine.dispose()


def a_day() -> LegacyShopStream:
    stream = LegacyShopStream(seed=8)
    stream.busy_day(900, products=5, lots_per_product=3)
    return stream


def test_rebuild_restores_the_read_model_from_the_write_model(
    bus: MessageBus, new_db_url: str
) -> None:
    stream = a_day()
    apply(bus, stream.messages)
    engine = create_engine(new_db_url)
    with engine.begin() as connection:  # the read model is damaged
        connection.execute(
            delete(orm.allocations_view).where(orm.allocations_view.c.sku == "SKU-001")
        )
        connection.execute(insert(orm.allocations_view).values(orderid="x", sku="y", batchref="z"))
    engine.dispose()
    assert read_model(new_db_url) != stream.expected_allocations()

    result = CliRunner().invoke(rebuild, ["--new-db-url", new_db_url])
    assert result.exit_code == 0, result.output
    assert "read model" in result.output  # the progress bar
    rows = sum(len(v) for v in stream.expected_allocations().values())
    assert f"read model rebuilt from the write model: {rows} allocation(s)" in result.output
    assert read_model(new_db_url) == stream.expected_allocations()


def test_snapshot_reads_of_what_is_known_change_nothing(bus: MessageBus, new_db_url: str) -> None:
    stream = a_day()
    apply(bus, stream.messages)
    events, versions = count(new_db_url, orm.outbox), count(new_db_url, orm.products)
    with bus.uow as uow:
        before = {sku: uow.products.get(sku).version_number for sku in stream.products}  # type: ignore[union-attr]
    start = len(stream.messages)
    stream.snapshot()
    apply(bus, stream.messages[start:])
    assert count(new_db_url, orm.outbox) == events  # no event: no state changed
    with bus.uow as uow:
        after = {sku: uow.products.get(sku).version_number for sku in stream.products}  # type: ignore[union-attr]
    assert after == before and versions == len(before)
    assert read_model(new_db_url) == stream.expected_allocations()
    assert count(new_db_url, orm.anomaly) == 0


def test_after_a_reset_a_fresh_snapshot_rebuilds_everything(
    bus: MessageBus, new_db_url: str
) -> None:
    stream = a_day()
    apply(bus, stream.messages)
    result = CliRunner().invoke(rebuild, ["--new-db-url", new_db_url, "--from-snapshot", "--yes"])
    assert result.exit_code == 0, result.output
    assert "1 stream(s) await a snapshot" in result.output
    for table in (orm.products, orm.batches, orm.allocations_view, orm.legacy_line_map):
        assert count(new_db_url, table) == 0

    mark = len(stream.messages)
    stream.allocate("before-the-snapshot", "SKU-002", 1)  # skipped: the snapshot has it
    stream.snapshot(tables=("prod_catalog", "stock_lot"))
    gone = next(o for o, rows in stream.expected_allocations().items() if len(rows) == 1)
    stream.deallocate(stream.line_of(gone))  # lines not reached yet: skipped, not failed
    stream.snapshot(tables=("cust_order_line", "lot_allocation"))
    stream.allocate("after-the-snapshot", "SKU-003", 2)
    apply(bus, [*stream.messages[mark:], stream.heartbeat()])

    assert read_model(new_db_url) == stream.expected_allocations()
    assert "before-the-snapshot" in read_model(new_db_url)
    assert gone not in read_model(new_db_url)
    assert count(new_db_url, orm.dead_letter) == 0
    with bus.uow as uow:
        stream_name = f"legacy/shop/{stream.install}"
        assert uow.positions.snapshot_state(stream_name) is None  # done loading
        assert uow.positions.get(stream_name) == len(stream.messages)


def test_after_loading_an_unknown_row_is_an_error_again(bus: MessageBus) -> None:
    stream = a_day()
    stream.snapshot()
    apply(bus, [*stream.messages, stream.heartbeat()])  # the heartbeat: loading is done
    orphan = stream.emit(
        "lot_allocation",
        "c",
        None,
        {"alloc_id": 9999, "lot_id": 1, "line_id": 9999, "allocated_at": "2024-05-01T10:00:01"},
    )
    with pytest.raises(ingest.UnknownLegacyRow, match="cust_order_line 9999"):
        apply_change(bus, ingest.parse_change(orphan.body, orphan.message_id))
