"""Legacy anomalies: a legacy fact that breaks a new-domain invariant is kept, recorded,
logged and counted once, and never stops the consumer. In-process broker, SQLite."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from prometheus_client import REGISTRY

import broker
from broker import Broker
from new_domain import Consumer, bootstrap, open_read_model
from new_domain.adapters.database import create_engine
from new_domain.entrypoints.commands import anomalies
from new_domain.service_layer.unit_of_work import SqlAlchemyUnitOfWork
from tests.integration.consumer_streams import LegacyShopStream, migrated_sqlite_url

QUEUE = "new_domain.legacy_cdc"


@pytest.fixture
def new_db_url(tmp_path: Path) -> str:
    return migrated_sqlite_url(tmp_path)


@pytest.fixture
def consumer(new_db_url: str, memory_broker_url: str) -> Iterator[Consumer]:
    uow = SqlAlchemyUnitOfWork(create_engine(new_db_url, for_writes=True))
    consumer = Consumer(
        bootstrap(uow=uow),
        lambda: broker.connect(memory_broker_url),
        QUEUE,
        batch_timeout=0.02,
        retry_backoff=0.001,
    )
    consumer.connect()
    yield consumer
    consumer.close()
    uow.close()


@pytest.fixture
def publisher(memory_broker_url: str) -> Iterator[Broker]:
    b = broker.connect(memory_broker_url)
    yield b
    b.close()


def counted(kind: str) -> float:
    return REGISTRY.get_sample_value("strangler_legacy_anomalies_total", {"kind": kind}) or 0.0


def over_allocated() -> LegacyShopStream:
    """Legacy allocates more than a lot holds (a bug or a manual fix in legacy)."""
    stream = LegacyShopStream()
    stream.add_batch("small", "LAMP", 3, None)
    stream.allocate("o1", "LAMP", 2)
    stream.emit(
        "cust_order_line",
        "c",
        None,
        {"line_id": 50, "order_no": "o2", "prod_id": 1, "qty_units": 5},
    )
    stream.emit(
        "lot_allocation",
        "c",
        None,
        {"alloc_id": 50, "lot_id": 1, "line_id": 50, "allocated_at": "2024-05-01T10:00:01"},
    )
    stream.add_batch("next", "CHAIR", 10, None)  # life goes on
    return stream


def test_a_broken_invariant_is_kept_recorded_logged_and_counted(
    consumer: Consumer,
    publisher: Broker,
    new_db_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    before = counted("insufficient_stock")
    stream = over_allocated()
    publisher.publish("legacy.cdc", stream.messages)
    with caplog.at_level(logging.WARNING, logger="new_domain"):
        assert consumer.run_once() == len(stream.messages)
    with open_read_model(new_db_url) as read_model:
        assert [a.batchref for a in read_model.allocations_for("o2")] == ["small"]  # kept
    with consumer.bus.uow as uow:
        [anomaly] = uow.anomalies.recorded()
        assert uow.products.get("CHAIR") is not None  # the consumer went on
    assert (anomaly.kind, anomaly.sku) == ("insufficient_stock", "LAMP")
    assert anomaly.detail == "order o2 allocated 5 of small with 1 available"
    assert anomaly.message_id == stream.messages[5].message_id  # the allocation
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "legacy anomaly (insufficient_stock)" in warning and "o2" in warning
    assert counted("insufficient_stock") == before + 1
    assert publisher.queue_depth(f"{QUEUE}.dlq") == 0


def test_an_anomaly_in_a_batch_that_is_rolled_back_and_retried_counts_once(
    consumer: Consumer, publisher: Broker, new_db_url: str
) -> None:
    before = counted("insufficient_stock")
    stream = over_allocated()
    stream.emit("stock_lot", "u", {"lot_id": 404}, {"lot_id": 404, "qty_units": 1})  # fails
    publisher.publish("legacy.cdc", stream.messages)
    consumer.run_once()  # the batch fails, its first part is applied again without it
    with consumer.bus.uow as uow:
        assert len(uow.anomalies.recorded()) == 1
    assert counted("insufficient_stock") == before + 1
    assert publisher.queue_depth(f"{QUEUE}.dlq") == 1


def test_the_anomalies_command_lists_them(
    consumer: Consumer, publisher: Broker, new_db_url: str
) -> None:
    publisher.publish("legacy.cdc", over_allocated().messages)
    consumer.run_once()
    result = CliRunner().invoke(anomalies, ["--new-db-url", new_db_url])
    assert result.exit_code == 0, result.output
    [line, total] = result.output.splitlines()
    assert "insufficient_stock  LAMP  order o2 allocated 5 of small with 1 available" in line
    assert total == "1 anomaly: insufficient_stock 1"
    other = CliRunner().invoke(anomalies, ["--new-db-url", new_db_url, "--kind", "unknown_batch"])
    assert other.output.splitlines() == ["1 anomaly: insufficient_stock 1"]
