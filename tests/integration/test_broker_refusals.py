"""``strangler consume`` and ``strangler bridge run`` on a RabbitMQ that turns them down:
a wrong password, an unknown virtual host or an unsupported URL scheme ends the command at
once with one line, before it says it is ready."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine

from examples.legacy_shop import TABLES
from legacy_bridge import install
from new_domain import upgrade_database
from skeleton_app.composition.cli import cli
from tests.unit.test_bridge_contract import create_legacy_schema

pytestmark = [pytest.mark.rabbitmq]

REFUSED = [
    ("amqp://guest:wrong-password@127.0.0.1:5672/%2F", "ACCESS_REFUSED"),
    ("amqp://guest:guest@127.0.0.1:5672/no-such-vhost", "NOT_ALLOWED"),
]


@pytest.fixture
def databases(tmp_path: Path, amqp_url: str) -> tuple[str, str]:
    new_db = f"sqlite:///{tmp_path / 'new.db'}"
    upgrade_database(new_db)
    legacy_db = f"sqlite:///{tmp_path / 'legacy.db'}"
    engine = create_engine(legacy_db)
    create_legacy_schema(engine)
    install(engine, TABLES)
    engine.dispose()
    return new_db, legacy_db


def run(args: list[str]) -> tuple[int, list[str], float]:
    started = time.monotonic()
    result = CliRunner().invoke(cli, args, standalone_mode=False)
    took = time.monotonic() - started
    error = result.exception
    if error is None:
        return 0, [], took
    message = getattr(error, "format_message", lambda: str(error))()
    return getattr(error, "exit_code", 1), message.splitlines(), took


@pytest.mark.parametrize(("url", "reason"), REFUSED)
def test_consume_on_a_refusing_broker_ends_at_once_in_one_line(
    databases: tuple[str, str], url: str, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    new_db, _ = databases

    code, lines, took = run(["consume", "--new-db-url", new_db, "--broker-url", url])

    assert code == 1
    assert len(lines) == 1 and reason in lines[0] and "BROKER_URL" in lines[0]
    assert "wrong-password" not in lines[0]
    assert took < 30
    assert not [r for r in caplog.records if r.getMessage().startswith("consuming")]


@pytest.mark.parametrize(("url", "reason"), REFUSED)
def test_bridge_run_on_a_refusing_broker_ends_at_once_in_one_line(
    databases: tuple[str, str], url: str, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    _, legacy_db = databases

    code, lines, took = run(["bridge", "run", "--legacy-db-url", legacy_db, "--broker-url", url])

    assert code == 1
    assert len(lines) == 1 and reason in lines[0]
    assert "wrong-password" not in lines[0]
    assert took < 30
    assert not [r for r in caplog.records if r.getMessage().startswith("relaying")]


def test_consume_with_an_unsupported_scheme_is_a_usage_error(
    databases: tuple[str, str],
) -> None:
    new_db, _ = databases

    code, lines, _ = run(["consume", "--new-db-url", new_db, "--broker-url", "redis://x/0"])

    assert code == 2
    assert lines == ["--broker-url must be an amqp:// or amqps:// URL (got scheme 'redis')"]
