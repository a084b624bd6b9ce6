"""The ``bridge`` commands through click's CliRunner (SQLite, no services)."""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import create_engine, text

from broker import connect
from examples.legacy_shop import TABLES
from legacy_bridge import Relay, bridge_status
from legacy_bridge.cli import _stop_on_signals, bridge
from tests.unit.test_bridge_contract import create_legacy_schema, wait_until

UNUSED_BROKER = "amqp://guest:guest@127.0.0.1:1/%2F"  # never reached by these tests
SHOP_TABLES = ",".join(TABLES)


@pytest.fixture
def legacy_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'legacy.db'}"
    engine = create_engine(url)
    create_legacy_schema(engine)
    engine.dispose()
    return url


@pytest.fixture(autouse=True)
def no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("LEGACY_DB_URL", "BROKER_URL", "BRIDGE_TABLES"):
        monkeypatch.delenv(name, raising=False)


def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(bridge, list(args), env=env)


def error_lines(result: Result) -> list[str]:
    return [line for line in result.output.splitlines() if line.strip()]


def test_install_prints_what_it_installed(legacy_url: str) -> None:
    result = invoke(
        "install", "--legacy-db-url", legacy_url, "--tables", SHOP_TABLES, "--server-name", "shop"
    )

    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("installed change capture in sqlite database 'legacy'")
    assert "server name 'shop'" in lines[0]
    assert lines[1:] == [
        "  prod_catalog: primary key (prod_id), triggers strangler_prod_catalog_insert, "
        "strangler_prod_catalog_update, strangler_prod_catalog_delete",
        "  stock_lot: primary key (lot_id), triggers strangler_stock_lot_insert, "
        "strangler_stock_lot_update, strangler_stock_lot_delete",
        "  cust_order_line: primary key (line_id), triggers strangler_cust_order_line_insert, "
        "strangler_cust_order_line_update, strangler_cust_order_line_delete",
        "  lot_allocation: primary key (alloc_id), triggers strangler_lot_allocation_insert, "
        "strangler_lot_allocation_update, strangler_lot_allocation_delete",
        # the origin marker, always captured (docs/write-path.md)
        "  strangler_origin: primary key (origin_id), triggers strangler_strangler_origin_insert"
        ", strangler_strangler_origin_update, strangler_strangler_origin_delete",
    ]


def test_install_reads_the_url_from_the_environment_and_is_repeatable(legacy_url: str) -> None:
    env = {"LEGACY_DB_URL": legacy_url}
    first = invoke("install", "--tables", "prod_catalog, stock_lot", env=env)
    again = invoke("install", "--tables", "prod_catalog", env=env)

    assert first.exit_code == 0 and again.exit_code == 0, first.output + again.output
    assert len(first.output.splitlines()) == 4  # two tables and the origin marker
    assert again.output.startswith("refreshed change capture")


def test_install_takes_its_tables_from_the_environment_unless_named(legacy_url: str) -> None:
    env = {"LEGACY_DB_URL": legacy_url, "BRIDGE_TABLES": "prod_catalog,stock_lot"}
    from_env = invoke("install", env=env)
    named = invoke("install", "--tables", "lot_allocation", env=env)

    assert from_env.exit_code == 0 and named.exit_code == 0, from_env.output + named.output
    assert [line.split(":")[0].strip() for line in from_env.output.splitlines()[1:]] == [
        "prod_catalog",
        "stock_lot",
        "strangler_origin",
    ]
    assert [line.split(":")[0].strip() for line in named.output.splitlines()[1:]] == [
        "lot_allocation",
        "strangler_origin",
    ]


