"""The anti-corruption layer: legacy change envelopes in, domain commands out."""

from __future__ import annotations

import json
import logging
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from new_domain.bootstrap import bootstrap
from new_domain.domain import commands, events
from new_domain.ingest import (
    LEGACY_SHOP,
    Heartbeat,
    LegacyChange,
    MalformedChange,
    UnknownLegacyRow,
    apply_change,
    parse_change,
    parse_message,
)
from new_domain.ingest.ports import LegacyLine, LegacyLot
from tests.fakes import InMemoryLegacyKeys, InMemoryUnitOfWork

INSTALL = "6f1c2a0e-3d4b-4c5d-8e9f-0a1b2c3d4e5f"


def envelope(
    table: str,
    op: str,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
    seq: int = 1,
    connector: str = "postgresql",
) -> dict[str, Any]:
    return {
        "before": before,
        "after": after,
        "op": op,
        "ts_ms": 1714557600000,
        "source": {
            "version": "0.1.0",
            "connector": connector,
            "name": "legacy-shop",
            "db": "shop",
            "schema": "public" if connector == "postgresql" else None,
            "table": table,
            "txid": "7781" if connector == "postgresql" else None,
            "seq": seq,
            "change_id": seq,
            "ts_ms": 1714557600000,
            "snapshot": False,
        },
    }


def change(table: str, op: str, before: Any, after: Any, seq: int = 1) -> LegacyChange:
    body = json.dumps(envelope(table, op, before, after, seq)).encode()
    return parse_change(body, f"{INSTALL}:{seq}")


# Row images exactly as the capture triggers write them.
PG_LOT = {  # to_jsonb(NEW)
    "lot_id": 7,
    "lot_ref": "batch-7",
    "prod_id": 3,
    "qty_units": 20,
    "arrival_date": "2024-06-01",
    "created_at": "2024-05-01T10:00:00.123456",
}
SQLITE_LOT = {  # json_object(...) over SQLAlchemy's SQLite storage
    "lot_id": 7,
    "lot_ref": "batch-7",
    "prod_id": 3,
    "qty_units": 20,
    "arrival_date": None,
    "created_at": "2024-05-01 10:00:00.123456",
}
LINE = {"line_id": 11, "order_no": "order-1", "prod_id": 3, "qty_units": 4}
ALLOCATION = {"alloc_id": 5, "lot_id": 7, "line_id": 11, "allocated_at": "2024-05-01T10:00:01"}


@pytest.fixture
def keys() -> InMemoryLegacyKeys:
    keys = InMemoryLegacyKeys()
    keys.remember_product(3, "LAMP")
    return keys


class TestProducts:
    def test_a_new_product_is_remembered_and_needs_no_command(self) -> None:
        keys = InMemoryLegacyKeys()
        row = {"prod_id": 3, "prod_code": "LAMP", "descr": "a lamp"}
        assert LEGACY_SHOP.translate(change("prod_catalog", "c", None, row), keys) == []
        assert keys.product_sku(3) == "LAMP"

    def test_a_description_change_is_ignored(self, keys: InMemoryLegacyKeys) -> None:
        before = {"prod_id": 3, "prod_code": "LAMP", "descr": None}
        after = {**before, "descr": "bright"}
        assert LEGACY_SHOP.translate(change("prod_catalog", "u", before, after), keys) == []

    def test_a_renamed_product_is_reported_not_mirrored(self, keys: InMemoryLegacyKeys) -> None:
        before = {"prod_id": 3, "prod_code": "LAMP", "descr": None}
        [message] = LEGACY_SHOP.translate(
            change("prod_catalog", "u", before, {**before, "prod_code": "LAMP2"}), keys
        )
        assert isinstance(message, events.LegacyInvariantViolated)
        assert message.reason == "unsupported_change"
        assert keys.product_sku(3) == "LAMP"

    def test_a_deleted_product_is_reported(self, keys: InMemoryLegacyKeys) -> None:
        row = {"prod_id": 3, "prod_code": "LAMP", "descr": None}
        [message] = LEGACY_SHOP.translate(change("prod_catalog", "d", row, None), keys)
        assert isinstance(message, events.LegacyInvariantViolated)
        assert "deleted" in message.detail


