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

import pytest

from bench.processes import strangler_has_command
from bench.suite import BENCHMARKS
from tests.services import PG_HOST, PG_PORT, PG_USER, require

pytestmark = [pytest.mark.postgres, pytest.mark.rabbitmq]

ROOT = Path(__file__).resolve().parents[2]
MISSING_SNAPSHOT = "not available: strangler bridge snapshot missing"


def test_every_benchmark_runs_at_smoke_size(amqp_url: str, tmp_path: Path) -> None:
    require("PostgreSQL", PG_HOST, PG_PORT)
    env = {
        **os.environ,
        "BENCH_PG_HOST": PG_HOST,
        "BENCH_PG_PORT": str(PG_PORT),
        "BENCH_PG_USER": PG_USER,
        "BENCH_AMQP_URL": amqp_url,
    }
    completed = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--load-tool", "python",
         "--results-dir", str(tmp_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240,
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