def test_first_install_without_tables_fails_in_one_line(legacy_url: str) -> None:
    result = invoke("install", "--legacy-db-url", legacy_url)

    assert result.exit_code == 1
    assert error_lines(result) == [
        "Error: no tables to capture: nothing is captured yet, name them with --tables T1,T2 "
        "or BRIDGE_TABLES"
    ]
    engine = create_engine(legacy_url)
    with engine.connect() as conn:
        bridge_objects = conn.execute(
            text("SELECT name FROM sqlite_master WHERE name LIKE 'strangler%'")
        ).all()
    engine.dispose()
    assert bridge_objects == []  # nothing was installed


def test_install_without_tables_refreshes_what_is_captured(legacy_url: str) -> None:
    invoke("install", "--legacy-db-url", legacy_url, "--tables", "stock_lot,prod_catalog")
    result = invoke("install", "--legacy-db-url", legacy_url)

    assert result.exit_code == 0, result.output
    assert result.output.startswith("refreshed change capture")
    assert [line.split(":")[0].strip() for line in result.output.splitlines()[1:]] == [
        "stock_lot",
        "prod_catalog",
        "strangler_origin",
    ]


def test_install_without_url_is_a_usage_error() -> None:
    result = invoke("install")
    assert result.exit_code == 2
    assert "Missing option '--legacy-db-url'" in result.output


def test_install_unknown_table_is_one_line(legacy_url: str) -> None:
    result = invoke("install", "--legacy-db-url", legacy_url, "--tables", "prod_catalog,nope")
    assert result.exit_code == 1
    assert error_lines(result) == ["Error: no table 'nope' in the legacy database"]


def test_install_with_empty_table_list_is_a_usage_error(legacy_url: str) -> None:
    result = invoke("install", "--legacy-db-url", legacy_url, "--tables", " , ")
    assert result.exit_code == 2
    assert "--tables names no table" in result.output


def test_install_on_unreachable_database_is_one_line(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'missing' / 'x.db'}"
    result = invoke("install", "--legacy-db-url", url)
    assert result.exit_code == 1
    assert len(error_lines(result)) == 1
    assert error_lines(result)[0].startswith("Error: legacy database: unable to open")


@pytest.mark.parametrize("missing", ["--legacy-db-url", "--broker-url"])
def test_run_requires_both_urls(legacy_url: str, missing: str) -> None:
    options = {"--legacy-db-url": legacy_url, "--broker-url": UNUSED_BROKER}
    del options[missing]
    result = invoke("run", *[part for pair in options.items() for part in pair])
    assert result.exit_code == 2
    assert f"Missing option '{missing}'" in result.output


def test_run_refuses_the_in_process_broker(legacy_url: str) -> None:
    result = invoke("run", "--legacy-db-url", legacy_url, env={"BROKER_URL": "memory://x"})
    assert result.exit_code == 1
    assert len(error_lines(result)) == 1
    assert "memory://" in result.output and "amqp://" in result.output


@pytest.mark.parametrize("once", [True, False])
def test_run_without_install_is_one_line(
    legacy_url: str, once: bool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="legacy_bridge")
    args = ["run", "--legacy-db-url", legacy_url, "--broker-url", UNUSED_BROKER]
    result = invoke(*args, *(["--once"] if once else []))
    assert result.exit_code == 1
    assert len(error_lines(result)) == 1
    assert "not installed" in result.output and "bridge install" in result.output
    # it never said it was relaying, nor logged a maintenance failure first
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO] == []


def test_run_with_a_bad_database_url_is_one_line() -> None:
    result = invoke("run", "--legacy-db-url", "nosuchdb://x", "--broker-url", UNUSED_BROKER)
    assert result.exit_code == 1
    assert error_lines(result)[0].startswith("Error: invalid --legacy-db-url")


def test_run_rejects_non_amqp_broker_urls(legacy_url: str) -> None:
    result = invoke("run", "--legacy-db-url", legacy_url, "--broker-url", "http://x")
    assert result.exit_code == 2
    assert "amqp://" in result.output


