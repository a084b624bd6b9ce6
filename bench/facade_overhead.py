"""Facade overhead: a legacy route through the facade's data plane, and through the facade
alone, vs straight to the legacy shop.

``strangler legacy serve`` (2 gunicorn workers) on a small PostgreSQL legacy database;
in front of it ``strangler serve --data-plane haproxy`` (HAProxy sends a route in mode
``legacy`` straight to legacy; the facade, 2 workers, stands behind it) and ``strangler
serve --data-plane none`` (the Python facade alone, 2 workers, proxying). The load tool
(wrk, a second process) asks ``GET /batches/<ref>`` for random lots, a route left on
legacy. Latency: 1 connection (no queueing), p50. Throughput: 16 connections. The three
phases alternate (2 rounds each). Then the same 16-connection load, direct and through
the data plane alternately, while a third process (:mod:`bench.holder`) holds 1,000
idle keep-alive connections and 50 slowloris connections open against the data plane
(a fresh holder per round, each round shorter than HAProxy's idle timeout); HAProxy's
own count of client connections must show them before and after each round.

Targets, through the data plane: p50 added at most 0.5 ms; throughput at least 0.9
times direct, with or without the held connections. The facade alone: p50 added at
most 1 ms, throughput at least 0.8 times direct (the targets it had before the data
plane).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import requests
from prometheus_client.parser import text_string_to_metric_families

from bench.context import Context
from bench.holder import DONE, READY
from bench.processes import BenchmarkFailed, Processes, processes, wait_for
from bench.report import Figure, Result, Target
from bench.seed import Shape, create_legacy_schema, seed_legacy
from bench.servers import (
    WORKERS,
    Measured,
    Servers,
    interleaved_many,
    merge_measured,
    phase_order,
    start_servers,
)
from new_domain import upgrade_database

NAME = "facade_overhead"
SHAPE = Shape(products=50, lots_per_product=20, lines=2000)
THROUGHPUT_CONNECTIONS = 16
TEMPLATE = "/batches/LOT-%08d"
IDLE, SLOW = 1000, 50
SMOKE_IDLE, SMOKE_SLOW = 50, 5
CURRENT = "haproxy_frontend_current_sessions"


def run(ctx: Context, size: int) -> Result:
    services = ctx.services
    phase = float(size)
    result = Result(NAME, size)
    work = ctx.logs(NAME)
    idle, slow = (SMOKE_IDLE, SMOKE_SLOW) if ctx.smoke else (IDLE, SLOW)
    n = THROUGHPUT_CONNECTIONS
    with (
        services.database("bench_legacy") as legacy,
        services.database("bench_new") as new,
    ):
        create_legacy_schema(legacy.url)
        seed_legacy(legacy.dsn, SHAPE)
        upgrade_database(new.url)
        with processes(work, {}) as procs:
            servers = start_servers(
                procs, legacy.url, new.url, TEMPLATE % 1, data_plane="haproxy", alone=True
            )
            assert servers.facade_alone is not None
            urls = (servers.legacy, servers.facade, servers.facade_alone)
            warm = ctx.seconds(2, 0.5)
            interleaved_many(ctx, procs, urls, TEMPLATE, SHAPE.lots, n, warm, rounds=1)
            one = interleaved_many(ctx, procs, urls, TEMPLATE, SHAPE.lots, 1, phase)
            many = interleaved_many(ctx, procs, urls, TEMPLATE, SHAPE.lots, n, phase)
            (direct_h, plane_h), held = _held_rounds(ctx, procs, servers, idle, slow, phase)
            procs.check_running("legacy", "facade", "facade_alone")
    result.figures = figures(one, many, (direct_h, plane_h), held, idle, slow)
    result.details = {
        "route": "GET /batches/<ref> (mode legacy: HAProxy sends it straight to legacy; "
        "the facade alone proxies it)",
        "workers": WORKERS,
        "load_tool": ctx.load_tool,
        "held": {"idle": idle, "slow": slow, **held},
        **{f"{side}_1": m.as_dict() for side, m in zip(SIDES, one, strict=True)},
        **{f"{side}_{n}": m.as_dict() for side, m in zip(SIDES, many, strict=True)},
        f"direct_{n}_held": direct_h.as_dict(),
        f"data_plane_{n}_held": plane_h.as_dict(),
    }
    return result


SIDES = ("direct", "data_plane", "facade_alone")


def _held_rounds(
    ctx: Context, procs: Processes, servers: Servers, idle: int, slow: int, phase: float
) -> tuple[tuple[Measured, Measured], dict[str, Any]]:
    """Direct and data plane at 16 connections with the connections held: each round
    starts a fresh holder and loads both sides once (``phase / rounds`` s each, the
    order alternating), so no idle connection outlives HAProxy's idle timeout (30 s:
    ``timeout client`` bounds ``http-keep-alive`` in HAProxy 2.6) and the setup's
    requests fall outside the measurements."""
    rounds = 1 if ctx.smoke else 2
    sides: dict[str, list[Measured]] = {servers.legacy: [], servers.facade: []}
    counts: list[dict[str, Any]] = []
    for round_ in range(rounds):
        order = phase_order((servers.legacy, servers.facade), round_ + 1)[-2:]
        with holding(procs, servers.facade, idle, slow) as held:
            measured = interleaved_many(
                ctx, procs, order, TEMPLATE, SHAPE.lots, THROUGHPUT_CONNECTIONS,
                phase / rounds, rounds=1,
            )  # fmt: skip
        counts.append(held)
        for url, m in zip(order, measured, strict=True):
            sides[url].append(m)
    direct, plane = (merge_measured(sides[url]) for url in (servers.legacy, servers.facade))
    return (direct, plane), held_summary(counts)


def held_summary(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The holder's counts over its rounds: the fewest held, the sums of what happened,
    and each round's counts."""
    answers: dict[str, int] = {}
    for counts in rounds:
        for status, number in counts["slow_answers"].items():
            answers[status] = answers.get(status, 0) + number
    keys = ("idle_reopened", "slow_reopened", "slow_bytes_sent")
    return {
        "idle_min": min(c["idle_min"] for c in rounds),
        "slow_min": min(c["slow_min"] for c in rounds),
        "connections_min": min(
            min(c["connections_before"], c["connections_after"]) for c in rounds
        ),
        "haproxy_rss_mb_held": max(c["haproxy_rss_mb_held"] for c in rounds),
        "slow_answers": answers,
        **{key: sum(c[key] for c in rounds) for key in keys},
        "rounds": rounds,
    }


