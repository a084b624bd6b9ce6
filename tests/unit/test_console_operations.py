"""The console's view of the pipeline (``new_domain.PipelineReader`` and the composition
root's ``ConsoleOperations``) on a SQLite new database: what it reads, and how it says
what it cannot reach. The RabbitMQ side runs in the browser test."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from new_domain import PipelineReader, PipelineUnavailable, bootstrap
from new_domain.adapters.database import create_engine
from new_domain.ingest import apply_changes, parse_change
from new_domain.service_layer.messagebus import MessageBus
from new_domain.service_layer.unit_of_work import SqlAlchemyUnitOfWork
from skeleton_app.composition.console import ConsoleOperations
from skeleton_app.operations import OperationsUnavailable
from tests.integration.consumer_streams import LegacyShopStream, migrated_sqlite_url
from tests.unit.test_status import heartbeat


@pytest.fixture
def new_db_url(tmp_path: Path) -> str:
    return migrated_sqlite_url(tmp_path)


@pytest.fixture
def bus(new_db_url: str) -> Iterator[MessageBus]:
    uow = SqlAlchemyUnitOfWork(create_engine(new_db_url, for_writes=True))
    yield bootstrap(uow=uow)
    uow.close()


def test_the_consumer_side_reads_progress_heartbeat_age_and_lag(
    bus: MessageBus, new_db_url: str
) -> None:
    reader = PipelineReader(new_db_url)
    try:
        assert reader.consumer()["sources"] == []
        stream = LegacyShopStream()
        stream.add_batch("b1", "LAMP", 10, None)
        changes = []
        for message in stream.messages:
            body = json.loads(message.body)
            body["source"]["ts_ms"] = int((time.time() - 30) * 1000)
            changes.append(parse_change(body, message.message_id))
        apply_changes(bus, [*changes, heartbeat(stream, sent_ago=4, newest_ago=30)])
        shown = reader.consumer()
    finally:
        reader.close()
    [source] = shown["sources"]
    assert 3.5 <= source["heartbeat_age_seconds"] <= 10
    assert 3.5 <= source["lag_seconds"] <= 10  # the heartbeat says legacy was idle since
    assert shown["lag_seconds"] == source["lag_seconds"]
    assert shown["dead_in_database"] == 0 and shown["outbox_backlog"] >= 1


def test_anomalies_are_read_with_their_counts(new_db_url: str) -> None:
    reader = PipelineReader(new_db_url)
    try:
        assert reader.anomalies(10) == {"counts": {}, "total": 0, "anomalies": []}
    finally:
        reader.close()


def test_without_a_broker_the_queue_parts_say_so(new_db_url: str) -> None:
    for broker_url in (None, "memory://"):
        reader = PipelineReader(new_db_url, broker_url, "q")
        for read in (reader.queue_depths, partial(reader.dead_letters, 5)):
            with pytest.raises(PipelineUnavailable, match="amqp:// BROKER_URL"):
                read()
        with pytest.raises(PipelineUnavailable, match="amqp:// BROKER_URL"):
            reader.replay(["m-1"])


def test_an_unmigrated_database_is_refused_before_a_replay(tmp_path: Path) -> None:
    reader = PipelineReader(f"sqlite:///{tmp_path / 'empty.db'}", "amqp://guest:guest@h/")
    with pytest.raises(PipelineUnavailable, match="not migrated"):
        reader.replay(["m-1"])


def test_the_console_reads_every_part_it_can_and_names_the_others(new_db_url: str) -> None:
    operations = ConsoleOperations(new_db_url, None, "q", None)
    try:
        shown = operations.pipeline()
        assert shown["consumer"] is not None and shown["anomalies"] == {}
        assert shown["bridge"] is None and shown["queue"] is None
        assert "LEGACY_DB_URL" in shown["errors"]["bridge"]
        assert "BROKER_URL" in shown["errors"]["queue"]
        with pytest.raises(OperationsUnavailable, match="BROKER_URL"):
            operations.dead_letters(5)
    finally:
        operations.close()


def test_an_unreachable_legacy_database_is_one_line_without_the_password(
    new_db_url: str, tmp_path: Path
) -> None:
    missing = tmp_path / "no-such-dir" / "legacy.db"
    operations = ConsoleOperations(new_db_url, None, "q", f"sqlite:///{missing}")
    try:
        error = operations.pipeline()["errors"]["bridge"]
    finally:
        operations.close()
    assert error.startswith("cannot read the bridge:") and "\n" not in error
