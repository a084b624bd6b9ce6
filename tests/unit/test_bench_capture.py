"""The capture benchmarks' pure parts: the variants' turns, the CPU arithmetic, the
logical cluster's configuration."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from bench.capture_overhead import VARIANTS, round_order
from bench.cpu import cores, stat_ticks
from bench.services import Services

# /proc/<pid>/stat of a postgres backend; the command holds a space and a parenthesis
STAT = (
    "4242 (postgres: (x) y) S 900 900 900 0 -1 4194560 120 0 0 0 "
    "150 30 700 90 20 0 1 0 5000 100000 200 18446744073709551615"
)


def test_each_variant_takes_each_place_in_turn() -> None:
    orders = [round_order(VARIANTS, r) for r in range(len(VARIANTS))]
    assert orders[0] == ["plain", "triggers", "debezium"]
    assert orders[1] == ["triggers", "debezium", "plain"]
    for place in range(len(VARIANTS)):
        assert Counter(order[place] for order in orders) == Counter(VARIANTS)
    assert round_order(VARIANTS, 3) == orders[0]


def test_stat_ticks_adds_the_reaped_children_only_when_asked() -> None:
    assert stat_ticks(STAT, children=False) == 150 + 30
    assert stat_ticks(STAT, children=True) == 150 + 30 + 700 + 90


def test_cores_are_cpu_seconds_per_second_of_the_phase() -> None:
    before = {"postgres": 10.0, "engine": 5.0, "gone": 1.0}
    after = {"postgres": 13.0, "engine": 4.0, "new": 2.0}
    # engine went backwards (restarted): 0; pieces missing on either side are left out
    assert cores(before, after, 2.0) == {"postgres": 1.5, "engine": 0.0}
    with pytest.raises(ValueError):
        cores(before, after, 0)


def test_the_logical_cluster_port_comes_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BENCH_PG_LOGICAL_PORT", "6543")
    monkeypatch.setenv("BENCH_PG_PORT", "5432")
    services = Services.from_environment()
    assert (services.pg_port, services.pg_logical_port) == (5432, 6543)
    assert Services().pg_logical_port == 5433


def test_the_script_that_starts_the_logical_cluster_is_where_the_benchmarks_look() -> None:
    from bench.services import LOGICAL_CLUSTER_SCRIPT

    assert Path(LOGICAL_CLUSTER_SCRIPT).is_file()


def test_a_missing_logical_cluster_elsewhere_is_one_clear_failure() -> None:
    from bench.processes import BenchmarkFailed
    from bench.services import ensure_logical_cluster

    with pytest.raises(BenchmarkFailed, match=r"no PostgreSQL answers on db\.invalid:5433"):
        ensure_logical_cluster("db.invalid", 5433)