def figures(
    one: list[Measured],
    many: list[Measured],
    held_phases: tuple[Measured, Measured],
    held: dict[str, Any],
    idle: int,
    slow: int,
) -> list[Figure]:
    """The table: the data plane's rows, then the facade alone's, then the held case's."""
    direct_1, plane_1, alone_1 = (m.load for m in one)
    direct_n, plane_n, alone_n = (m.load for m in many)
    direct_h, plane_h = (m.load for m in held_phases)
    legacy_cpu = many[0].cpu_ms_per_request["legacy"]
    n = THROUGHPUT_CONNECTIONS
    holding = f"holding {idle:,} idle + {slow} slowloris"
    return [
        Figure("data plane: p50 latency, 1 connection", plane_1.p50_ms, "ms", direct_1.p50_ms,
               "direct", Target("added", "<=", 0.5)),
        Figure("data plane: p99 latency, 1 connection", plane_1.p99_ms, "ms", direct_1.p99_ms,
               "direct"),
        Figure(f"data plane: throughput, {n} connections", plane_n.rate, "req/s",
               direct_n.rate, "direct", Target("ratio", ">=", 0.9)),
        Figure(f"data plane: p50 latency, {n} connections", plane_n.p50_ms, "ms",
               direct_n.p50_ms, "direct", Target("added", "<=", 0.5)),
        Figure("data plane: HAProxy CPU per request", many[1].cpu_ms_per_request[
            "facade/haproxy"], "ms", legacy_cpu, "legacy CPU per request"),
        Figure("facade alone: p50 latency, 1 connection", alone_1.p50_ms, "ms",
               direct_1.p50_ms, "direct", Target("added", "<=", 1.0)),
        Figure(f"facade alone: throughput, {n} connections", alone_n.rate, "req/s",
               direct_n.rate, "direct", Target("ratio", ">=", 0.8)),
        Figure(f"facade alone: p50 latency, {n} connections", alone_n.p50_ms, "ms",
               direct_n.p50_ms, "direct"),
        Figure("facade alone: CPU per proxied request", many[2].cpu_ms_per_request[
            "facade_alone"], "ms", legacy_cpu, "legacy CPU per request"),
        Figure(f"data plane {holding}: throughput, {n} connections", plane_h.rate, "req/s",
               direct_h.rate, "direct", Target("ratio", ">=", 0.9)),
        Figure(f"data plane {holding}: p50 latency, {n} connections", plane_h.p50_ms, "ms",
               direct_h.p50_ms, "direct"),
        Figure("idle keep-alive connections held (fewest at once)", held["idle_min"], "",
               None, "", Target("value", ">=", idle)),
        Figure("HAProxy client connections while held (fewest)", held["connections_min"], "",
               None, "", Target("value", ">=", idle + slow)),
    ]  # fmt: skip