class TestLots:
    def test_postgresql_image_becomes_create_batch(self, keys: InMemoryLegacyKeys) -> None:
        assert LEGACY_SHOP.translate(change("stock_lot", "c", None, PG_LOT), keys) == [
            commands.CreateBatch("batch-7", "LAMP", 20, date(2024, 6, 1), creation_number=7)
        ]
        assert keys.lot(7) == LegacyLot("batch-7", "LAMP")

    def test_sqlite_image_becomes_create_batch(self, keys: InMemoryLegacyKeys) -> None:
        assert LEGACY_SHOP.translate(change("stock_lot", "c", None, SQLITE_LOT), keys) == [
            commands.CreateBatch("batch-7", "LAMP", 20, None, creation_number=7)
        ]

    def test_quantity_update_becomes_change_batch_quantity(self, keys: InMemoryLegacyKeys) -> None:
        LEGACY_SHOP.translate(change("stock_lot", "c", None, PG_LOT), keys)
        after = {**PG_LOT, "qty_units": 5}
        assert LEGACY_SHOP.translate(change("stock_lot", "u", PG_LOT, after), keys) == [
            commands.ChangeBatchQuantity("batch-7", 5)
        ]

    def test_an_eta_change_is_reported_not_mirrored(self, keys: InMemoryLegacyKeys) -> None:
        LEGACY_SHOP.translate(change("stock_lot", "c", None, PG_LOT), keys)
        after = {**PG_LOT, "arrival_date": "2024-07-01"}
        [message] = LEGACY_SHOP.translate(change("stock_lot", "u", PG_LOT, after), keys)
        assert isinstance(message, events.LegacyInvariantViolated)
        assert "arrival_date" in message.detail

    def test_a_deleted_lot_is_reported(self, keys: InMemoryLegacyKeys) -> None:
        LEGACY_SHOP.translate(change("stock_lot", "c", None, PG_LOT), keys)
        [message] = LEGACY_SHOP.translate(change("stock_lot", "d", PG_LOT, None), keys)
        assert isinstance(message, events.LegacyInvariantViolated)
        assert message.sku == "LAMP"

    def test_a_lot_of_an_unknown_product_is_an_error(self) -> None:
        with pytest.raises(UnknownLegacyRow, match="prod_catalog 3"):
            LEGACY_SHOP.translate(change("stock_lot", "c", None, PG_LOT), InMemoryLegacyKeys())

    def test_snapshot_read_of_a_known_lot_sets_its_quantity(self, keys: InMemoryLegacyKeys) -> None:
        LEGACY_SHOP.translate(change("stock_lot", "c", None, PG_LOT), keys)
        assert LEGACY_SHOP.translate(change("stock_lot", "r", None, PG_LOT), keys) == [
            commands.ChangeBatchQuantity("batch-7", 20)
        ]


class TestOrderLinesAndAllocations:
    def test_order_lines_only_update_the_line_map(self, keys: InMemoryLegacyKeys) -> None:
        assert LEGACY_SHOP.translate(change("cust_order_line", "c", None, LINE), keys) == []
        assert keys.line(11) == LegacyLine("order-1", "LAMP", 4)
        assert (
            LEGACY_SHOP.translate(
                change("cust_order_line", "u", LINE, {**LINE, "qty_units": 6}), keys
            )
            == []
        )
        assert keys.line(11) == LegacyLine("order-1", "LAMP", 6)
        assert LEGACY_SHOP.translate(change("cust_order_line", "d", LINE, None), keys) == []
        assert keys.line(11) is None

    def test_allocation_becomes_mirror_allocation(self, keys: InMemoryLegacyKeys) -> None:
        LEGACY_SHOP.translate(change("stock_lot", "c", None, PG_LOT), keys)
        LEGACY_SHOP.translate(change("cust_order_line", "c", None, LINE), keys)
        assert LEGACY_SHOP.translate(change("lot_allocation", "c", None, ALLOCATION), keys) == [
            commands.MirrorAllocation("order-1", "LAMP", 4, "batch-7")
        ]

    def test_deleted_allocation_becomes_mirror_deallocation(self, keys: InMemoryLegacyKeys) -> None:
        LEGACY_SHOP.translate(change("stock_lot", "c", None, PG_LOT), keys)
        LEGACY_SHOP.translate(change("cust_order_line", "c", None, LINE), keys)
        assert LEGACY_SHOP.translate(change("lot_allocation", "d", ALLOCATION, None), keys) == [
            commands.MirrorDeallocation("order-1", "LAMP", "batch-7")
        ]

    def test_allocation_moved_by_an_update_is_deallocated_then_allocated(
        self, keys: InMemoryLegacyKeys
    ) -> None:
        LEGACY_SHOP.translate(change("stock_lot", "c", None, PG_LOT), keys)
        LEGACY_SHOP.translate(
            change("stock_lot", "c", None, {**PG_LOT, "lot_id": 8, "lot_ref": "batch-8"}), keys
        )
        LEGACY_SHOP.translate(change("cust_order_line", "c", None, LINE), keys)
        moved = {**ALLOCATION, "lot_id": 8}
        assert LEGACY_SHOP.translate(change("lot_allocation", "u", ALLOCATION, moved), keys) == [
            commands.MirrorDeallocation("order-1", "LAMP", "batch-7"),
            commands.MirrorAllocation("order-1", "LAMP", 4, "batch-8"),
        ]

    def test_allocation_of_an_unseen_line_is_an_error(self, keys: InMemoryLegacyKeys) -> None:
        LEGACY_SHOP.translate(change("stock_lot", "c", None, PG_LOT), keys)
        with pytest.raises(UnknownLegacyRow, match="cust_order_line 11"):
            LEGACY_SHOP.translate(change("lot_allocation", "c", None, ALLOCATION), keys)


