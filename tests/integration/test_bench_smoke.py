"""The benchmarks keep working: each runs at a tiny size and writes its result.

Figures at these sizes mean nothing; ``make bench`` measures at full size.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from bench.processes import strangler_has_command
from bench.suite import BENCHMARKS
from tests.services import (
    LOGICAL_PG_PORT,
    PG_HOST,
    PG_PORT,
    PG_USER,
    require,
    require_logical_postgres,
)

pytestmark = [pytest.mark.postgres, pytest.mark.rabbitmq]

ROOT = Path(__file__).resolve().parents[2]
MISSING_SNAPSHOT = "not available: strangler bridge snapshot missing"


def test_every_benchmark_runs_at_smoke_size(amqp_url: str, tmp_path: Path) -> None:
    require("PostgreSQL", PG_HOST, PG_PORT)
    require_logical_postgres()  # capture_overhead and lag run the Debezium engine there
    env = {
        **os.environ,
        "BENCH_PG_HOST": PG_HOST,
        "BENCH_PG_PORT": str(PG_PORT),
        "BENCH_PG_USER": PG_USER,
        "BENCH_PG_LOGICAL_PORT": str(LOGICAL_PG_PORT),
        "BENCH_AMQP_URL": amqp_url,
    }
    completed = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--load-tool", "python",
         "--results-dir", str(tmp_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output

    snapshot_exists = strangler_has_command("bridge", "snapshot")
    for benchmark in BENCHMARKS:
        result = json.loads((tmp_path / f"{benchmark.name}.json").read_text())
        assert f"== {benchmark.name}: " in completed.stdout
        assert result["machine"]["nproc"] >= 1
        if benchmark.name == "snapshot" and not snapshot_exists:
            assert result["status"] == "not available"
            assert result["note"] == MISSING_SNAPSHOT
            assert MISSING_SNAPSHOT in completed.stdout
            continue
        assert result["status"] == "ok", (benchmark.name, result["note"])
        assert result["figures"], benchmark.name
        for figure in result["figures"]:
            assert figure["value"] > 0 and math.isfinite(figure["value"]), figure
            if figure["target"] is not None:
                assert figure["met"] in (True, False), figure

    writes = json.loads((tmp_path / "write_path.json").read_text())["details"]
    # the new system's writes reached legacy: both databases agree after the load
    assert writes["verified_after"] == "equal", writes["verified_after"]
    loops = [value for key, value in writes.items() if key.startswith("open_loop_")]
    assert len(loops) == 2  # half the rate, then the rate
    for loop in loops:
        assert loop["lag_decisions"] == loop["requests"] > 0

    # both engines measured, and every replication slot they created dropped
    capture = json.loads((tmp_path / "capture_overhead.json").read_text())
    lag = json.loads((tmp_path / "lag.json").read_text())
    assert len(capture["figures"]) == 4 and len(lag["figures"]) == 4
    for engine in ("triggers", "debezium"):
        assert lag["details"][engine]["changes_written"] > 0
    slots = [capture["details"]["slot"], lag["details"]["debezium"]["slot"]]
    assert all(slots), slots
    admin = f"host={PG_HOST} port={LOGICAL_PG_PORT} user={PG_USER} dbname=postgres"
    with psycopg.connect(admin) as conn:
        left = conn.execute(
            "SELECT slot_name FROM pg_replication_slots WHERE slot_name = ANY(%s)", (slots,)
        ).fetchall()
    assert left == []