def test_run_rejects_a_zero_batch_size(legacy_url: str) -> None:
    result = invoke(
        "run", "--legacy-db-url", legacy_url, "--broker-url", UNUSED_BROKER, "--batch-size", "0"
    )
    assert result.exit_code == 2


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signals_set_the_stop_event_and_handlers_are_restored(signum: int) -> None:
    before = signal.getsignal(signum)
    stop = threading.Event()
    with _stop_on_signals(stop):
        os.kill(os.getpid(), signum)
        wait_until(stop.is_set)
    assert signal.getsignal(signum) is before


def add_rows(url: str, count: int) -> None:
    engine = create_engine(url)
    with engine.begin() as conn:
        for i in range(1, count + 1):
            conn.execute(
                text("INSERT INTO prod_catalog (prod_id, prod_code) VALUES (:i, :c)"),
                {"i": i, "c": f"SKU-{i}"},
            )
    engine.dispose()


def test_install_with_snapshot_queues_the_existing_rows(legacy_url: str) -> None:
    add_rows(legacy_url, 3)
    shop = ("--legacy-db-url", legacy_url, "--tables", SHOP_TABLES)
    result = invoke("install", *shop, "--snapshot", "--chunk-size", "2")

    assert result.exit_code == 0, result.output
    assert "  prod_catalog: 3 rows read (3 in all)" in result.output
    assert result.output.endswith("snapshot done: 3 rows queued for the relay\n")
    again = invoke("snapshot", "--legacy-db-url", legacy_url, "--tables", "prod_catalog")
    assert "prod_catalog: snapshot already done (3 rows); --restart takes it again" in again.output


def test_snapshot_of_an_uncaptured_table_is_one_line(legacy_url: str) -> None:
    invoke("install", "--legacy-db-url", legacy_url, "--tables", "stock_lot")
    result = invoke("snapshot", "--legacy-db-url", legacy_url, "--tables", "prod_catalog")
    assert result.exit_code == 1
    assert error_lines(result) == [
        "Error: table 'prod_catalog' is not captured: run 'strangler bridge install "
        "--tables ...' with it first"
    ]


@pytest.mark.parametrize("command", ["status", "snapshot"])
def test_commands_on_a_database_without_capture_fail_in_one_line(
    legacy_url: str, command: str
) -> None:
    result = invoke(command, "--legacy-db-url", legacy_url)
    assert result.exit_code == 1
    assert len(error_lines(result)) == 1
    assert "not installed" in result.output and "bridge install" in result.output


def test_status_shows_pending_changes_and_the_checkpoint(legacy_url: str) -> None:
    invoke(
        "install", "--legacy-db-url", legacy_url, "--tables", SHOP_TABLES, "--server-name", "shop"
    )
    add_rows(legacy_url, 2)

    result = invoke("status", "--legacy-db-url", legacy_url)
    as_json = invoke("status", "--legacy-db-url", legacy_url, "--json")

    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("change capture installed in sqlite database 'legacy'")
    assert "server name 'shop'" in lines[0]
    assert lines[1].endswith(
        "prod_catalog, stock_lot, cust_order_line, lot_allocation, strangler_origin"
    )
    assert lines[2] == (
        "  relay:                  not running (never seen: start 'strangler bridge run')"
    )
    assert lines[3].startswith("  pending changes:        2 (oldest captured ")
    assert lines[4] == "  last confirmed position: 0 (at never)"
    status = json.loads(as_json.output)
    assert (status["pending"], status["last_confirmed_pos"]) == (2, 0)
    assert (status["relay_running"], status["relay_seen_age_s"]) == (False, None)


