"""Lag: legacy commit to visible in the read model, at a steady rate of changes.

A writer commits, every 10 ms (or less often for low rates), one legacy transaction
with a few orders (an order line and its allocation: two captured changes each) so
that the rate is ``RATE`` changes/s (``--rate``);
it notes the time each commit returned. A poller queries ``allocations_view`` for
orders it has not seen yet every ~5 ms and notes when each first shows up (the start
time of the query that saw it: lags are upper bounds, by at most one poll period).
``strangler bridge run`` and ``strangler consume`` run with their default settings.

Two engines, one after the other, each from a fresh legacy database on the PostgreSQL
cluster with ``wal_level=logical`` (``BENCH_PG_LOGICAL_PORT``) and a fresh new database:
the trigger bridge (``strangler bridge run``) and the Debezium engine (``strangler bridge
run --engine debezium``, its replication slot dropped with the database). The CPU each
piece used while the load ran and drained is in the details.

Baseline, same run: the time from publish to delivery of messages of the same size
through one durable queue at the same rate, with plain pika (the broker's own floor).
Target: p99 at most 100 ms, for either engine.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import psycopg

from bench.context import Context
from bench.cpu import Sampler, cluster_cpu_of, command_cpu, cores
from bench.cpu import sample_all as sample_cpu
from bench.kit import kit_env, note_disturbances, start_bridge, start_consumer
from bench.processes import BenchmarkFailed, Processes, processes, wait_for
from bench.raw_amqp import round_trip_latencies
from bench.report import Figure, Result, Target
from bench.seed import Shape, create_legacy_schema, seed_legacy
from bench.services import AmqpNames, Services
from bench.stats import percentile
from examples.legacy_shop import TABLES
from legacy_bridge import install
from new_domain import upgrade_database

NAME = "lag"
RATE = 1000
SMOKE_RATE = 200
TICK = 0.01
POLL_PAUSE = 0.005
PRODUCTS = 100
BODY_BYTES = 700
BASELINE_SECONDS = 10
GRACE_SECONDS = 30
ENGINES = ("triggers", "debezium")
LABELS = {"triggers": "triggers + relay", "debezium": "Debezium engine (log)"}

_INSERT_ORDERS = f"""
WITH line AS (
  INSERT INTO cust_order_line (order_no, prod_id, qty_units)
  SELECT 'lag-' || lpad(g::text, 9, '0'), ((g - 1) %% {PRODUCTS}) + 1, 1
  FROM generate_series(%(low)s::int, %(high)s::int) g
  RETURNING line_id, prod_id
)
INSERT INTO lot_allocation (lot_id, line_id, allocated_at)
SELECT 2 * prod_id - (line_id %% 2), line_id, now() FROM line
"""


def order_name(n: int) -> str:
    return f"lag-{n:09d}"


def run(ctx: Context, size: int) -> Result:
    services = ctx.services
    rate = ctx.rate or (SMOKE_RATE if ctx.smoke else RATE)
    orders_per_tick = max(1, round(rate * TICK / 2))
    duration = float(size)
    result = Result(NAME, size)
    logical = services.logical()
    with services.amqp_names("bench_lag") as names:
        baseline = round_trip_latencies(
            services.amqp_url,
            names.exchange("baseline"),
            names.queue("baseline"),
            rate=rate,
            duration=min(duration, BASELINE_SECONDS),
            body_size=BODY_BYTES,
            per_tick=orders_per_tick * 2,
        )
        if not baseline:
            raise BenchmarkFailed("the raw pika baseline received nothing")
        base_ms = [lag * 1000 for lag in baseline]
        for engine in ENGINES:
            measurement = _measure_engine(ctx, logical, names, engine, rate, duration, result)
            _report(result, engine, measurement, base_ms, rate)
    result.details |= {
        "rate_target_changes_per_s": rate,
        "legacy_cluster": f"{logical.pg_host}:{logical.pg_port} (wal_level=logical)",
        "baseline_messages": len(baseline),
        "baseline_p999_ms": round(percentile(base_ms, 99.9), 2),
        "bridge_args": list(ctx.bridge_args),
        "consumer_args": list(ctx.consumer_args),
    }
    return result


def _measure_engine(
    ctx: Context,
    logical: Services,
    names: AmqpNames,
    engine: str,
    rate: int,
    duration: float,
    result: Result,
) -> _Run:
    """One engine's pipeline, from a fresh legacy database (on the logical cluster) and a
    fresh new one, through its own exchange and queue; the measurement it made."""
    orders_per_tick = max(1, round(rate * TICK / 2))
    tick = orders_per_tick * 2 / rate
    seed = Shape(products=PRODUCTS, lots_per_product=2, lines=0)
    with (
        logical.database(f"bench_legacy_{engine}") as legacy,
        ctx.services.database("bench_new") as new,
    ):
        create_legacy_schema(legacy.url)
        if engine == "triggers":
            install(legacy.url, TABLES)  # the seed rows reach new as changes
        seed_legacy(legacy.dsn, seed)  # Debezium: by its initial snapshot
        upgrade_database(new.url)
        env = kit_env(ctx, legacy.url, new.url)
        with processes(ctx.logs(f"{NAME}_{engine}"), env, ctx.profile_dir) as procs:
            exchange = names.exchange(engine)
            start_consumer(procs, ctx, names.queue(engine), exchange)
            options = _engine_options(engine)
            start_bridge(procs, ctx, exchange, *options)
            measurement = _Run(legacy.dsn, new.dsn, orders_per_tick, tick)
            measurement.slot = options[-1] if options else None
            measurement.warm_up(procs)
            samplers = _samplers(ctx, logical, procs)
            before = sample_cpu(samplers)
            measurement.measure(procs, duration)
            seconds = measurement.write_seconds + measurement.drain_seconds
            measurement.cpu_cores = cores(before, sample_cpu(samplers), max(seconds, 1e-3))
            procs.stop("consumer")
            procs.stop("bridge")
            earlier = result.details.pop("logged_problems", {})
            note_disturbances(result, procs, "bridge", "consumer")
            earlier[engine] = result.details.pop("logged_problems")
            result.details["logged_problems"] = earlier
    return measurement


def _engine_options(engine: str) -> tuple[str, ...]:
    if engine == "triggers":
        return ()
    slot = f"bench_{uuid.uuid4().hex[:10]}"
    return ("--engine", "debezium", "--tables", ",".join(TABLES), "--slot", slot)


def _samplers(ctx: Context, logical: Services, procs: Processes) -> dict[str, Sampler]:
    clusters = {
        "postgres legacy (logical cluster)": cluster_cpu_of(logical.dsn()),
        "postgres new (main cluster, shared)": cluster_cpu_of(ctx.services.dsn()),
    }
    return {
        **{name: sampler for name, sampler in clusters.items() if sampler is not None},
        "bridge": lambda: procs.cpu_seconds("bridge"),
        "consumer": lambda: procs.cpu_seconds("consumer"),
        "rabbitmq": command_cpu("beam.smp"),
    }


def _report(
    result: Result, engine: str, measurement: _Run, base_ms: list[float], rate: int
) -> None:
    # an order never seen counts with the lag it had reached when the wait ended (a
    # lower bound), so a pipeline that falls behind shows its lag instead of "inf"
    seen, gave_up = measurement.seen, measurement.gave_up
    lags = [seen.get(n, gave_up) - t for n, t in measurement.committed.items()]
    missing = sum(1 for n in measurement.committed if n not in measurement.seen)
    if len(lags) == missing:
        raise BenchmarkFailed(f"{engine}: no order became visible in the read model")
    lags_ms = [lag * 1000 for lag in lags]
    label = LABELS[engine]
    result.figures += [
        Figure(f"{label}: lag p50", percentile(lags_ms, 50), "ms", percentile(base_ms, 50),
               "raw pika"),
        Figure(f"{label}: lag p99", percentile(lags_ms, 99), "ms", percentile(base_ms, 99),
               "raw pika", Target("value", "<=", 100)),
    ]  # fmt: skip
    written = len(measurement.committed) * 2
    result.details[engine] = {
        "rate_achieved_changes_per_s": round(written / measurement.write_seconds, 1),
        "changes_written": written,
        "orders_missing_after_grace": missing,
        "percentiles_are_lower_bounds": bool(missing),
        "lag_p50_ms": round(percentile(lags_ms, 50), 1),
        "lag_p99_ms": round(percentile(lags_ms, 99), 1),
        "lag_max_ms": round(max(lags_ms), 1),
        "lag_p90_ms": round(percentile(lags_ms, 90), 1),
        "lag_p999_ms": round(percentile(lags_ms, 99.9), 1),
        "lag_p50_ms_per_10s_window": _windows(measurement, 10.0),
        "poll_period_ms_mean": round(measurement.poll_period_mean * 1000, 2),
        "cpu_cores_during_load": measurement.cpu_cores,
        "slot": measurement.slot,
    }
    if missing:
        behind = (
            f"{label}: {missing} of {len(measurement.committed)} orders were not visible "
            f"{GRACE_SECONDS} s after the load ended: the pipeline fell behind; their lag "
            "(counted until then) makes the percentiles lower bounds"
        )
        result.note = f"{result.note}\n{behind}".strip()


def _windows(measurement: _Run, width: float) -> list[float]:
    """The p50 lag of the orders committed in each ``width``-second window, in order
    (a pipeline that falls behind shows a rising series)."""
    if not measurement.committed:
        return []
    start = min(measurement.committed.values())
    windows: dict[int, list[float]] = {}
    for n, committed in measurement.committed.items():
        seen = measurement.seen.get(n, measurement.gave_up)
        windows.setdefault(int((committed - start) // width), []).append(seen - committed)
    return [round(percentile(windows[k], 50) * 1000, 1) for k in sorted(windows)]


class _Run:
    """The writer and poller threads of one measurement, and what they recorded."""

    def __init__(self, legacy_dsn: str, new_dsn: str, orders_per_tick: int, tick: float) -> None:
        self.legacy_dsn = legacy_dsn
        self.new_dsn = new_dsn
        self.orders_per_tick = orders_per_tick
        self.tick = tick
        self.next_order = 1
        self.committed: dict[int, float] = {}
        self.seen: dict[int, float] = {}
        self.write_seconds = 0.0
        self.poll_period_mean = 0.0
        self.gave_up = 0.0
        self.drain_seconds = 0.0
        self.cpu_cores: dict[str, float] = {}
        self.slot: str | None = None
        self._last_seen = 0
        self._errors: list[BaseException] = []

    def warm_up(self, procs: Processes) -> None:
        """One order through the whole pipeline before the clock starts."""
        with psycopg.connect(self.legacy_dsn) as conn:
            self._write_tick(conn, 1)
        warm = self.next_order - 1
        self.committed.clear()
        with psycopg.connect(self.new_dsn, autocommit=True) as new:

            def visible() -> bool:
                procs.check_running("consumer", "bridge")
                row = new.execute(
                    "SELECT 1 FROM allocations_view WHERE orderid = %s", (order_name(warm),)
                ).fetchone()
                return row is not None

            wait_for(visible, 120, "the warm-up order to reach the read model", 0.05)
        self._last_seen = warm

    def measure(self, procs: Processes, duration: float) -> None:
        stop_writing = threading.Event()
        stop_polling = threading.Event()
        writer = threading.Thread(target=self._guard, args=(self._write, stop_writing, duration))
        poller = threading.Thread(target=self._guard, args=(self._poll, stop_polling, 0.0))
        poller.start()
        writer.start()
        try:
            while writer.is_alive():
                writer.join(0.5)
                procs.check_running("consumer", "bridge")
                self._raise_errors()
            drain_started = time.monotonic()
            deadline = drain_started + GRACE_SECONDS
            while len(self.seen) < len(self.committed) and time.monotonic() < deadline:
                procs.check_running("consumer", "bridge")
                self._raise_errors()
                time.sleep(0.05)
            self.drain_seconds = time.monotonic() - drain_started
            self.gave_up = time.time()
        finally:
            stop_writing.set()
            stop_polling.set()
            writer.join()
            poller.join()
        self._raise_errors()

    def _guard(self, target: Any, stop: threading.Event, duration: float) -> None:
        try:
            target(stop, duration)
        except BaseException as error:  # re-raised by measure()
            self._errors.append(error)

    def _raise_errors(self) -> None:
        if self._errors:
            raise BenchmarkFailed(f"lag measurement failed: {self._errors[0]!r}")

    def _write(self, stop: threading.Event, duration: float) -> None:
        with psycopg.connect(self.legacy_dsn) as conn:
            started = time.monotonic()
            ticks = int(duration / self.tick)
            for tick in range(ticks):
                if stop.is_set():
                    break
                pause = started + tick * self.tick - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
                self._write_tick(conn, self.orders_per_tick)
            self.write_seconds = time.monotonic() - started

    def _write_tick(self, conn: psycopg.Connection[Any], orders: int) -> None:
        low = self.next_order
        high = low + orders - 1
        conn.execute(_INSERT_ORDERS, {"low": low, "high": high})
        conn.commit()
        committed = time.time()
        for n in range(low, high + 1):
            self.committed[n] = committed
        self.next_order = high + 1

    def _poll(self, stop: threading.Event, _duration: float) -> None:
        polls = 0
        started = time.monotonic()
        with psycopg.connect(self.new_dsn, autocommit=True) as conn:
            while not stop.is_set():
                asked = time.time()
                rows = conn.execute(
                    "SELECT orderid FROM allocations_view WHERE orderid > %s ORDER BY orderid",
                    (order_name(self._last_seen),),
                ).fetchall()
                for (orderid,) in rows:
                    n = int(orderid.removeprefix("lag-"))
                    self.seen.setdefault(n, asked)
                    self._last_seen = max(self._last_seen, n)
                polls += 1
                time.sleep(POLL_PAUSE)
        self.poll_period_mean = (time.monotonic() - started) / max(polls, 1)