def test_unknown_tables_are_ignored_with_a_debug_log(
    keys: InMemoryLegacyKeys, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="new_domain.ingest.translators"):
        assert LEGACY_SHOP.translate(change("audit_log", "c", None, {"id": 1}), keys) == []
    assert "audit_log" in caplog.text


def test_sqlite_style_strings_and_debezium_dates_are_understood(keys: InMemoryLegacyKeys) -> None:
    row = {**SQLITE_LOT, "lot_id": "7", "qty_units": "20", "arrival_date": 19875}
    [command] = LEGACY_SHOP.translate(change("stock_lot", "c", None, row), keys)
    assert command == commands.CreateBatch(
        "batch-7", "LAMP", 20, date(2024, 6, 1), creation_number=7
    )


@pytest.mark.parametrize(
    ("body", "complaint"),
    [
        (b"not json", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[1, 2]", "JSON object"),
        (json.dumps({**envelope("stock_lot", "c", None, PG_LOT), "op": "x"}).encode(), "op"),
        (
            json.dumps({**envelope("stock_lot", "c", None, PG_LOT), "source": None}).encode(),
            "source",
        ),
        (json.dumps(envelope("stock_lot", "d", None, None)).encode(), "before"),
        (json.dumps(envelope("stock_lot", "c", None, None)).encode(), "after"),
        (json.dumps(envelope("stock_lot", "c", None, "row")).encode(), "after"),  # type: ignore[arg-type]
    ],
)
def test_malformed_envelopes_are_refused_clearly(body: bytes, complaint: str) -> None:
    with pytest.raises(MalformedChange, match=complaint):
        parse_change(body)


@pytest.mark.parametrize("seq", [None, "5", True, -1])
def test_the_position_must_be_a_non_negative_integer(seq: Any) -> None:
    body = envelope("stock_lot", "c", None, PG_LOT)
    body["source"]["seq"] = seq
    with pytest.raises(MalformedChange, match="seq"):
        parse_change(body)


def test_a_row_image_missing_a_column_is_malformed(keys: InMemoryLegacyKeys) -> None:
    row = {k: v for k, v in PG_LOT.items() if k != "qty_units"}
    with pytest.raises(MalformedChange, match="stock_lot.qty_units"):
        LEGACY_SHOP.translate(change("stock_lot", "c", None, row), keys)


def test_positions_are_compared_within_one_capture_install() -> None:
    body = json.dumps(envelope("stock_lot", "c", None, PG_LOT, seq=9))
    first = parse_change(body, f"{INSTALL}:9")
    reinstalled = parse_change(body, "another-install:9")
    unknown_form = parse_change(body, "some-other-id")
    assert first.stream == f"legacy-shop/shop/{INSTALL}"
    assert reinstalled.stream != first.stream
    assert unknown_form.stream == "legacy-shop/shop"
    assert first.position == 9


class TestExactlyOnceEffect:
    def test_a_redelivered_change_has_no_effect(self) -> None:
        uow = InMemoryUnitOfWork()
        bus = bootstrap(uow=uow)
        for seq, (table, row) in enumerate(
            [
                ("prod_catalog", {"prod_id": 3, "prod_code": "LAMP", "descr": None}),
                ("stock_lot", PG_LOT),
                ("cust_order_line", LINE),
                ("lot_allocation", ALLOCATION),
            ],
            start=1,
        ):
            assert apply_change(bus, change(table, "c", None, row, seq)) is True
        assert apply_change(bus, change("lot_allocation", "c", None, ALLOCATION, 4)) is False
        assert (
            apply_change(bus, change("stock_lot", "u", PG_LOT, {**PG_LOT, "qty_units": 1}, 2))
            is False
        )
        assert uow.positions.get(f"legacy-shop/shop/{INSTALL}") == 4
        lamp = uow.products.get("LAMP")
        assert lamp is not None and lamp.version_number == 2
        assert lamp.batch("batch-7").purchased_quantity == 20  # type: ignore[union-attr]
        assert uow.allocations_view.rows_for("order-1") == [("LAMP", "batch-7")]


@pytest.mark.parametrize("connector", ["postgresql", "sqlite"])
@pytest.mark.parametrize(
    ("table", "op", "before", "after"),
    [
        ("stock_lot", "c", None, PG_LOT),
        ("stock_lot", "u", PG_LOT, {**PG_LOT, "qty_units": 5}),
        ("lot_allocation", "d", ALLOCATION, None),
    ],
)
def test_the_envelopes_used_here_follow_the_published_schema(
    connector: str, table: str, op: str, before: Any, after: Any
) -> None:
    import jsonschema

    schema_path = Path(__file__).resolve().parents[2] / "docs/schemas/legacy-cdc-change.schema.json"
    schema = json.loads(schema_path.read_text())
    body = envelope(table, op, before, after, seq=3, connector=connector)
    jsonschema.validate(body, schema)
    assert parse_change(body).position == 3


class TestRound2Envelopes:
    def test_a_snapshot_read_of_an_allocation_becomes_sync_allocation(
        self, keys: InMemoryLegacyKeys
    ) -> None:
        LEGACY_SHOP.translate(change("stock_lot", "c", None, PG_LOT), keys)
        LEGACY_SHOP.translate(change("cust_order_line", "r", None, LINE), keys)
        assert keys.line(11) == LegacyLine("order-1", "LAMP", 4)
        assert LEGACY_SHOP.translate(change("lot_allocation", "r", None, ALLOCATION), keys) == [
            commands.SyncAllocation("order-1", "LAMP", 4, "batch-7")
        ]

    def test_a_snapshot_read_of_a_new_lot_creates_the_batch(self, keys: InMemoryLegacyKeys) -> None:
        assert LEGACY_SHOP.translate(change("stock_lot", "r", None, PG_LOT), keys) == [
            commands.CreateBatch("batch-7", "LAMP", 20, date(2024, 6, 1), creation_number=7)
        ]

    @pytest.mark.parametrize("message_type", ["heartbeat", "change"])
    def test_heartbeats_are_known_by_amqp_type_or_by_body(self, message_type: str) -> None:
        body = json.dumps(
            {
                "type": "heartbeat",
                "ts_ms": 1714557600500,
                "source": {"version": "0.1.0", "connector": "postgresql", "name": "n", "db": "d"},
                "last_commit_ts_ms": 1714557600000,
                "last_seq": 41,
            }
        )
        parsed = parse_message(body, f"{INSTALL}:hb:1714557600500", message_type)
        assert parsed == Heartbeat("n/d", 1714557600500, 1714557600000)

    def test_a_heartbeat_by_type_needs_no_readable_body(self) -> None:
        assert parse_message(b"{}", "hb-1", "heartbeat") == Heartbeat("-/-", None, None)

    def test_the_transaction_block_says_where_a_legacy_transaction_ends(self) -> None:
        body = envelope("stock_lot", "c", None, PG_LOT)
        assert parse_change(body).ends_transaction  # no block: every change stands alone
        for last in (False, True):
            body["transaction"] = {
                "id": "7781",
                "total_order": 1,
                "data_collection_order": 1,
                "last": last,
            }
            assert parse_change(body).ends_transaction is last

    def test_snapshot_reads_share_the_stream_of_their_install(self) -> None:
        body = envelope("stock_lot", "r", None, PG_LOT, seq=12)
        body["source"]["snapshot"] = "last"
        assert parse_change(body, f"{INSTALL}:snapshot:12").stream == (
            f"legacy-shop/shop/{INSTALL}"
        )

    def test_commit_time_and_source_are_read(self) -> None:
        parsed = parse_change(envelope("stock_lot", "c", None, PG_LOT))
        assert (parsed.source, parsed.committed_at_ms) == ("legacy-shop/shop", 1714557600000)