def test_uninstall_refuses_pending_changes_unless_forced(legacy_url: str) -> None:
    invoke("install", "--legacy-db-url", legacy_url, "--tables", SHOP_TABLES)
    add_rows(legacy_url, 1)

    refused = invoke("uninstall", "--legacy-db-url", legacy_url)
    forced = invoke("uninstall", "--legacy-db-url", legacy_url, "--force")
    again = invoke("uninstall", "--legacy-db-url", legacy_url)

    assert refused.exit_code == 1
    assert len(error_lines(refused)) == 1 and "--force" in refused.output
    assert forced.exit_code == 0, forced.output
    assert forced.output.startswith(
        "removed change capture from sqlite database 'legacy', discarding 1 unpublished change"
    )
    assert "  dropped table strangler_change" in forced.output.splitlines()
    assert again.exit_code == 1
    assert error_lines(again) == [
        "Error: nothing to uninstall: change capture is not installed in this database"
    ]


def test_uninstall_tables_stops_capturing_those_only(legacy_url: str) -> None:
    invoke("install", "--legacy-db-url", legacy_url, "--tables", SHOP_TABLES)

    stopped = invoke("uninstall", "--legacy-db-url", legacy_url, "--tables", "lot_allocation")
    unknown = invoke("uninstall", "--legacy-db-url", legacy_url, "--tables", "lot_allocation")
    forced = invoke("uninstall", "--legacy-db-url", legacy_url, "--tables", "stock_lot", "--force")
    status = invoke("status", "--legacy-db-url", legacy_url)

    assert stopped.exit_code == 0, stopped.output
    assert stopped.output.startswith(
        "stopped capturing lot_allocation in sqlite database 'legacy'; still captured: "
        "prod_catalog, stock_lot, cust_order_line, strangler_origin"
    )
    assert "  dropped trigger strangler_lot_allocation_insert" in stopped.output.splitlines()
    assert unknown.exit_code == 1
    assert error_lines(unknown) == [
        "Error: not captured: lot_allocation (captured: prod_catalog, stock_lot, "
        "cust_order_line, strangler_origin)"
    ]
    assert forced.exit_code == 2 and "--force applies to a full uninstall" in forced.output
    assert "prod_catalog, stock_lot, cust_order_line" in status.output
    assert "lot_allocation" not in status.output


@pytest.mark.parametrize("option", ["--heartbeat-interval", "--retention"])
def test_run_rejects_negative_intervals(legacy_url: str, option: str) -> None:
    result = invoke(
        "run", "--legacy-db-url", legacy_url, "--broker-url", UNUSED_BROKER, option, "-1"
    )
    assert result.exit_code == 2
    assert option in result.output


def test_status_says_a_relay_runs_while_it_runs_and_since_when_it_stopped(
    legacy_url: str, memory_broker_url: str
) -> None:
    invoke("install", "--legacy-db-url", legacy_url, "--tables", SHOP_TABLES)
    stop = threading.Event()
    relay = Relay(legacy_url, broker_factory=lambda: connect(memory_broker_url))
    worker = threading.Thread(target=relay.run, args=(stop, 0.01))
    worker.start()
    try:
        wait_until(
            lambda: "running (last seen" in invoke("status", "--legacy-db-url", legacy_url).output
        )
    finally:
        stop.set()
        worker.join(10)
        relay.close()
    later = datetime.now(UTC) + timedelta(seconds=60)

    stopped = bridge_status(legacy_url, now=later)

    assert not stopped.relay_running
    assert stopped.relay_line().startswith("not running (last seen ")


def test_snapshot_logs_its_progress_per_chunk_when_not_on_a_terminal(
    legacy_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    invoke("install", "--legacy-db-url", legacy_url, "--tables", SHOP_TABLES)
    add_rows(legacy_url, 5)
    caplog.set_level(logging.INFO, logger="legacy_bridge")

    result = invoke("snapshot", "--legacy-db-url", legacy_url, "--chunk-size", "2")

    assert result.exit_code == 0, result.output
    chunks = [
        r.getMessage()
        for r in caplog.records
        if r.getMessage().startswith("snapshot of prod_catalog")
    ]
    assert chunks == [
        "snapshot of prod_catalog: 2 rows read of about 5",
        "snapshot of prod_catalog: 4 rows read of about 5",
        "snapshot of prod_catalog: 5 rows read of about 5",
    ]
