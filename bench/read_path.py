"""Read path: ``GET /allocations/<orderid>`` from the new read model vs legacy's endpoint.

Both databases hold the same ``size`` allocations (2 per order, 1,000 products with
10 lots each), written with set-based SQL straight into the tables, then analysed. The
route is switched to ``new`` in the facade's route table; the facade (2 workers) behind
its data plane (``strangler serve --data-plane haproxy``: HAProxy passes the moved route
to the facade) answers from ``allocations_view``, the legacy shop (2 workers, asked
directly) from its four-table join; a second facade with ``--data-plane none`` answers
the same route alone, for comparison. The load tool asks for random orders; latency with
1 connection (p50), then throughput with 16 connections; the three servers alternate (2
rounds each). Target: the new p50 (through the data plane) at most a third of legacy's.
"""

from __future__ import annotations

import random

import requests

from bench.context import Context
from bench.processes import BenchmarkFailed, processes
from bench.report import Figure, Result, Target
from bench.seed import (
    Shape,
    create_legacy_schema,
    order_id,
    seed_legacy,
    seed_new_domain,
    vacuum_analyze,
)
from bench.servers import WORKERS, interleaved_many, start_servers
from new_domain import upgrade_database
from skeleton_app import RouteTable

NAME = "read_path"
PHASE_SECONDS = 20
THROUGHPUT_CONNECTIONS = 16
TEMPLATE = "/allocations/order-%08d"
ROUTE = "/allocations/<orderid>"


def shape_for(size: int) -> Shape:
    return Shape(
        products=min(1000, max(2, size // 100)), lots_per_product=10, lines=size, lines_per_order=2
    )


def run(ctx: Context, size: int) -> Result:
    services = ctx.services
    shape = shape_for(size)
    phase = ctx.seconds(PHASE_SECONDS, 1)
    result = Result(NAME, size)
    work = ctx.logs(NAME)
    with (
        services.database("bench_legacy") as legacy,
        services.database("bench_new") as new,
    ):
        create_legacy_schema(legacy.url)
        seed_legacy(legacy.dsn, shape)
        upgrade_database(new.url)
        seed_new_domain(new.dsn, shape)
        vacuum_analyze(legacy.dsn)
        vacuum_analyze(new.dsn)
        table = RouteTable(new.url)
        try:
            table.set("GET", ROUTE, "new", by="bench", reason="read path benchmark")
        finally:
            table.close()
        with processes(work, {}) as procs:
            servers = start_servers(
                procs, legacy.url, new.url, f"/allocations/{order_id(1)}",
                data_plane="haproxy", alone=True,
            )  # fmt: skip
            assert servers.facade_alone is not None
            for facade in (servers.facade, servers.facade_alone):
                _check_same_answers(servers.legacy, facade, shape.orders)
            warm = ctx.seconds(3, 0.5)
            urls = (servers.legacy, servers.facade, servers.facade_alone)
            interleaved_many(
                ctx, procs, urls, TEMPLATE, shape.orders, THROUGHPUT_CONNECTIONS, warm, rounds=1
            )
            legacy_1, new_1, alone_1 = interleaved_many(
                ctx, procs, urls, TEMPLATE, shape.orders, 1, phase
            )
            legacy_n, new_n, alone_n = interleaved_many(
                ctx, procs, urls, TEMPLATE, shape.orders, THROUGHPUT_CONNECTIONS, phase
            )
            procs.check_running()
    n = THROUGHPUT_CONNECTIONS
    result.figures = [
        Figure("p50 latency, 1 connection", new_1.load.p50_ms, "ms", legacy_1.load.p50_ms,
               "legacy", Target("ratio", "<=", round(1 / 3, 3))),
        Figure("p99 latency, 1 connection", new_1.load.p99_ms, "ms", legacy_1.load.p99_ms,
               "legacy"),
        Figure(f"throughput, {n} connections", new_n.load.rate, "req/s", legacy_n.load.rate,
               "legacy"),
        Figure("server CPU per request", new_n.cpu_ms_per_request["facade"], "ms",
               legacy_n.cpu_ms_per_request["legacy"], "legacy"),
        Figure("HAProxy's part of it", new_n.cpu_ms_per_request["facade/haproxy"], "ms",
               legacy_n.cpu_ms_per_request["legacy"], "legacy"),
        Figure("facade alone: p50 latency, 1 connection", alone_1.load.p50_ms, "ms",
               legacy_1.load.p50_ms, "legacy"),
        Figure(f"facade alone: throughput, {n} connections", alone_n.load.rate, "req/s",
               legacy_n.load.rate, "legacy"),
    ]  # fmt: skip
    result.details = {
        "allocations": shape.lines,
        "orders": shape.orders,
        "products": shape.products,
        "lots": shape.lots,
        "workers": WORKERS,
        "load_tool": ctx.load_tool,
        "legacy_1": legacy_1.as_dict(),
        "new_1": new_1.as_dict(),
        "facade_alone_1": alone_1.as_dict(),
        f"legacy_{n}": legacy_n.as_dict(),
        f"new_{n}": new_n.as_dict(),
        f"facade_alone_{n}": alone_n.as_dict(),
    }
    return result


def _check_same_answers(legacy: str, facade: str, orders: int) -> None:
    """A few random orders: the facade answers from the new system, the same bytes."""
    rng = random.Random(7)
    for n in [1, orders, *rng.sample(range(1, orders + 1), min(10, orders))]:
        path = f"/allocations/{order_id(n)}"
        old, new = requests.get(legacy + path, timeout=10), requests.get(facade + path, timeout=10)
        if new.headers.get("X-Served-By") != "new":
            raise BenchmarkFailed(f"the facade did not serve {path} from the new system")
        if (old.status_code, old.content) != (new.status_code, new.content):
            raise BenchmarkFailed(
                f"{path}: legacy answered {old.status_code} {old.text!r}, "
                f"the new system {new.status_code} {new.text!r}"
            )
