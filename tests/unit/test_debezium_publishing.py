"""What ``bridge run --engine debezium`` publishes for each Debezium record, and what it
refuses before starting a JVM (every record Debezium 3.6.3 produced capturing the legacy
shop, tests/fixtures)."""

from __future__ import annotations

import json
import threading
from collections import Counter

import pytest
from click.testing import CliRunner

import broker
from broker import BrokerRefused
from legacy_bridge.debezium_engine import EngineSettings, engine_properties, to_message
from new_domain.ingest import Heartbeat, LegacyChange, TransactionBoundary, parse_message
from skeleton_app.composition.cli import cli
from tests.unit.test_debezium import records

EXPECTED = {
    "change": LegacyChange,
    "transaction": TransactionBoundary,
    "debezium-heartbeat": Heartbeat,
}


def test_each_record_goes_to_the_consumer_s_routing_with_a_stable_unique_id() -> None:
    sample = records()
    messages = [to_message(r["destination"], r["key"], r["value"]) for r in sample]
    sent = [(r, m) for r, m in zip(sample, messages, strict=True) if m is not None]
    assert len(sent) == sum(1 for r in sample if r["value"] is not None)  # tombstones stay
    kinds = Counter(m.type for _, m in sent)
    assert set(kinds) == {"change", "transaction", "debezium-heartbeat"}
    assert len({m.message_id for _, m in sent}) == len(sent)
    for record, message in sent:
        value = json.loads(record["value"])
        assert message.body == record["value"].encode()  # Debezium's envelope, unchanged
        if message.type == "change":
            assert message.routing_key == f"{value['source']['table']}.{value['op']}"
        else:
            assert message.routing_key == record["destination"]
        parsed = parse_message(
            message.body, message.message_id, message.type, topic=message.routing_key
        )
        assert isinstance(parsed, EXPECTED[message.type])
        if isinstance(parsed, Heartbeat):  # the consumer knows whose heartbeat it is
            assert parsed.source == "legacy/*"


def test_a_re_sent_record_keeps_its_message_id() -> None:
    record = next(r for r in records() if '"op":"u"' in (r["value"] or ""))
    again = json.loads(record["value"])
    again["ts_ms"] += 5000  # processed again later: only Debezium's own times differ
    first = to_message(record["destination"], record["key"], record["value"])
    second = to_message(record["destination"], record["key"], json.dumps(again))
    assert first is not None and second is not None
    assert first.message_id == second.message_id
    moved = {**again, "source": {**again["source"], "lsn": again["source"]["lsn"] + 8}}
    third = to_message(record["destination"], record["key"], json.dumps(moved))
    assert third is not None and third.message_id != first.message_id


@pytest.mark.parametrize(
    "url", ["sqlite:///legacy.db", "mysql+pymysql://root@127.0.0.1:3306/legacy"]
)
def test_the_engine_is_refused_on_sqlite_and_mariadb_in_one_line(url: str) -> None:
    result = CliRunner().invoke(
        cli,
        ["bridge", "run", "--engine", "debezium", "--tables", "stock_lot"],
        env={"LEGACY_DB_URL": url, "BROKER_URL": "amqp://guest:guest@127.0.0.1:5672/%2F"},
    )
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"Error: --engine debezium captures PostgreSQL only; {url.split(':')[0].split('+')[0]}"
        " uses --engine triggers"
    ]


def test_engine_options_are_refused_with_the_trigger_relay() -> None:
    result = CliRunner().invoke(
        cli,
        ["bridge", "run", "--slot", "s1"],
        env={"LEGACY_DB_URL": "sqlite:///x.db", "BROKER_URL": "amqp://g:g@127.0.0.1/%2F"},
    )
    assert result.exit_code == 2
    assert "--slot applies to --engine debezium" in result.output


def test_the_engine_needs_tables() -> None:
    result = CliRunner().invoke(
        cli,
        ["bridge", "run", "--engine", "debezium"],
        env={"LEGACY_DB_URL": "postgresql://u@h/db", "BROKER_URL": "amqp://g:g@127.0.0.1/%2F"},
    )
    assert result.exit_code == 2
    assert "--engine debezium needs --tables" in result.output


