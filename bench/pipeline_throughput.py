"""Pipeline throughput: a backlog of captured changes until the read model shows them all.

``size`` changes (products, lots, then order lines each followed by its allocation, in
transactions of 500 lines) are written into the legacy tables with capture installed, so
they wait in ``strangler_change``. Then ``strangler consume`` and ``strangler bridge run``
start; the clock runs from the bridge's start until ``allocations_view`` holds every
allocation (the last changes captured), polled every 0.1 s.

Baseline, same run: the same payloads (envelopes built from the same change rows)
published with plain pika on an asynchronous connection, persistent, publisher confirms
streamed with 1000 in flight, into a durable queue. Target: at least half its rate.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg

from bench.context import Context
from bench.envelopes import change_messages
from bench.kit import kit_env, note_disturbances, start_bridge, start_consumer
from bench.processes import BenchmarkFailed, Processes, processes
from bench.raw_amqp import declare_queue, delete_queue, publish_stream
from bench.report import Figure, Result, Target
from bench.seed import Shape, create_legacy_schema, seed_legacy
from examples.legacy_shop import TABLES
from legacy_bridge import install
from new_domain import upgrade_database

NAME = "pipeline_throughput"
POLL_INTERVAL = 0.1


def shape_for(size: int) -> Shape:
    """About ``size`` changes: 1 product per 100 changes, 2 lots each, the rest orders."""
    products = max(2, size // 100)
    lines = max(1, (size - 3 * products) // 2)
    return Shape(products=products, lots_per_product=2, lines=lines)


def run(ctx: Context, size: int) -> Result:
    services = ctx.services
    shape = shape_for(size)
    result = Result(NAME, size)
    with (
        services.database("bench_legacy") as legacy,
        services.database("bench_new") as new,
        services.amqp_names("bench_pipe") as names,
    ):
        create_legacy_schema(legacy.url)
        install(legacy.url, TABLES)
        seed_legacy(legacy.dsn, shape, chunk=500)
        upgrade_database(new.url)
        with psycopg.connect(legacy.dsn) as conn:
            row = conn.execute("SELECT count(*) FROM strangler_change").fetchone()
        changes = int(row[0]) if row else 0

        messages = change_messages(legacy.dsn)
        payload_bytes = sum(len(m.body) for m in messages)
        declare_queue(services.amqp_url, names.exchange("baseline"), names.queue("baseline"))
        baseline_seconds = publish_stream(services.amqp_url, names.exchange("baseline"), messages)
        del messages
        delete_queue(services.amqp_url, names.queue("baseline"))  # free the broker
        baseline_rate = changes / baseline_seconds

        env = kit_env(ctx, legacy.url, new.url)
        with processes(ctx.logs(NAME), env, ctx.profile_dir) as procs:
            start_consumer(procs, ctx, names.queue("pipeline"), names.exchange("pipeline"))
            timeline = _drive(
                procs, ctx, legacy.dsn, new.dsn, names.exchange("pipeline"), shape.lines, changes
            )
            consumer = procs.stop("consumer")
            bridge = procs.stop("bridge")
            note_disturbances(result, procs, "bridge", "consumer")

    elapsed = timeline.done - timeline.started
    rate = changes / elapsed
    relay_seconds = timeline.relay_done - timeline.started
    result.figures = [
        Figure(
            "end-to-end rate", rate, "changes/s", baseline_rate, "raw pika",
            Target("ratio", ">=", 0.5),
        ),
        Figure("relay publish rate", changes / relay_seconds, "changes/s", baseline_rate,
               "raw pika"),
    ]  # fmt: skip
    result.details |= {
        "changes": changes,
        "shape": {"products": shape.products, "lots": shape.lots, "orders": shape.lines},
        "payload_bytes_mean": round(payload_bytes / max(changes, 1)),
        "baseline_seconds": round(baseline_seconds, 3),
        "pipeline_seconds": round(elapsed, 3),
        "relay_confirmed_all_after_s": round(relay_seconds, 3),
        "first_visible_after_s": round(timeline.first_visible - timeline.started, 3),
        "consumer_peak_rss_mb": round(consumer.peak_rss_bytes / 2**20, 1),
        "bridge_peak_rss_mb": round(bridge.peak_rss_bytes / 2**20, 1),
        "bridge_args": list(ctx.bridge_args),
        "consumer_args": list(ctx.consumer_args),
        "progress": timeline.samples,
    }
    return result


class _Timeline:
    def __init__(self, started: float) -> None:
        self.started = started
        self.first_visible = 0.0
        self.relay_done = 0.0
        self.done = 0.0
        self.samples: list[tuple[float, int, int]] = []
        """(seconds since start, changes confirmed by the broker, allocations visible)"""


def _drive(
    procs: Processes,
    ctx: Context,
    legacy_dsn: str,
    new_dsn: str,
    exchange: str,
    allocations: int,
    changes: int,
) -> _Timeline:
    timeout = 120 + changes / 50  # a safety net: 50 changes/s is far below any target
    with (
        psycopg.connect(legacy_dsn, autocommit=True) as legacy,
        psycopg.connect(new_dsn, autocommit=True) as new,
    ):
        timeline = _Timeline(start_bridge(procs, ctx, exchange))
        last_sample = -1.0
        while True:
            now = time.perf_counter()
            visible = _scalar(new, "SELECT count(*) FROM allocations_view")
            if visible and not timeline.first_visible:
                timeline.first_visible = now
            if not timeline.relay_done:
                confirmed = _scalar(legacy, "SELECT last_confirmed_pos FROM strangler_relay_state")
                if confirmed >= changes:
                    timeline.relay_done = now
            else:
                confirmed = changes
            if now - last_sample >= 1.0 or visible >= allocations:
                timeline.samples.append((round(now - timeline.started, 2), confirmed, visible))
                last_sample = now
            if visible >= allocations:
                timeline.done = now
                timeline.relay_done = timeline.relay_done or now
                return timeline
            procs.check_running("consumer", "bridge")
            if now - timeline.started > timeout:
                raise BenchmarkFailed(
                    f"after {timeout:.0f} s the read model shows {visible} of {allocations} "
                    f"allocations (broker confirmed {confirmed} of {changes} changes)"
                )
            time.sleep(POLL_INTERVAL)


def _scalar(conn: psycopg.Connection[Any], query: str) -> int:
    row = conn.execute(query).fetchone()
    return int(row[0]) if row and row[0] is not None else 0
