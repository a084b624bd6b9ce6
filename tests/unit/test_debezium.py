"""Real Debezium's events, as Debezium 3.6.3 captured the legacy shop, read and applied.

``tests/fixtures/debezium-3.6.3-postgres-legacy-shop.jsonl`` is every record the
PostgreSQL connector produced (pgoutput, initial snapshot, JSON without schemas,
transaction metadata, heartbeats, default REPLICA IDENTITY): the topic, the key and the
value exactly as serialised. Here it goes through the consumer the way Debezium
Server's RabbitMQ sink publishes it (an exchange per topic, routing key "", no
properties) into a SQLite new database, and the new model must end up holding what
legacy held at the end of the capture.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, date, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

import broker
from broker import Broker, Message
from new_domain import Consumer, bootstrap, upgrade_database
from new_domain.adapters import orm
from new_domain.adapters.database import create_engine
from new_domain.ingest import (
    AfterNewSnapshot,
    ChangeFailed,
    Heartbeat,
    LegacyChange,
    MalformedChange,
    PositionTooFar,
    Tombstone,
    TransactionBoundary,
    apply_changes,
    debezium,
    heartbeat_sources,
    parse_message,
)
from new_domain.service_layer.messagebus import MessageBus
from new_domain.service_layer.unit_of_work import SqlAlchemyUnitOfWork

SAMPLE = Path(__file__).parents[1] / "fixtures" / "debezium-3.6.3-postgres-legacy-shop.jsonl"
QUEUE = "new_domain.legacy_cdc"
STREAM = "legacy/dbz_legacy"
KEYS = {
    "prod_catalog": "prod_id",
    "stock_lot": "lot_id",
    "cust_order_line": "line_id",
    "lot_allocation": "alloc_id",
}


def records() -> list[dict[str, Any]]:
    return [json.loads(line) for line in SAMPLE.read_text().splitlines() if line.strip()]


def body(record: dict[str, Any]) -> bytes:
    """What the sink publishes: the value as serialised (nothing for a tombstone)."""
    return b"" if record["value"] is None else record["value"].encode()


def topics() -> list[str]:
    return sorted({record["destination"] for record in records()})


def legacy_at_the_end(sample: list[dict[str, Any]]) -> dict[str, dict[int, dict[str, Any]]]:
    """Legacy's tables as the sample's row images leave them (key -> row)."""
    tables: dict[str, dict[int, dict[str, Any]]] = {table: {} for table in KEYS}
    for record in sample:
        value = None if record["value"] is None else json.loads(record["value"])
        if not value or "op" not in value:
            continue
        table = value["source"]["table"]
        key = json.loads(record["key"])[KEYS[table]]
        if value["op"] == "d":
            tables[table].pop(key, None)
        else:
            tables[table][key] = value["after"]
    return tables


def expected_state(sample: list[dict[str, Any]]) -> dict[str, Any]:
    """What the new model must hold: every lot as a batch (sku, quantity, eta,
    quantity allocated) and every allocation (order, sku, batch)."""
    legacy = legacy_at_the_end(sample)
    sku = {p["prod_id"]: p["prod_code"] for p in legacy["prod_catalog"].values()}
    lots = legacy["stock_lot"]
    lines = legacy["cust_order_line"]
    allocated: Counter[str] = Counter()
    allocations = set()
    for row in legacy["lot_allocation"].values():
        line, lot = lines[row["line_id"]], lots[row["lot_id"]]
        allocated[lot["lot_ref"]] += line["qty_units"]
        allocations.add((line["order_no"], sku[line["prod_id"]], lot["lot_ref"]))
    batches = {
        lot["lot_ref"]: (
            sku[lot["prod_id"]],
            lot["qty_units"],
            None
            if lot["arrival_date"] is None
            else date(1970, 1, 1) + timedelta(days=lot["arrival_date"]),
            allocated[lot["lot_ref"]],
        )
        for lot in lots.values()
    }
    return {"batches": batches, "allocations": allocations}


def new_state(uow: SqlAlchemyUnitOfWork) -> dict[str, Any]:
    b, a = orm.batches, orm.allocations_view
    with uow.engine.connect() as connection:
        batches = {
            row.reference: (row.sku, row.purchased_quantity, row.eta, row.allocated_quantity)
            for row in connection.execute(select(b))
        }
        allocations = {
            (row.orderid, row.sku, row.batchref) for row in connection.execute(select(a))
        }
    return {"batches": batches, "allocations": allocations}


def count(uow: SqlAlchemyUnitOfWork, table: Any) -> int:
    with uow.engine.connect() as connection:
        return len(connection.execute(select(table)).all())


@pytest.fixture
def uow(tmp_path: Path) -> Iterator[SqlAlchemyUnitOfWork]:
    url = f"sqlite:///{tmp_path / 'new.db'}"
    upgrade_database(url)
    uow = SqlAlchemyUnitOfWork(create_engine(url, for_writes=True))
    yield uow
    uow.close()


@pytest.fixture
def bus(uow: SqlAlchemyUnitOfWork) -> MessageBus:
    return bootstrap(uow=uow)


@pytest.fixture
def publisher(memory_broker_url: str) -> Iterator[Broker]:
    b = broker.connect(memory_broker_url)
    yield b
    b.close()


@pytest.fixture
def make_consumer(bus: MessageBus, memory_broker_url: str) -> Iterator[Callable[..., Consumer]]:
    made: list[Consumer] = []

    def make(**options: Any) -> Consumer:
        consumer = Consumer(
            bus,
            lambda: broker.connect(memory_broker_url),
            QUEUE,
            bind_exchanges=topics(),
            max_attempts=1,
            retry_backoff=0.0,
            **options,
        )
        consumer.connect()
        made.append(consumer)
        return consumer

    yield make
    for consumer in made:
        consumer.close()


def publish_as_debezium_server(publisher: Broker, sample: list[dict[str, Any]]) -> None:
    """Each record to the exchange named after its topic, routing key "", and no
    message id, content type or type."""
    for record in sample:
        message = Message("", body(record), message_id="", type="", content_type="")
        publisher.publish(record["destination"], [message])


def consume_all(consumer: Consumer, publisher: Broker) -> None:
    deadline = time.monotonic() + 30
    while publisher.queue_depth(QUEUE) or consumer._pending.items:
        assert time.monotonic() < deadline, "the consumer did not drain its queue"
        consumer.run_once()


# -- reading ------------------------------------------------------------------------------


def test_every_record_of_the_sample_is_understood() -> None:
    kinds: Counter[str] = Counter()
    changes: list[LegacyChange] = []
    for record in records():
        parsed = parse_message(body(record))
        kinds[type(parsed).__name__] += 1
        if isinstance(parsed, LegacyChange):
            changes.append(parsed)
        if isinstance(parsed, TransactionBoundary):
            assert parsed.transaction_id.isdigit()  # the txId of its changes
    sample = records()
    assert kinds["Tombstone"] == sum(1 for r in sample if r["value"] is None) > 0
    assert kinds["TransactionBoundary"] == sum(
        1 for r in sample if r["destination"] == "legacy.transaction"
    )
    assert kinds["Heartbeat"] == sum(1 for r in sample if r["destination"].startswith("__"))
    assert kinds["LegacyChange"] == len(changes) > 20
    assert {c.stream for c in changes} == {STREAM}
    assert all(c.debezium and not c.dense for c in changes)
    snapshot = [c for c in changes if c.op == "r"]
    streamed = [c for c in changes if c.op != "r"]
    assert len({c.position for c in snapshot}) == 1  # one snapshot, one position
    assert snapshot[-1].snapshot_mark == "last"
    positions = [c.position for c in streamed]
    assert positions == sorted(set(positions))  # strictly increasing in stream order
    assert snapshot[0].position < positions[0]
    assert len({c.message_id for c in streamed}) == len(streamed)  # derived, distinct
    assert all(c.message_id and c.message_id.startswith("dbz:") for c in streamed)
    assert all(c.committed_at_ms and c.committed_at_ms > 1_700_000_000_000 for c in changes)


def test_a_change_in_a_transaction_waits_for_its_end() -> None:
    parsed = [parse_message(body(r)) for r in records()]
    in_transactions = [c for c in parsed if isinstance(c, LegacyChange) and c.op != "r"]
    assert in_transactions and not any(c.ends_transaction for c in in_transactions)
    assert {c.transaction_order for c in in_transactions} >= {1, 2, 3, 4, 5}


def test_debezium_heartbeats_tombstones_and_schemas_are_understood() -> None:
    assert parse_message(b'{"ts_ms": 1796402725538}') == Heartbeat("*/*", 1796402725538, None)
    assert parse_message(b"") == Tombstone()
    assert parse_message(b"null") == Tombstone()
    assert parse_message(b"default", tombstone=b"default") == Tombstone()
    with pytest.raises(MalformedChange, match="JSON"):
        parse_message(b"default")
    value = next(r["value"] for r in records() if r["value"] and '"op":"c"' in r["value"])
    with_schema = json.dumps({"schema": {"type": "struct"}, "payload": json.loads(value)})
    assert parse_message(with_schema) == parse_message(value)


def _first_streamed() -> dict[str, Any]:
    return next(
        json.loads(r["value"]) for r in records() if r["value"] and '"op":"c"' in r["value"]
    )


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        ({"sequence": '["x", "1"]'}, "sequence"),
        ({"sequence": "[1]"}, "sequence"),
        ({"lsn": -5}, "lsn"),
        ({"lsn": 2**64}, "lsn"),
        ({"sequence": '[null, "12"]', "lsn": 13}, "sequence\\[1\\]"),
        ({"snapshot": "incremental"}, "snapshot"),
        ({"connector": "oracle"}, "connector"),
        ({"txId": {"x": 1}}, "transaction id"),
    ],
)
def test_a_debezium_source_without_a_readable_position_is_refused(
    change: dict[str, Any], complaint: str
) -> None:
    envelope = _first_streamed()
    envelope["source"].update(change)
    with pytest.raises(MalformedChange, match=complaint):
        parse_message(json.dumps(envelope))


def test_binlog_positions_follow_file_pos_and_row_and_snapshots_come_first() -> None:
    def position(file: str, pos: int, row: int, snapshot: Any = "false") -> int:
        source = {"connector": "mysql", "file": file, "pos": pos, "row": row, "snapshot": snapshot}
        return debezium.coordinates(source, "r" if snapshot != "false" else "c", None).position

    order = [
        position("mysql-bin.000003", 900, 0, "last"),
        position("mysql-bin.000003", 900, 0),
        position("mysql-bin.000003", 900, 1),
        position("mysql-bin.000003", 1200, 0),
        position("mysql-bin.000004", 4, 0),
    ]
    assert order == sorted(set(order))
    postgres = debezium.coordinates({"connector": "postgresql", "lsn": 2**64 - 8}, "c", None)
    assert all(postgres.position < p for p in order)  # the two kinds never mix
    assert debezium.jumps_too_far(order[1], position("mysql-bin.099999", 4, 0))
    assert not debezium.jumps_too_far(order[1], order[-1])


# -- applying -----------------------------------------------------------------------------


@pytest.mark.parametrize("batch_size", [1, 4, 500])
def test_the_whole_capture_applied_through_the_consumer_leaves_legacy_s_state(
    make_consumer: Callable[..., Consumer],
    publisher: Broker,
    uow: SqlAlchemyUnitOfWork,
    batch_size: int,
) -> None:
    consumer = make_consumer(batch_size=batch_size, transaction_hold=0.0)
    sample = records()
    publish_as_debezium_server(publisher, sample)
    consume_all(consumer, publisher)
    assert count(uow, orm.dead_letter) == 0
    assert count(uow, orm.anomaly) == 0
    assert new_state(uow) == expected_state(sample)
    with uow.engine.connect() as connection:
        parity = connection.execute(select(orm.decision_parity)).all()
    ends = sum(1 for r in sample if '"status":"END"' in (r["value"] or ""))
    assert sum(row.agree + row.differ for row in parity) == ends  # each judged, once
    if batch_size > 1:  # a prefetch window of 2 splits the larger transactions
        assert all(row.route != "unclassified" for row in parity)  # whole: none split
    with uow:
        assert uow.positions.snapshot_state(STREAM) is None  # loading ended on "last"
        last = [parse_message(body(r)) for r in sample]
        streamed = [c.position for c in last if isinstance(c, LegacyChange)]
        assert uow.positions.get(STREAM) == streamed[-1]


def test_a_redelivered_capture_changes_nothing(
    make_consumer: Callable[..., Consumer], publisher: Broker, uow: SqlAlchemyUnitOfWork
) -> None:
    consumer = make_consumer()
    sample = records()
    publish_as_debezium_server(publisher, sample)
    consume_all(consumer, publisher)
    before = new_state(uow)
    publish_as_debezium_server(publisher, sample)  # Debezium restarted from an old offset
    consume_all(consumer, publisher)
    assert new_state(uow) == before == expected_state(sample)
    assert count(uow, orm.dead_letter) == 0


def test_whole_transactions_are_judged_and_the_new_rules_agree_with_legacy(
    bus: MessageBus, uow: SqlAlchemyUnitOfWork
) -> None:
    """With BEGIN/END each legacy transaction is applied whole and judged by decision
    parity on the state just before it: the sample's eight decisions, all agreeing."""
    sample = records()
    parsed = [parse_message(body(r)) for r in sample]
    apply_changes(bus, parsed)
    with uow.engine.connect() as connection:
        parity = {
            row.route: (row.agree, row.differ)
            for row in connection.execute(select(orm.decision_parity))
        }
    assert parity == {
        "POST /batches": (2, 0),
        "POST /allocate": (4, 0),
        "POST /deallocate": (1, 0),
        "PATCH /batches/<ref>": (1, 0),
    }
    ends = sum(1 for p in parsed if isinstance(p, TransactionBoundary) and p.status == "END")
    assert sum(agree for agree, _ in parity.values()) == ends
    assert new_state(uow) == expected_state(sample)


