"""docs/debezium.md's worked example of log-based capture, followed as written: the legacy
shop on the ``wal_level=logical`` cluster, `strangler bridge run --engine debezium`, the
consumer, and `strangler verify --databases` finding both databases equal (the runbook
conventions of tests/e2e/runbook.py: ``$`` commands of ``sh`` blocks, expected output)."""

from __future__ import annotations

import os
import sys
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.e2e.processes import free_port
from tests.e2e.runbook import Shell, StepFailed, parse_steps
from tests.e2e.test_runbooks import rabbitmq_vhost
from tests.services import logical_postgres_database, postgres_database, require_rabbitmq

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "debezium.md"

pytestmark = [pytest.mark.e2e, pytest.mark.postgres, pytest.mark.rabbitmq]


def test_the_guide_has_a_walkthrough_that_checks_its_output() -> None:
    steps = parse_steps(GUIDE.read_text(), source="docs/debezium.md")
    commands = " ".join(step.command for step in steps)
    assert "bridge run --engine debezium" in commands
    assert "verify --databases" in commands
    assert sum(1 for step in steps if step.expected) >= 5


def test_the_debezium_walkthrough_as_written(tmp_path: Path) -> None:
    amqp_url = require_rabbitmq()
    steps = parse_steps(GUIDE.read_text(), source="docs/debezium.md")
    with ExitStack() as stack:
        legacy_db = stack.enter_context(logical_postgres_database("walk_legacy"))
        new_db = stack.enter_context(postgres_database("walk_new"))
        broker_url = stack.enter_context(rabbitmq_vhost(amqp_url))
        legacy_port = free_port()
        env = {
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "LEGACY_DB_URL": legacy_db,
            "NEW_DB_URL": new_db,
            "BROKER_URL": broker_url,
            "LEGACY_PORT": str(legacy_port),
            "LEGACY_URL": f"http://127.0.0.1:{legacy_port}",
        }
        shell = Shell(workdir=tmp_path / "work", env=env, logs=tmp_path / "steps", timeout=150)
        shell.start()
        stack.callback(shell.stop)  # before the databases go: the slot is released first
        try:
            for step in steps:
                shell.run(step)
        except StepFailed as failure:
            pytest.fail(
                f"{failure}\n\n--- background logs\n{shell.background_logs()}"
                f"\n\n--- steps so far\n" + "\n".join(shell.transcript[-15:]),
                pytrace=False,
            )