def test_debezium_is_configured_as_the_consumer_expects() -> None:
    settings = EngineSettings(
        "postgresql+psycopg://dbz:secret@db.internal:5433/legacy", ["stock_lot"], slot="kit_slot"
    )
    properties = engine_properties(settings, ["stock_lot", "strangler_origin"])
    assert properties["database.hostname"] == "db.internal"
    assert properties["database.port"] == "5433"
    assert properties["database.password"] == "secret"
    assert properties["table.include.list"] == "public.stock_lot,public.strangler_origin"
    expected = {
        "plugin.name": "pgoutput",
        "slot.name": "kit_slot",
        "publication.autocreate.mode": "disabled",
        "snapshot.mode": "initial",
        "provide.transaction.metadata": "true",
        "poll.interval.ms": "20",
        "offset.flush.interval.ms": "0",
        "value.converter.schemas.enable": "false",
        "offset.storage": "io.debezium.storage.jdbc.offset.JdbcOffsetBackingStore",
        "offset.storage.jdbc.connection.url": "jdbc:postgresql://db.internal:5433/legacy",
        "offset.storage.jdbc.connection.password": "secret",
        "offset.storage.jdbc.table.name": "strangler_dbz_offsets_kit_slot",
    }
    assert {key: properties[key] for key in expected} == expected


def test_an_exchange_without_its_alternate_exchange_stops_the_engine_at_once(
    memory_broker_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An exchange another tool declared without the alternate exchange would drop what
    no queue is bound for: no retry cures it, so the engine does not start (and does not
    say it will send the batch again)."""
    from legacy_bridge.debezium_runner import Publisher

    admin = broker.connect(memory_broker_url)
    admin.declare_exchange("legacy.cdc", alternate_exchange="elsewhere")
    publisher = Publisher(
        lambda: broker.connect(memory_broker_url), "legacy.cdc", threading.Event()
    )
    with pytest.raises(BrokerRefused, match="alternate-exchange"):
        publisher.ready()
    publisher.close()
    admin.close()
    assert "sent again" not in caplog.text


def test_the_url_s_tls_and_driver_options_reach_debezium_and_its_offset_store() -> None:
    url = (
        "postgresql+psycopg://dbz@db.internal/legacy?sslmode=verify-full"
        "&sslrootcert=/etc/ssl/ca.pem&connect_timeout=5&application_name=strangler%20dbz"
    )
    properties = engine_properties(EngineSettings(url, ["stock_lot"]), ["stock_lot"])
    assert properties["database.sslmode"] == "verify-full"
    assert properties["database.sslrootcert"] == "/etc/ssl/ca.pem"
    assert properties["driver.connectTimeout"] == "5"
    assert properties["driver.ApplicationName"] == "strangler dbz"
    assert properties["offset.storage.jdbc.connection.url"] == (
        "jdbc:postgresql://db.internal:5432/legacy?sslmode=verify-full"
        "&sslrootcert=%2Fetc%2Fssl%2Fca.pem&connectTimeout=5&ApplicationName=strangler+dbz"
    )


@pytest.mark.parametrize(
    ("query", "complaint"),
    [
        ("target_session_attrs=read-write", "option 'target_session_attrs' cannot be passed"),
        ("host=/run/postgresql", "connects over TCP"),
        ("sslmode=sometimes", "sslmode must be one of"),
    ],
)
def test_url_options_debezium_cannot_take_are_refused_in_one_line(
    query: str, complaint: str
) -> None:
    url = f"postgresql+psycopg://dbz@db.internal/legacy?{query}"
    result = CliRunner().invoke(
        cli,
        ["bridge", "run", "--engine", "debezium", "--tables", "stock_lot"],
        env={"LEGACY_DB_URL": url, "BROKER_URL": "amqp://guest:guest@127.0.0.1:1/"},
    )
    assert result.exit_code != 0
    assert complaint in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
