"""Pipeline throughput: a backlog of captured changes until the read model shows them all.

``size`` changes (products, lots, then order lines each followed by its allocation, in
transactions of 500 lines) are written into the legacy tables with capture installed, so
they wait in ``strangler_change``. Then ``strangler consume`` and ``strangler bridge run``
start; the clock runs from the bridge's start until ``allocations_view`` holds every
allocation (the last changes captured), polled every 0.1 s.

Baseline, same run: the same payloads (envelopes built from the same change rows)
published with plain pika on an asynchronous connection, persistent, publisher confirms
streamed with 1000 in flight, into a durable queue. Target: at least half its rate.

Both are measured twice, on quorum queues (the kit's default) and on classic queues
(``queue_type`` in the broker URL): the last figure is what replication costs the
pipeline on one node.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import psycopg

from bench.context import Context
from bench.envelopes import change_messages
from bench.kit import kit_env, note_disturbances, start_bridge, start_consumer
from bench.processes import BenchmarkFailed, Processes, processes
from bench.raw_amqp import declare_queue, delete_queue, publish_stream
from bench.report import Figure, Result, Target
from bench.seed import Shape, create_legacy_schema, seed_legacy
from bench.services import Database
from broker.rabbitmq import split_queue_type
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


@dataclass
class _Measured:
    """One pass: the kit's pipeline and raw pika, both on queues of one type."""

    queue_type: str
    changes: int
    payload_bytes: int
    baseline_seconds: float
    timeline: Timeline
    consumer_rss: int
    bridge_rss: int

    @property
    def rate(self) -> float:
        return self.changes / (self.timeline.done - self.timeline.started)

    @property
    def baseline_rate(self) -> float:
        return self.changes / self.baseline_seconds

    @property
    def relay_seconds(self) -> float:
        return self.timeline.relay_done - self.timeline.started


def run(ctx: Context, size: int) -> Result:
    """Quorum queues (the kit's default) first, then the same pass on classic queues:
    what the replicated queue costs, in the same run."""
    result = Result(NAME, size)
    quorum, classic = (_measure(ctx, size, result, kind) for kind in ("quorum", "classic"))
    result.figures = [
        Figure(
            "end-to-end rate", quorum.rate, "changes/s", quorum.baseline_rate, "raw pika",
            Target("ratio", ">=", 0.5),
        ),
        Figure("relay publish rate", quorum.changes / quorum.relay_seconds, "changes/s",
               quorum.baseline_rate, "raw pika"),
        Figure("end-to-end rate, classic queues", classic.rate, "changes/s",
               classic.baseline_rate, "raw pika, classic queue"),
        Figure("end-to-end rate, quorum queues", quorum.rate, "changes/s", classic.rate,
               "the same on classic queues"),
    ]  # fmt: skip
    shape = shape_for(size)
    result.details |= {
        "changes": quorum.changes,
        "shape": {"products": shape.products, "lots": shape.lots, "orders": shape.lines},
        "payload_bytes_mean": round(quorum.payload_bytes / max(quorum.changes, 1)),
        "bridge_args": list(ctx.bridge_args),
        "consumer_args": list(ctx.consumer_args),
    }
    for measured in (quorum, classic):
        timeline = measured.timeline
        result.details[measured.queue_type] = {
            "baseline_seconds": round(measured.baseline_seconds, 3),
            "pipeline_seconds": round(timeline.done - timeline.started, 3),
            "relay_confirmed_all_after_s": round(measured.relay_seconds, 3),
            "first_visible_after_s": round(timeline.first_visible - timeline.started, 3),
            "consumer_peak_rss_mb": round(measured.consumer_rss / 2**20, 1),
            "bridge_peak_rss_mb": round(measured.bridge_rss / 2**20, 1),
            "progress": timeline.samples,
        }
    return result


def _measure(ctx: Context, size: int, result: Result, queue_type: str) -> _Measured:
    services = ctx.services
    amqp_url = with_queue_type(services.amqp_url, queue_type)
    shape = shape_for(size)
    with (
        services.database("bench_legacy") as legacy,
        services.database("bench_new") as new,
        services.amqp_names(f"bench_pipe_{queue_type}") as names,
    ):
        changes = captured_backlog(legacy, new, shape)
        messages = change_messages(legacy.dsn)
        payload_bytes = sum(len(m.body) for m in messages)
        declare_queue(amqp_url, names.exchange("baseline"), names.queue("baseline"))
        baseline_seconds = publish_stream(amqp_url, names.exchange("baseline"), messages)
        del messages
        delete_queue(amqp_url, names.queue("baseline"))  # free the broker

        env = kit_env(ctx, legacy.url, new.url) | {"BROKER_URL": amqp_url}
        with processes(ctx.logs(f"{NAME}_{queue_type}"), env, ctx.profile_dir) as procs:
            start_consumer(procs, ctx, names.queue("pipeline"), names.exchange("pipeline"))
            timeline = drive(
                procs, ctx, legacy.dsn, new.dsn, names.exchange("pipeline"), shape.lines, changes
            )
            consumer = procs.stop("consumer")
            bridge = procs.stop("bridge")
            note_disturbances(result, procs, "bridge", "consumer")
    return _Measured(
        queue_type, changes, payload_bytes, baseline_seconds, timeline,
        consumer.peak_rss_bytes, bridge.peak_rss_bytes,
    )  # fmt: skip


def captured_backlog(legacy: Database, new: Database, shape: Shape) -> int:
    """Seed ``shape`` into the legacy tables with capture installed (the backlog waits in
    the change table), migrate the new database; how many changes were captured."""
    create_legacy_schema(legacy.url)
    install(legacy.url, TABLES)
    seed_legacy(legacy.dsn, shape, chunk=500)
    upgrade_database(new.url)
    with psycopg.connect(legacy.dsn) as conn:
        row = conn.execute("SELECT count(*) FROM strangler_change").fetchone()
    return int(row[0]) if row else 0


def with_queue_type(amqp_url: str, queue_type: str) -> str:
    """``amqp_url`` declaring queues of ``queue_type`` (``queue_type`` in its query)."""
    url, _ = split_queue_type(amqp_url)
    return f"{url}{'&' if '?' in url else '?'}queue_type={queue_type}"


class Timeline:
    def __init__(self, started: float) -> None:
        self.started = started
        self.first_visible = 0.0
        self.relay_done = 0.0
        self.done = 0.0
        self.samples: list[tuple[float, int, int]] = []
        """(seconds since start, changes confirmed by the broker, allocations visible)"""


def drive(
    procs: Processes,
    ctx: Context,
    legacy_dsn: str,
    new_dsn: str,
    exchange: str,
    allocations: int,
    changes: int,
    running: tuple[str, ...] = ("consumer", "bridge"),
) -> Timeline:
    timeout = 120 + changes / 50  # a safety net: 50 changes/s is far below any target
    with (
        psycopg.connect(legacy_dsn, autocommit=True) as legacy,
        psycopg.connect(new_dsn, autocommit=True) as new,
    ):
        timeline = Timeline(start_bridge(procs, ctx, exchange))
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
            procs.check_running(*running)
            if now - timeline.started > timeout:
                raise BenchmarkFailed(
                    f"after {timeout:.0f} s the read model shows {visible} of {allocations} "
                    f"allocations (broker confirmed {confirmed} of {changes} changes)"
                )
            time.sleep(POLL_INTERVAL)


def _scalar(conn: psycopg.Connection[Any], query: str) -> int:
    row = conn.execute(query).fetchone()
    return int(row[0]) if row and row[0] is not None else 0
