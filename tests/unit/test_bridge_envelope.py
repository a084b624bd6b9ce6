"""The change envelope, heartbeats, their AMQP messages and the throughput log (pure, no
database)."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta, timezone

import jsonschema
import pytest

from legacy_bridge.change_log import Change
from legacy_bridge.envelope import Source, change_event, change_message, epoch_ms
from legacy_bridge.heartbeat import heartbeat_event, heartbeat_message
from legacy_bridge.throughput import ThroughputLog
from tests.unit.test_bridge_contract import SCHEMA_PATH, envelope_validator

SOURCE = Source(connector="postgresql", name="shop", db="legacy", schema="public", install_id="abc")
CAPTURED = datetime(2024, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
NOW = datetime(2024, 1, 2, 3, 4, 6, tzinfo=UTC)


def a_change(**overrides: object) -> Change:
    fields: dict[str, object] = {
        "change_id": 41,
        "txid": 9001,
        "table_name": "stock_lot",
        "op": "u",
        "pk": {"lot_id": 3},
        "before": {"lot_id": 3, "lot_ref": "Zürich-1", "qty_units": 5},
        "after": {"lot_id": 3, "lot_ref": "Zürich-1", "qty_units": 4},
        "captured_at": CAPTURED,
        "pos": 17,
    }
    fields.update(overrides)
    return Change(**fields)  # type: ignore[arg-type]


def test_event_is_debezium_shaped_and_valid() -> None:
    event = change_event(a_change(), SOURCE, NOW)

    envelope_validator().validate(event)
    assert event["op"] == "u"
    assert event["ts_ms"] == 1704164646000
    assert event["before"]["qty_units"] == 5
    assert event["after"]["qty_units"] == 4
    assert event["source"] == {
        "version": "0.1.0",
        "connector": "postgresql",
        "name": "shop",
        "db": "legacy",
        "schema": "public",
        "table": "stock_lot",
        "txid": "9001",
        "seq": 17,
        "change_id": 41,
        "ts_ms": 1704164645678,
        "snapshot": False,
    }


def test_missing_txid_stays_null() -> None:
    assert change_event(a_change(txid=None), SOURCE, NOW)["source"]["txid"] is None


def test_message_carries_the_amqp_contract() -> None:
    message = change_message(a_change(), SOURCE, NOW)

    assert message.routing_key == "stock_lot.u"
    assert message.message_id == "abc:41"
    assert message.type == "change"
    assert message.content_type == "application/json"
    assert dict(message.headers) == {"x-legacy-table": "stock_lot", "x-legacy-seq": 17}
    assert message.timestamp == 1704164646
    assert b": " not in message.body and b", " not in message.body  # compact
    assert "Zürich-1".encode() in message.body  # UTF-8, not \\u escapes
    assert json.loads(message.body) == change_event(a_change(), SOURCE, NOW)


def test_message_id_is_stable_across_resends() -> None:
    first = change_message(a_change(), SOURCE, NOW)
    later = change_message(a_change(), SOURCE, NOW + timedelta(minutes=5))
    assert first.message_id == later.message_id
    assert first.body != later.body  # only the publish time differs


@pytest.mark.parametrize(
    "moment",
    [
        datetime(2024, 1, 2, 3, 4, 5, 678000),  # naive: UTC
        datetime(2024, 1, 2, 5, 4, 5, 678000, tzinfo=timezone(timedelta(hours=2))),
    ],
)
def test_epoch_ms_reads_naive_times_as_utc(moment: datetime) -> None:
    assert epoch_ms(moment) == 1704164645678


def test_throughput_is_logged_at_most_once_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    log = ThroughputLog(logging.getLogger("test.bridge"), interval=5.0, clock=lambda: now[0])
    caplog.set_level(logging.INFO, logger="test.bridge")

    for second in range(1, 10):
        now[0] = float(second)
        log.record(100, last_pos=second * 100)

    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["published 500 changes in 5.0 s (100/s), confirmed up to position 500"]
    assert log.total == 900


HEARTBEAT_SCHEMA = SCHEMA_PATH.parent / "legacy-cdc-heartbeat.schema.json"


def heartbeat_validator() -> jsonschema.protocols.Validator:
    schema = json.loads(HEARTBEAT_SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_transaction_block_names_the_transaction_and_the_place_in_it() -> None:
    event = change_event(a_change(tx_order=3, tx_table_order=2, tx_last=True), SOURCE, NOW)

    envelope_validator().validate(event)
    assert event["transaction"] == {
        "id": "9001",
        "total_order": 3,
        "data_collection_order": 2,
        "last": True,
    }


def test_changes_without_transaction_id_have_a_null_transaction() -> None:
    event = change_event(a_change(txid=None, tx_order=1, tx_table_order=1), SOURCE, NOW)
    envelope_validator().validate(event)
    assert event["transaction"] is None


def test_sqlite_commit_groups_show_only_as_transaction_id() -> None:
    sqlite = Source("sqlite", "shop", "legacy", None, "abc", real_txids=False)
    event = change_event(a_change(txid=7, tx_order=1, tx_table_order=1, tx_last=True), sqlite, NOW)

    assert event["source"]["txid"] is None
    assert event["transaction"]["id"] == "7"


@pytest.mark.parametrize(("last", "flag"), [(False, True), (True, "last")])
def test_snapshot_rows_are_flagged(last: bool, flag: object) -> None:
    row = {"lot_id": 3, "qty_units": 4}
    change = a_change(op="r", before=None, after=row, snapshot_last=last)

    event = change_event(change, SOURCE, NOW)
    message = change_message(change, SOURCE, NOW)

    envelope_validator().validate(event)
    assert event["source"]["snapshot"] == flag
    assert message.routing_key == "stock_lot.r"
    assert message.type == "change"


def test_schema_ties_the_snapshot_flag_to_op_r() -> None:
    validator = envelope_validator()
    event = change_event(a_change(), SOURCE, NOW)
    assert not validator.is_valid({**event, "source": {**event["source"], "snapshot": True}})
    read = change_event(a_change(op="r", before=None), SOURCE, NOW)
    assert not validator.is_valid({**read, "source": {**read["source"], "snapshot": False}})
    assert not validator.is_valid({**event, "transaction": {"id": "1", "total_order": 0}})


def test_heartbeat_follows_its_schema_and_the_amqp_contract() -> None:
    message = heartbeat_message(SOURCE, NOW, CAPTURED, 42)
    body = json.loads(message.body)

    heartbeat_validator().validate(body)
    assert body == {
        "type": "heartbeat",
        "ts_ms": 1704164646000,
        "source": {"version": "0.1.0", "connector": "postgresql", "name": "shop", "db": "legacy"},
        "last_commit_ts_ms": 1704164645678,
        "last_seq": 42,
    }
    assert message.routing_key == "heartbeat"
    assert message.type == "heartbeat"
    assert message.message_id == "abc:hb:1704164646000"
    assert message.content_type == "application/json"
    assert not envelope_validator().is_valid(body)  # never mistaken for a change


def test_heartbeat_before_any_change_has_null_commit_time() -> None:
    body = heartbeat_event(SOURCE, NOW, None, 0)
    heartbeat_validator().validate(body)
    assert body["last_commit_ts_ms"] is None


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"tx_order": 2, "tx_table_order": 1, "tx_last": True},
        {"txid": None},
        {"op": "r", "before": None, "snapshot_last": True, "tx_order": 1, "tx_table_order": 1},
        {"op": "r", "before": None},
        {"op": "d", "after": None, "table_name": 'odd "name"'},
    ],
)
@pytest.mark.parametrize("real_txids", [True, False])
def test_the_message_body_is_the_compact_encoded_event(
    overrides: dict[str, object], real_txids: bool
) -> None:
    source = Source("sqlite", "shop", "legacy", None, "abc", real_txids=real_txids)
    change = a_change(**overrides)
    body = change_message(change, source, NOW).body
    event = change_event(change, source, NOW)
    assert body == json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode()
