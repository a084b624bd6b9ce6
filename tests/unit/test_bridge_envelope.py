"""The change envelope, its AMQP message and the throughput log (pure, no database)."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta, timezone

import pytest

from legacy_bridge.change_log import Change
from legacy_bridge.envelope import Source, change_event, change_message, epoch_ms
from legacy_bridge.throughput import ThroughputLog
from tests.unit.test_bridge_contract import envelope_validator

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
