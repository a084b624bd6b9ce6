"""Snapshot: ``strangler bridge snapshot`` over ``size`` legacy rows, then the relay.

The legacy tables are filled first (1 product per 1,000 rows, 9 lots each, the rest
order lines and their allocations), then capture is installed, so the change table
holds nothing but what the snapshot writes: one op ``r`` row per legacy row, in
primary-key chunks. Figures: the snapshot command's rows/s and peak RSS (``wait4`` of
the process), then ``strangler bridge run`` publishing them all (rows/s, peak RSS).

Baseline, same run: the same rows turned into change rows inside the database by one
``INSERT ... SELECT to_jsonb(t)`` per table (the floor of writing them).
Targets: at least 50,000 rows/s and at most 150 MB peak RSS.
"""

from __future__ import annotations

import time

import psycopg

from bench.context import Context
from bench.kit import kit_env, note_disturbances, start_bridge
from bench.processes import (
    STRANGLER,
    BenchmarkFailed,
    Processes,
    processes,
    strangler_has_command,
)
from bench.raw_amqp import declare_queue
from bench.report import Figure, Result, Target
from bench.seed import Shape, create_legacy_schema, seed_legacy, vacuum_analyze
from examples.legacy_shop import TABLES
from legacy_bridge import install

NAME = "snapshot"
MISSING = "not available: strangler bridge snapshot missing"
MB = 2**20

_FLOOR_TABLE = "bench_snapshot_floor"


def shape_for(size: int) -> Shape:
    products = max(2, size // 1000)
    lots = 9
    lines = max(1, (size - products * (1 + lots)) // 2)
    return Shape(products=products, lots_per_product=lots, lines=lines)


def run(ctx: Context, size: int) -> Result:
    result = Result(NAME, size)
    if not strangler_has_command("bridge", "snapshot"):
        result.status = "not available"
        result.note = MISSING
        return result
    services = ctx.services
    shape = shape_for(size)
    with (
        services.database("bench_legacy") as legacy,
        services.amqp_names("bench_snap") as names,
    ):
        create_legacy_schema(legacy.url)
        seed_legacy(legacy.dsn, shape)
        install(legacy.url, TABLES)
        vacuum_analyze(legacy.dsn)
        floor_seconds = _floor(legacy.dsn)

        env = kit_env(ctx, legacy.url)
        with processes(ctx.logs(NAME), env, ctx.profile_dir) as procs:
            started = time.perf_counter()
            snapshot = procs.run("snapshot", [STRANGLER, "bridge", "snapshot"], timeout=3600)
            snapshot_seconds = time.perf_counter() - started
            if snapshot.returncode != 0:
                raise BenchmarkFailed(
                    f"strangler bridge snapshot exited with {snapshot.returncode}:\n"
                    f"{procs.log_tail('snapshot')}"
                )
            written = _count(legacy.dsn, "SELECT count(*) FROM strangler_change WHERE op = 'r'")
            if written != shape.rows:
                raise BenchmarkFailed(
                    f"the snapshot wrote {written} op 'r' rows for {shape.rows} legacy rows"
                )
            declare_queue(
                services.amqp_url, names.exchange("snapshot"), names.queue("snapshot"),
                as_the_relay_does=True,
            )  # fmt: skip
            relay_started = start_bridge(procs, ctx, names.exchange("snapshot"))
            relay_seconds = _wait_published(procs, legacy.dsn, relay_started, written)
            relay = procs.stop("bridge")
            note_disturbances(result, procs, "snapshot", "bridge")

    rate = written / snapshot_seconds
    result.figures = [
        Figure("snapshot rate", rate, "rows/s", shape.rows / floor_seconds, "SQL floor",
               Target("value", ">=", 50_000)),
        Figure("snapshot peak RSS", snapshot.peak_rss_bytes / MB, "MB", None, "",
               Target("value", "<=", 150)),
        Figure("relay publish rate", written / relay_seconds, "rows/s"),
        Figure("relay peak RSS", relay.peak_rss_bytes / MB, "MB"),
    ]  # fmt: skip
    result.details |= {
        "rows": shape.rows,
        "tables": list(TABLES),
        "snapshot_seconds": round(snapshot_seconds, 3),
        "floor_seconds": round(floor_seconds, 3),
        "relay_seconds": round(relay_seconds, 3),
    }
    return result


def _floor(dsn: str) -> float:
    """Seconds to write every captured table's rows as change rows in one statement each."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            f"CREATE TABLE {_FLOOR_TABLE} (change_id bigserial PRIMARY KEY, "
            "table_name text NOT NULL, op char(1) NOT NULL, after jsonb, "
            "captured_at timestamptz NOT NULL)"
        )
        started = time.perf_counter()
        for table in TABLES:
            conn.execute(
                f"INSERT INTO {_FLOOR_TABLE} (table_name, op, after, captured_at) "
                f"SELECT '{table}', 'r', to_jsonb(t), clock_timestamp() FROM {table} t"
            )
        seconds = time.perf_counter() - started
        conn.execute(f"DROP TABLE {_FLOOR_TABLE}")
    return seconds


def _count(dsn: str, query: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(query).fetchone()
    return int(row[0]) if row else 0


def _wait_published(procs: Processes, dsn: str, started: float, rows: int) -> float:
    """Seconds from ``started`` until nothing is pending and the broker confirmed all."""
    deadline = started + 60 + rows / 200
    with psycopg.connect(dsn, autocommit=True) as conn:
        while True:
            row = conn.execute(
                "SELECT EXISTS (SELECT 1 FROM strangler_change WHERE pos IS NULL), "
                "(SELECT max(pos) FROM strangler_change), "
                "(SELECT last_confirmed_pos FROM strangler_relay_state)"
            ).fetchone()
            assert row is not None
            pending, highest, confirmed = row
            if not pending and highest is not None and confirmed >= highest:
                return time.perf_counter() - started
            procs.check_running("bridge")
            if time.perf_counter() > deadline:
                raise BenchmarkFailed(
                    f"the relay had confirmed up to position {confirmed} of {highest} "
                    f"(rows still unclaimed: {pending}) at the deadline"
                )
            time.sleep(0.1)