@contextmanager
def holding(procs: Processes, url: str, idle: int, slow: int) -> Iterator[dict[str, Any]]:
    """:mod:`bench.holder` holding ``idle`` and ``slow`` connections against ``url`` (the
    data plane) while the block runs; yields a dict filled afterwards with the holder's
    counts, HAProxy's own count of client connections (``connections_before``/``_after``,
    the data plane's metrics scraped through the facade) and HAProxy's resident memory
    before the holder started and once it held everything (``haproxy_rss_mb_...``)."""
    counts: dict[str, Any] = {"haproxy_rss_mb_before": _haproxy_mb(procs)}
    log = procs.logs / "holder.log"
    command = [
        sys.executable, "-m", "bench.holder", url + TEMPLATE % 1,
        "--idle", str(idle), "--slow", str(slow),
    ]  # fmt: skip
    offset = log.stat().st_size if log.exists() else 0  # an earlier round's holder wrote there
    started = time.monotonic()
    procs.start("holder", command)

    def output() -> str:
        with log.open("rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")

    def ready() -> bool:
        procs.check_running("holder")
        return marker_line(output(), READY) is not None

    wait_for(ready, 120, f"the holder to open {idle} idle and {slow} slow connections")
    counts["setup_s"] = round(time.monotonic() - started, 2)
    counts["connections_before"] = frontend_connections(url)
    counts["haproxy_rss_mb_held"] = _haproxy_mb(procs)
    if counts["connections_before"] < idle + slow:
        raise BenchmarkFailed(
            f"HAProxy counts {counts['connections_before']} client connections, fewer than the "
            f"{idle + slow} the holder opened"
        )
    yield counts
    procs.check_running("holder")
    counts["connections_after"] = frontend_connections(url)
    procs.stop("holder")
    done = marker_line(output(), DONE)
    if done is None:
        raise BenchmarkFailed(f"the holder did not report its counts:\n{procs.log_tail('holder')}")
    counts.update(done)


def _haproxy_mb(procs: Processes) -> float:
    return round(procs.rss_bytes_by_command("facade").get("haproxy", 0) / 2**20, 1)


def marker_line(text: str, marker: str) -> dict[str, Any] | None:
    """The JSON after the last line starting with ``marker``, or None."""
    for line in reversed(text.splitlines()):
        if line.startswith(marker):
            data: dict[str, Any] = json.loads(line[len(marker) :])
            return data
    return None


def frontend_connections(url: str) -> int:
    """HAProxy's current client connections on its public frontend, from the facade's
    metrics."""
    text = requests.get(url + "/metrics", timeout=10).text
    return current_connections(text)


def current_connections(exposition: str, proxy: str = "public") -> int:
    """``haproxy_frontend_current_sessions{proxy=...}`` in a Prometheus exposition."""
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name == CURRENT and sample.labels.get("proxy") == proxy:
                return int(sample.value)
    raise BenchmarkFailed(f"no {CURRENT} for frontend {proxy!r} in the facade's metrics")
