"""The benchmarks, in the order ``make bench`` runs them, with their full and smoke sizes.

Each lives in ``bench/<name>.py`` with ``run(ctx, size) -> Result``, imported only when
it runs: a package that fails to import fails its benchmarks, not the whole suite.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from bench.context import Context
from bench.report import Result


@dataclass(frozen=True)
class Benchmark:
    name: str
    title: str
    size_unit: str
    full_size: int
    smoke_size: int

    def run(self, ctx: Context, size: int) -> Result:
        module = importlib.import_module(f"bench.{self.name}")
        result: Result = module.run(ctx, size)
        result.title = self.title
        return result


BENCHMARKS: tuple[Benchmark, ...] = (
    Benchmark("pipeline_throughput",
              "captured backlog -> read model, vs raw pika with streamed confirms",
              "changes", 100_000, 300),
    Benchmark("sharded_throughput",
              "captured backlog -> read model: one consumer vs the shard router and 1, 2, 4 "
              "consumer processes on 4 product shards",
              "changes", 50_000, 300),
    Benchmark("lag", "legacy commit -> visible in the read model at a steady rate "
              "(trigger bridge, then Debezium engine)",
              "seconds at the steady rate", 60, 2),
    Benchmark("capture_overhead",
              "single-row committed transactions: no capture vs triggers + relay vs the "
              "Debezium engine (PostgreSQL, wal_level=logical)",
              "transactions per variant", 20_000, 200),
    Benchmark("facade_overhead",
              "legacy route through the data plane (HAProxy) and the facade alone vs "
              "direct; the same with 1,050 connections held",
              "seconds per load phase", 20, 1),
    Benchmark("read_path",
              "GET /allocations/<orderid>: new read model (data plane + facade) vs legacy "
              "endpoint",
              "allocations in each database", 1_000_000, 2_000),
    Benchmark("snapshot", "strangler bridge snapshot + relay over legacy rows",
              "legacy rows", 1_000_000, 2_000),
    Benchmark("write_path",
              "POST /allocate: facade with the write group on new vs legacy's own; "
              "back-sync lag",
              "seconds per load phase", 20, 1),
)  # fmt: skip

BY_NAME = {benchmark.name: benchmark for benchmark in BENCHMARKS}
