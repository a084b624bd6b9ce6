"""Capture overhead: single-row committed transactions on the legacy database.

Two fresh databases with the legacy shop's schema and the same rows; capture is
installed in one of them. Each transaction is one statement, committed: half insert a
lot, half update a random lot's quantity (an update captures two row images). They are
driven by ``pgbench`` (prepared statements, a C client, so the client costs little)
or, without it, by a Python loop. The variants alternate in rounds (drift hits both
alike), with 1 client and with 4 concurrent clients. Baseline, same run: the same
transactions without capture. Target: at least 0.9 times the throughput without capture.
"""

from __future__ import annotations

import random
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import psycopg

from bench.context import Context
from bench.processes import BenchmarkFailed
from bench.report import Figure, Result, Target
from bench.seed import Shape, create_legacy_schema, seed_legacy
from examples.legacy_shop import TABLES
from legacy_bridge import install

NAME = "capture_overhead"
ROUNDS = 10
CLIENT_COUNTS = (1, 4)
SEED = Shape(products=10, lots_per_product=100, lines=0)

_INSERT = (
    "INSERT INTO stock_lot (lot_ref, prod_id, qty_units, arrival_date, created_at) "
    "VALUES (%s, %s, 100, NULL, now())"
)
_UPDATE = "UPDATE stock_lot SET qty_units = qty_units + 1 WHERE lot_id = %s"

_PGBENCH_INSERT = f"""\\set prod random(1, {SEED.products})
INSERT INTO stock_lot (lot_ref, prod_id, qty_units, arrival_date, created_at)
VALUES ('cap-' || gen_random_uuid(), :prod, 100, NULL, now());
"""
_PGBENCH_UPDATE = f"""\\set lot random(1, {SEED.lots})
UPDATE stock_lot SET qty_units = qty_units + 1 WHERE lot_id = :lot;
"""


def run(ctx: Context, size: int) -> Result:
    services = ctx.services
    result = Result(NAME, size)
    rounds = 1 if ctx.smoke else ROUNDS
    pgbench = shutil.which("pgbench")
    scripts = _pgbench_scripts(ctx.logs(NAME)) if pgbench else ()
    with (
        services.database("bench_plain") as plain,
        services.database("bench_captured") as captured,
    ):
        for database in (plain, captured):
            create_legacy_schema(database.url)
            seed_legacy(database.dsn, SEED)
        install(captured.url, TABLES)
        details: dict[str, Any] = {}
        for clients in CLIENT_COUNTS:
            seconds = {"plain": 0.0, "captured": 0.0}
            per_round = max(1, size // rounds // clients) * clients
            for round_ in range(rounds):
                order = [("plain", plain.dsn), ("captured", captured.dsn)]
                if round_ % 2:
                    order.reverse()
                for variant, dsn in order:
                    if pgbench:
                        database = plain if variant == "plain" else captured
                        seconds[variant] += _pgbench(
                            pgbench, scripts, services.pg_host, services.pg_port,
                            services.pg_user, database.name, per_round, clients,
                        )  # fmt: skip
                    else:
                        tag = f"c{clients}r{round_}{variant[0]}"
                        seconds[variant] += _transactions(dsn, per_round, clients, tag)
            done = per_round * rounds
            plain_rate, captured_rate = done / seconds["plain"], done / seconds["captured"]
            result.figures.append(
                Figure(
                    f"tx/s with capture, {clients} client{'s' if clients > 1 else ''}",
                    captured_rate, "tx/s", plain_rate, "no capture", Target("ratio", ">=", 0.9),
                )
            )  # fmt: skip
            details[f"clients_{clients}"] = {
                "transactions_per_variant": done,
                "plain_tx_per_s": round(plain_rate, 1),
                "captured_tx_per_s": round(captured_rate, 1),
            }
        with psycopg.connect(captured.dsn) as conn:
            row = conn.execute("SELECT count(*) FROM strangler_change").fetchone()
        details["changes_captured"] = int(row[0]) if row else 0
        details["mix"] = "50% single-row INSERT of a lot, 50% single-row UPDATE of a lot's qty"
        details["driver"] = "pgbench -M prepared" if pgbench else "python (psycopg, prepared)"
    result.details = details
    return result


def _pgbench_scripts(folder: Path) -> tuple[Path, Path]:
    insert, update = folder / "insert_lot.sql", folder / "update_lot.sql"
    insert.write_text(_PGBENCH_INSERT)
    update.write_text(_PGBENCH_UPDATE)
    return insert, update


_TPS = re.compile(r"^tps = ([0-9.]+) \(without initial connection time\)", re.MULTILINE)


def _pgbench(
    pgbench: str,
    scripts: tuple[Path, ...],
    host: str,
    port: int,
    user: str,
    dbname: str,
    count: int,
    clients: int,
) -> float:
    """Run ``count`` transactions (random mix of the scripts) with pgbench; seconds."""
    command = [
        pgbench, "-n", "-M", "prepared", "-c", str(clients), "-j", str(clients),
        "-t", str(count // clients), "-h", host, "-p", str(port), "-U", user,
        *(f"--file={script}@1" for script in scripts), dbname,
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    found = _TPS.search(done.stdout)
    if done.returncode != 0 or found is None:
        raise BenchmarkFailed(f"pgbench failed ({done.returncode}): {done.stderr[-1500:]}")
    return count / float(found.group(1))


def _transactions(dsn: str, count: int, clients: int, tag: str) -> float:
    """Run ``count`` single-statement transactions over ``clients`` connections;
    seconds from the first to the last commit."""
    each = count // clients
    lots = SEED.lots
    connections = [psycopg.connect(dsn, autocommit=True) for _ in range(clients)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(clients + 1)

    def client(n: int, conn: psycopg.Connection[Any]) -> None:
        rng = random.Random(n)
        try:
            barrier.wait()
            for i in range(each):
                if i % 2:
                    conn.execute(_UPDATE, (rng.randint(1, lots),), prepare=True)
                else:
                    conn.execute(_INSERT, (f"cap-{tag}-{n}-{i}", rng.randint(1, 10)), prepare=True)
        except BaseException as error:  # re-raised below
            errors.append(error)

    threads = [threading.Thread(target=client, args=(n, c)) for n, c in enumerate(connections)]
    try:
        for thread in threads:
            thread.start()
        barrier.wait()
        started = time.perf_counter()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - started
    finally:
        for conn in connections:
            conn.close()
    if errors:
        raise errors[0]
    return elapsed
