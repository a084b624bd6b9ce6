"""``strangler db upgrade`` and ``strangler consume``: arguments and clear failures."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, inspect

from new_domain.entrypoints.cli import consume, db


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    for name in ("NEW_DB_URL", "BROKER_URL"):
        monkeypatch.delenv(name, raising=False)
    return CliRunner()


def test_db_upgrade_migrates_the_database_named_by_the_environment(
    runner: CliRunner, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'new.db'}"
    result = runner.invoke(db, ["upgrade"], env={"NEW_DB_URL": url})
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"new database {url}: schema created (was empty; now at ")
    again = runner.invoke(db, ["upgrade"], env={"NEW_DB_URL": url})
    assert again.output.startswith(f"new database {url} is up to date (revisions ")
    engine = create_engine(url)
    assert {"products", "allocations_view", "applied_change_position"} <= set(
        inspect(engine).get_table_names()
    )
    engine.dispose()


def test_db_upgrade_needs_a_database_url(runner: CliRunner) -> None:
    result = runner.invoke(db, ["upgrade"])
    assert result.exit_code == 2
    assert "--new-db-url" in result.output


def test_db_upgrade_failure_is_one_clear_line_without_the_password(runner: CliRunner) -> None:
    url = "postgresql+psycopg://someone:hunter2@127.0.0.1:1/nowhere"
    result = runner.invoke(db, ["upgrade", "--new-db-url", url])
    assert result.exit_code == 1
    assert "cannot reach the new database" in result.output and "refused" in result.output
    assert "hunter2" not in result.output


def test_consume_refuses_the_in_process_broker(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(
        consume,
        ["--new-db-url", f"sqlite:///{tmp_path / 'new.db'}", "--broker-url", "memory://demo"],
    )
    assert result.exit_code == 2
    assert "memory://" in result.output and "amqp://" in result.output


def test_consume_needs_a_broker_url(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(consume, ["--new-db-url", f"sqlite:///{tmp_path / 'new.db'}"])
    assert result.exit_code == 2
    assert "--broker-url" in result.output


def test_consume_refuses_an_unmigrated_database(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(
        consume,
        ["--once"],
        env={
            "NEW_DB_URL": f"sqlite:///{tmp_path / 'new.db'}",
            "BROKER_URL": "amqp://guest:guest@127.0.0.1:1/%2F",
        },
    )
    assert result.exit_code == 1
    assert "strangler db upgrade" in result.output


def test_consume_refuses_a_negative_journal_retention(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(
        consume,
        ["--new-db-url", f"sqlite:///{tmp_path / 'new.db'}", "--broker-url", "amqp://x"]
        + ["--journal-retention-days", "-1"],
    )
    assert result.exit_code == 2
    assert "--journal-retention-days" in result.output
