"""The bounded chaos run: the real pipeline under a workload of a few thousand changes
written through the facade while the write group goes legacy -> shadow -> canary 30 ->
new -> legacy (a hand-back) -> new, with the bridge, the consumer and back-sync SIGKILLed
twice each (back-sync once right after the hand-back), a RabbitMQ restart, our PostgreSQL
connections terminated, the new database unreachable for a few seconds and poison
messages; then nothing may be lost or applied twice, in either database: every write the
workload was told succeeded is in both as told, every decision of the new system is in
legacy once, both databases are equal, every order matches legacy and the dead-letter
queue holds the poison and nothing else."""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from tests.chaos.harness import BOUNDED, HANDBACK, run, sharded
from tests.chaos.report import WRITE_ROUTES, assert_clean, markdown
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


@pytest.mark.timeout(600)
def test_bounded_chaos_run_loses_nothing_and_matches_legacy(tmp_path: Path) -> None:
    require_rabbitmq()
    _require_rabbitmqctl()
    seed = int(os.environ.get("CHAOS_SEED", random.SystemRandom().randrange(10**6)))
    config = replace(BOUNDED, seed=seed)

    summary = run(config, tmp_path)

    print(markdown(summary))
    assert (tmp_path / "summary.json").exists()
    assert summary["process_kills"] == 6
    assert_clean(summary)
    events = summary["fault_events"]
    # faults happened during the workload, not after it
    assert all(e["at_changes"] < summary["verdict"]["captured"] for e in events)
    assert all(e["backends"] >= 1 for e in events if e["kind"] == "pg_terminate")
    # the hand-back happened during the workload, and back-sync was killed right after it
    journey = {step["phase"]: step for step in summary["journey"]}
    assert journey[HANDBACK]["mode"] == "legacy"
    assert journey[HANDBACK]["at_changes"] < summary["verdict"]["captured"]
    kills = [e for e in events if e["kind"] == "kill_backsync"]
    assert any(e["group"] in (f"-> {HANDBACK}", HANDBACK) for e in kills), kills
    # the new system decided about every write route, and wrote each into legacy
    assert set(summary["writes"]["decisions_by_route"]) == set(WRITE_ROUTES)
    # every write route's legacy decisions were judged against the new rules
    judged = summary["decision_parity"]
    for route in WRITE_ROUTES:
        assert judged[route]["agree"] + judged[route]["differ"] > 0, (route, judged)
    print(json.dumps(summary["decision_differences"], indent=2))


@pytest.mark.timeout(900)
def test_bounded_chaos_run_with_sharded_consumers_and_a_node_lost_at_a_time(
    cluster: str,  # the fixture: the local 3-node RabbitMQ cluster
    tmp_path: Path,
) -> None:
    """The same run on the local 3-node cluster, with the shard router and three consumer
    processes on 4 shards: consumer kills hit the consumers and the router, the broker
    restart stops one node for the outage."""
    _require_rabbitmqctl()
    seed = int(os.environ.get("CHAOS_SEED", random.SystemRandom().randrange(10**6)))
    config = sharded(replace(BOUNDED, seed=seed))

    summary = run(config, tmp_path)

    print(markdown(summary))
    assert summary["process_kills"] == 6
    assert_clean(summary)
    events = summary["fault_events"]
    assert [e["node"] for e in events if e["kind"] == "broker_restart"] == [1]
    assert all(e["at_changes"] < summary["verdict"]["captured"] for e in events)
    judged = summary["decision_parity"]
    for route in WRITE_ROUTES:
        assert judged[route]["agree"] + judged[route]["differ"] > 0, (route, judged)