def test_without_transaction_metadata_every_change_is_applied_on_its_own(
    bus: MessageBus, uow: SqlAlchemyUnitOfWork
) -> None:
    sample = [r for r in records() if r["destination"] != "legacy.transaction"]
    for record in sample:
        if record["value"] and '"transaction":{' in record["value"]:
            value = json.loads(record["value"])
            value["transaction"] = None
            record["value"] = json.dumps(value)
    parsed = [parse_message(body(r)) for r in sample]
    assert all(p.ends_transaction for p in parsed if isinstance(p, LegacyChange))
    for item in parsed:
        apply_changes(bus, [item])
    assert new_state(uow) == expected_state(sample)
    assert count(uow, orm.dead_letter) == 0


def test_a_change_to_a_row_never_seen_is_not_skipped(bus: MessageBus) -> None:
    """Without its snapshot, the deallocation of a snapshot row cannot be resolved: it
    fails (to be retried, then dead-lettered), it is never skipped in silence."""
    streamed = [
        p
        for p in (parse_message(body(r)) for r in records())
        if isinstance(p, LegacyChange) and p.op != "r"
    ]
    with pytest.raises(ChangeFailed, match="never seen"):
        for change in streamed:
            apply_changes(bus, [change])


def test_a_forged_far_future_position_is_dead_lettered_not_stored(
    bus: MessageBus, uow: SqlAlchemyUnitOfWork
) -> None:
    sample = records()
    apply_changes(bus, [parse_message(body(r)) for r in sample])
    with uow:
        stored = uow.positions.get(STREAM)
    assert stored is not None
    forged = _first_streamed()
    commit = str(stored // 2**64 + 2**45)
    forged["source"]["sequence"] = json.dumps([commit, str(forged["source"]["lsn"])])
    forged["transaction"] = None
    with pytest.raises(ChangeFailed) as failed:
        apply_changes(bus, [parse_message(json.dumps(forged))])
    assert isinstance(failed.value.error, PositionTooFar)
    with uow:
        assert uow.positions.get(STREAM) == stored


def _moved(record: dict[str, Any], lsn: int, last_commit: int | None) -> str:
    """``record`` as Debezium sends it at ``lsn`` after ``last_commit``."""
    value = json.loads(record["value"])
    commit = None if last_commit is None else str(last_commit)
    value["source"] = {**value["source"], "lsn": lsn, "sequence": json.dumps([commit, str(lsn)])}
    return json.dumps(value)


def test_a_new_snapshot_taken_after_the_stream_moved_on_is_refused_not_skipped(
    bus: MessageBus, uow: SqlAlchemyUnitOfWork
) -> None:
    """Debezium snapshots again when its stored offsets said the first snapshot was not
    finished (a kill before they were stored): the new snapshot's rows and the first
    transaction after it sit below the stream's position, but they are not re-sends (they
    lie beyond the WAL the stream covers), so they are dead-lettered, never skipped."""
    sample = records()
    apply_changes(bus, [parse_message(body(r)) for r in sample])
    with uow:
        stored = uow.positions.get(STREAM)
    assert stored is not None and stored // 2**64 >= 2  # past its first transaction
    reach = max(stored // 2**64 - 2, stored % 2**64)
    snapshot_row = next(r for r in sample if '"op":"r"' in (r["value"] or ""))
    created = next(r for r in sample if '"op":"c"' in (r["value"] or ""))
    for moved in (
        _moved(snapshot_row, reach + 4096, None),  # a row of the new snapshot
        _moved(created, reach + 8192, None),  # the first transaction after it
    ):
        with pytest.raises(ChangeFailed) as failed:
            apply_changes(bus, [parse_message(moved)])
        assert isinstance(failed.value.error, AfterNewSnapshot)
        assert "rebuild" in str(failed.value.error)
    resent = apply_changes(bus, [parse_message(body(snapshot_row)), parse_message(body(created))])
    assert (resent.applied, resent.skipped) == (0, 2)  # re-sends of the first ones: skipped
    with uow:
        assert uow.positions.get(STREAM) == stored


@pytest.mark.parametrize(
    ("last", "position", "snapshot_row", "expected"),
    [
        (None, 5, True, False),  # a new stream: its first snapshot
        ((3 + 2) * 2**64 + 90, 0 * 2**64 + 50, True, False),  # first snapshot, re-sent
        ((3 + 2) * 2**64 + 90, 0 * 2**64 + 95, True, True),  # a snapshot beyond the WAL
        ((3 + 2) * 2**64 + 90, 1 * 2**64 + 2, False, False),  # first transaction, re-sent
        ((3 + 2) * 2**64 + 90, 1 * 2**64 + 91, False, True),  # after a new snapshot
        ((3 + 2) * 2**64 + 90, (3 + 2) * 2**64 + 95, False, False),  # ahead: a new change
        (1 * 2**64 + 40, 0 * 2**64 + 60, True, False),  # still in its first transaction
        ((100 + 2) * 2**64 + 7, (60 + 2) * 2**64 + 95, False, False),  # long transactions
    ],
)
def test_what_came_after_a_new_postgres_snapshot(
    last: int | None, position: int, snapshot_row: bool, expected: bool
) -> None:
    assert debezium.after_new_snapshot(last, position, snapshot_row) is expected


def test_what_came_after_a_new_binlog_snapshot() -> None:
    def position(pos: int, snapshot: Any = "false") -> int:
        source = {"connector": "mysql", "file": "bin.000002", "pos": pos, "snapshot": snapshot}
        return debezium.coordinates(source, "r" if snapshot != "false" else "c", None).position

    first, streamed, again = position(100, "true"), position(300), position(900, "true")
    assert debezium.after_new_snapshot(streamed, again, snapshot_row=True)
    assert not debezium.after_new_snapshot(streamed, first, snapshot_row=True)  # re-sent
    assert not debezium.after_new_snapshot(first, again, snapshot_row=True)  # while loading
    assert not debezium.after_new_snapshot(streamed, position(400), snapshot_row=False)


def test_a_snapshot_after_a_reset_loads_again(bus: MessageBus, uow: SqlAlchemyUnitOfWork) -> None:
    """A stream reset to await a snapshot takes Debezium's next snapshot whole, though
    its position is below the stream's."""
    sample = records()
    apply_changes(bus, [parse_message(body(r)) for r in sample])
    snapshot = [
        p
        for p in (parse_message(body(r)) for r in sample)
        if isinstance(p, LegacyChange) and p.op == "r"
    ]
    with uow:
        uow.positions.set(STREAM, uow.positions.get(STREAM) or 0, "awaiting")
        uow.commit()
    renamed = [
        dataclasses.replace(c, after={**c.row, "qty_units": 99}) if c.table == "stock_lot" else c
        for c in snapshot
    ]
    for change in renamed:
        apply_changes(bus, [change])
    with uow:
        assert uow.positions.get(STREAM) == snapshot[0].position
        assert uow.positions.snapshot_state(STREAM) is None
    quantities = {ref: qty for ref, (_, qty, _, _) in new_state(uow)["batches"].items()}
    assert quantities["b1"] == quantities["b2"] == quantities["b3"] == 99


def test_the_sample_follows_the_published_debezium_schemas() -> None:
    import jsonschema

    schemas = Path(__file__).resolve().parents[2] / "docs" / "schemas"

    def validator(name: str) -> jsonschema.protocols.Validator:
        schema = json.loads((schemas / f"{name}.schema.json").read_text())
        jsonschema.Draft202012Validator.check_schema(schema)
        return jsonschema.Draft202012Validator(schema)

    change, boundary, heartbeat = (
        validator(f"debezium-{kind}") for kind in ("change", "transaction", "heartbeat")
    )
    kit = validator("legacy-cdc-change")
    for record in records():
        if record["value"] is None:
            continue
        value = json.loads(record["value"])
        if record["destination"].endswith(".transaction"):
            boundary.validate(value)
        elif record["destination"].startswith("__debezium-heartbeat."):
            heartbeat.validate(value)
        else:
            change.validate(value)
            assert not kit.is_valid(value)  # the two envelopes differ (docs/debezium.md)
            kit_like = {**value, "source": {**value["source"], "seq": 1}}
            assert not change.is_valid(kit_like)


def test_the_consumer_dead_letters_a_forged_position_and_goes_on(
    make_consumer: Callable[..., Consumer], publisher: Broker, uow: SqlAlchemyUnitOfWork
) -> None:
    consumer = make_consumer()
    sample = records()
    forged = _first_streamed()
    forged["source"]["sequence"] = json.dumps([str(2**50), str(forged["source"]["lsn"])])
    forged["transaction"] = None
    forged["after"] = {**forged["after"], "qty_units": 5000}
    snapshot_end = next(
        i for i, r in enumerate(sample) if '"snapshot":"last"' in (r["value"] or "")
    )
    message = Message("", json.dumps(forged).encode(), message_id="", type="", content_type="")
    publish_as_debezium_server(publisher, sample[: snapshot_end + 1])
    publisher.publish(sample[0]["destination"], [message])
    publish_as_debezium_server(publisher, sample[snapshot_end + 1 :])
    consume_all(consumer, publisher)
    with uow.engine.connect() as connection:
        dead = connection.execute(select(orm.dead_letter)).all()
    assert [row.error_type for row in dead] == ["PositionTooFar"]
    assert new_state(uow) == expected_state(sample)  # the real changes all came after


def test_debezium_heartbeats_keep_the_lag_of_their_connector_s_sources(
    make_consumer: Callable[..., Consumer], publisher: Broker, uow: SqlAlchemyUnitOfWork
) -> None:
    """A heartbeat names no database: by its topic (``__debezium-heartbeat.legacy``) it
    speaks for every source of connector ``legacy``, so an idle legacy shows no lag."""
    consumer = make_consumer()
    sample = records()
    publish_as_debezium_server(publisher, sample)
    consume_all(consumer, publisher)
    last_heartbeat = max(
        json.loads(r["value"])["ts_ms"]
        for r in sample
        if r["destination"].startswith("__debezium-heartbeat.")
    )
    with uow.engine.connect() as connection:
        rows = {
            row.source: row.heartbeat_at
            for row in connection.execute(select(orm.consumer_progress))
        }
    assert set(rows) == {STREAM}
    assert rows[STREAM] is not None
    assert int(rows[STREAM].replace(tzinfo=UTC).timestamp() * 1000) == last_heartbeat


def test_a_heartbeat_without_its_topic_speaks_for_every_known_source() -> None:
    beat = parse_message(b'{"ts_ms": 5}')
    assert isinstance(beat, Heartbeat)
    assert heartbeat_sources(beat, lambda: ["legacy/a", "other/b"]) == ["legacy/a", "other/b"]
    named = parse_message(b'{"ts_ms": 5}', topic="x.__debezium-heartbeat.legacy")
    assert isinstance(named, Heartbeat)
    assert heartbeat_sources(named, lambda: ["legacy/a", "other/b"]) == ["legacy/a"]


def test_an_allocation_moved_by_an_update_without_a_before_image(
    bus: MessageBus, uow: SqlAlchemyUnitOfWork
) -> None:
    """Under the default REPLICA IDENTITY an update carries no before image: the line
    and lot the allocation had come from the key map."""
    sample = records()
    apply_changes(bus, [parse_message(body(r)) for r in sample])
    update = _first_streamed()
    update["op"] = "u"
    update["source"]["table"] = "lot_allocation"
    with uow:
        stored = uow.positions.get(STREAM) or 0
    last_commit = stored // 2**64 - 2 + 1000  # a later transaction
    lsn = last_commit + 56
    update["source"].update(lsn=lsn, sequence=json.dumps([str(last_commit), str(lsn)]))
    update["transaction"] = None
    update["before"] = None
    update["after"] = {"alloc_id": 7, "lot_id": 2, "line_id": 5, "allocated_at": 1796402850999999}
    apply_changes(bus, [parse_message(json.dumps(update))])
    allocations = new_state(uow)["allocations"]
    assert ("o5", "RED-CHAIR", "b2") in allocations
    assert ("o5", "RED-CHAIR", "b4") not in allocations


def test_a_mariadb_change_is_read_with_its_binlog_position() -> None:
    def event(op: str, snapshot: str, pos: int, row: int) -> dict[str, Any]:
        return {
            "before": None,
            "after": {"lot_id": 1, "lot_ref": "b1", "prod_id": 1, "qty_units": 3},
            "op": op,
            "ts_ms": 1796402850000,
            "source": {
                "version": "3.6.3.Final",
                "connector": "mariadb",
                "name": "legacy",
                "ts_ms": 1796402849000,
                "snapshot": snapshot,
                "db": "shop",
                "table": "stock_lot",
                "server_id": 1,
                "file": "mariadb-bin.000007",
                "pos": pos,
                "row": row,
            },
            "transaction": None
            if op == "r"
            else {
                "id": "0-1-42",
                "total_order": 1,
                "data_collection_order": 1,
            },
        }

    read = parse_message(json.dumps(event("r", "last", 400, 0)))
    first = parse_message(json.dumps(event("c", "false", 400, 0)))
    second = parse_message(json.dumps(event("c", "false", 400, 1)))
    assert isinstance(read, LegacyChange) and isinstance(first, LegacyChange)
    assert isinstance(second, LegacyChange)
    assert read.position < first.position < second.position
    assert first.stream == "legacy/shop" and first.transaction_id == "0-1-42"
    assert not first.ends_transaction  # its END is awaited
    assert "binlog file 7 pos 400" in debezium.describe_position(first.position)
