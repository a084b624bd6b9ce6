"""Facade overhead: a legacy route through the facade vs straight to the legacy shop.

``strangler legacy serve`` and ``strangler serve`` (proxying to it) both run with 2
gunicorn workers and their default threads, on a small PostgreSQL legacy database. The
load tool (wrk, a second process) asks ``GET /batches/<ref>`` for random lots, a route
the facade proxies to legacy. Latency: 1 connection (no queueing), p50. Throughput: 16
connections. Direct and through-facade phases alternate (2 rounds each).
Targets: p50 added at most 1 ms; throughput at least 0.8 times direct.
"""

from __future__ import annotations

from bench.context import Context
from bench.processes import processes
from bench.report import Figure, Result, Target
from bench.seed import Shape, create_legacy_schema, seed_legacy
from bench.servers import WORKERS, interleaved, start_servers
from new_domain import upgrade_database

NAME = "facade_overhead"
SHAPE = Shape(products=50, lots_per_product=20, lines=2000)
THROUGHPUT_CONNECTIONS = 16
TEMPLATE = "/batches/LOT-%08d"


def run(ctx: Context, size: int) -> Result:
    services = ctx.services
    phase = float(size)
    result = Result(NAME, size)
    work = ctx.logs(NAME)
    with (
        services.database("bench_legacy") as legacy,
        services.database("bench_new") as new,
    ):
        create_legacy_schema(legacy.url)
        seed_legacy(legacy.dsn, SHAPE)
        upgrade_database(new.url)
        with processes(work, {}) as procs:
            servers = start_servers(procs, legacy.url, new.url, TEMPLATE % 1)
            warm = ctx.seconds(2, 0.5)
            urls = (servers.legacy, servers.facade)
            interleaved(
                ctx, procs, *urls, TEMPLATE, SHAPE.lots, THROUGHPUT_CONNECTIONS, warm, rounds=1
            )
            direct_1, facade_1 = interleaved(ctx, procs, *urls, TEMPLATE, SHAPE.lots, 1, phase)
            direct_n, facade_n = interleaved(
                ctx, procs, *urls, TEMPLATE, SHAPE.lots, THROUGHPUT_CONNECTIONS, phase
            )
            procs.check_running()
    n = THROUGHPUT_CONNECTIONS
    result.figures = [
        Figure("p50 latency, 1 connection", facade_1.load.p50_ms, "ms", direct_1.load.p50_ms,
               "direct", Target("added", "<=", 1.0)),
        Figure("p99 latency, 1 connection", facade_1.load.p99_ms, "ms", direct_1.load.p99_ms,
               "direct"),
        Figure(f"throughput, {n} connections", facade_n.load.rate, "req/s", direct_n.load.rate,
               "direct", Target("ratio", ">=", 0.8)),
        Figure(f"p50 latency, {n} connections", facade_n.load.p50_ms, "ms",
               direct_n.load.p50_ms, "direct"),
        Figure("facade CPU per proxied request", facade_n.cpu_ms_per_request["facade"], "ms",
               direct_n.cpu_ms_per_request["legacy"], "legacy CPU per request"),
    ]  # fmt: skip
    result.details = {
        "route": "GET /batches/<ref> (served by legacy, proxied by the facade)",
        "workers": WORKERS,
        "load_tool": ctx.load_tool,
        "direct_1": direct_1.as_dict(),
        "facade_1": facade_1.as_dict(),
        f"direct_{n}": direct_n.as_dict(),
        f"facade_{n}": facade_n.as_dict(),
    }
    return result
