"""End-to-end lag (``ReadModel.lag_seconds``) from changes and heartbeats, and the
status command's refusals. SQLite new database."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from broker import Message
from new_domain import bootstrap, ingest, open_read_model
from new_domain.adapters.database import create_engine
from new_domain.entrypoints.commands import status
from new_domain.ingest import apply_changes
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


def captured(message: Message, ago: float) -> ingest.LegacyChange:
    """``message``'s change, captured ``ago`` seconds ago."""
    body = json.loads(message.body)
    body["source"]["ts_ms"] = int((time.time() - ago) * 1000)
    return ingest.parse_change(body, message.message_id)


def heartbeat(stream: LegacyShopStream, sent_ago: float, newest_ago: float) -> ingest.Heartbeat:
    now = time.time()
    message = stream.heartbeat(ts_ms=int((now - sent_ago) * 1000))
    body = json.loads(message.body)
    body["last_commit_ts_ms"] = int((now - newest_ago) * 1000)
    parsed = ingest.parse_message(json.dumps(body), message.message_id, message.type)
    assert isinstance(parsed, ingest.Heartbeat)
    return parsed


def test_the_lag_is_how_long_ago_the_read_model_was_known_current(
    bus: MessageBus, new_db_url: str
) -> None:
    with open_read_model(new_db_url) as read_model:
        assert read_model.lag_seconds() is None  # nothing recorded yet
        stream = LegacyShopStream()
        stream.add_batch("b1", "LAMP", 10, None)
        apply_changes(bus, [captured(m, ago=30) for m in stream.messages])
        assert 29 < (read_model.lag_seconds() or 0) < 40  # applied a change 30 s old

        stream.allocate("o1", "LAMP", 1)
        apply_changes(bus, [captured(m, ago=20) for m in stream.messages[2:]])
        assert 19 < (read_model.lag_seconds() or 0) < 30

        # idle legacy: the bridge's heartbeat says nothing newer was captured
        apply_changes(bus, [heartbeat(stream, sent_ago=0.5, newest_ago=20)])
        assert 0.4 < (read_model.lag_seconds() or 0) < 5

        apply_changes(bus, [heartbeat(stream, sent_ago=60, newest_ago=90)])
        assert (read_model.lag_seconds() or 0) < 5  # an old heartbeat changes nothing


def test_status_needs_a_migrated_new_database(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        status,
        ["--new-db-url", f"sqlite:///{tmp_path / 'empty.db'}"],
        env={"BROKER_URL": "amqp://guest:guest@127.0.0.1:1/%2F"},
    )
    assert result.exit_code == 1
    assert "not migrated" in result.output and "strangler db upgrade" in result.output


def test_status_refuses_the_in_process_broker(new_db_url: str) -> None:
    result = CliRunner().invoke(status, ["--new-db-url", new_db_url, "--broker-url", "memory://x"])
    assert result.exit_code == 2
    assert "amqp://" in result.output
