"""The bounded chaos run: the real pipeline under a workload of a few thousand changes,
with the bridge and the consumer SIGKILLed twice each, a RabbitMQ restart, our PostgreSQL
connections terminated, the new database unreachable for a few seconds and poison
messages; then nothing may be lost or applied twice, every order must match legacy and
the dead-letter queue must hold the poison and nothing else."""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from tests.chaos.harness import BOUNDED, assert_clean, markdown, run
from tests.services import require_rabbitmq

pytestmark = [pytest.mark.chaos, pytest.mark.e2e, pytest.mark.postgres, pytest.mark.rabbitmq]


def _require_rabbitmqctl() -> None:
    if shutil.which("rabbitmqctl"):
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(
            "rabbitmqctl is not installed (CI=true: a missing service is a failure)", pytrace=False
        )
    pytest.skip("rabbitmqctl is not installed")


@pytest.mark.timeout(420)
def test_bounded_chaos_run_loses_nothing_and_matches_legacy(tmp_path: Path) -> None:
    require_rabbitmq()
    _require_rabbitmqctl()
    seed = int(os.environ.get("CHAOS_SEED", random.SystemRandom().randrange(10**6)))
    config = replace(BOUNDED, seed=seed)

    summary = run(config, tmp_path)

    print(markdown(summary))
    assert (tmp_path / "summary.json").exists()
    assert summary["process_kills"] == 4
    assert_clean(summary)
    events = summary["fault_events"]
    # faults happened during the workload, not after it
    assert all(e["at_changes"] < summary["verdict"]["captured"] for e in events)
    assert all(e["backends"] >= 1 for e in events if e["kind"] == "pg_terminate")
    # every write route's legacy decisions were judged against the new rules
    judged = summary["decision_parity"]
    for route in ("POST /batches", "POST /allocate", "POST /deallocate", "PATCH /batches/<ref>"):
        assert judged[route]["agree"] + judged[route]["differ"] > 0, (route, judged)
    print(json.dumps(summary["decision_differences"], indent=2))
