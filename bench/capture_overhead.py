"""Capture overhead: single-row committed transactions on the legacy database.

Three fresh databases with the legacy shop's schema and the same rows, on the PostgreSQL
cluster with ``wal_level=logical`` (``BENCH_PG_LOGICAL_PORT``, default 5433; started by
``deploy/postgres/logical-cluster.sh`` when it does not answer): ``wal_level=logical``
itself writes more WAL, so the baseline runs on that cluster too. Variants:

- ``plain``: no capture (the baseline);
- ``triggers``: the kit's capture triggers, ``strangler bridge run`` relaying to RabbitMQ;
- ``debezium``: no triggers, ``strangler bridge run --engine debezium`` (a publication and
  a replication slot) streaming the log to RabbitMQ.

Both pipelines run during every round (that is what legacy pays on a shared machine);
each publishes to its own exchange, its changes into a queue that is counted and purged
after each round (once the pipeline has caught up, outside the clock). Each transaction is
one statement, committed: half insert a lot, half update a random lot's quantity. They are
driven by ``pgbench`` (prepared statements, a C client, so the client costs little) or,
without it, by a Python loop. The variants take turns in rounds (the order rotates, so
drift hits all alike), with 1 client and with 4 concurrent clients. Targets: the trigger
bridge at least 0.9 times the uncaptured rate, log-based capture at least 0.95.
"""

from __future__ import annotations

import random
import re
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg

import broker
from bench.context import Context
from bench.cpu import Sampler, children_cpu, cluster_cpu_of, command_cpu, cores
from bench.cpu import sample_all as sample_cpu
from bench.kit import note_disturbances
from bench.processes import BenchmarkFailed, Processes, processes, wait_for
from bench.report import Figure, Result, Target
from bench.seed import Shape, create_legacy_schema, seed_legacy
from bench.services import AmqpNames, Database, Services, purge_queues, queue_depth
from broker import QueueSpec
from examples.legacy_shop import TABLES
from legacy_bridge import install

NAME = "capture_overhead"
ROUNDS = 10
CLIENT_COUNTS = (1, 4)
SEED = Shape(products=10, lots_per_product=100, lines=0)
VARIANTS = ("plain", "triggers", "debezium")
PIPELINE = {"triggers": "relay", "debezium": "engine"}
"""The process of each captured variant."""
TARGETS = {"triggers": 0.9, "debezium": 0.95}
LABELS = {"triggers": "triggers + relay", "debezium": "Debezium engine (log)"}
CATCH_UP_SECONDS = 180

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


def round_order(variants: Sequence[str], round_: int) -> list[str]:
    """The variants in round ``round_``: rotated by one each round, so each takes each
    place in turn."""
    shift = round_ % len(variants)
    return [*variants[shift:], *variants[:shift]]


def run(ctx: Context, size: int) -> Result:
    services = ctx.services.logical()
    result = Result(NAME, size)
    with (
        services.database("bench_plain") as plain,
        services.database("bench_triggers") as triggers,
        services.database("bench_debezium") as debezium,
        services.amqp_names("bench_cap") as names,
    ):
        databases = {"plain": plain, "triggers": triggers, "debezium": debezium}
        for database in databases.values():
            create_legacy_schema(database.url)
            seed_legacy(database.dsn, SEED)
        install(triggers.url, TABLES)
        env = {"BROKER_URL": services.amqp_url}
        with processes(ctx.logs(NAME), env, ctx.profile_dir) as procs:
            bench = _Bench(ctx, services, databases, names, procs)
            bench.start_pipelines()
            details = bench.measure(result, size)
            procs.stop("relay")
            procs.stop("engine")
            note_disturbances(result, procs, "relay", "engine")
        with psycopg.connect(triggers.dsn) as conn:
            row = conn.execute("SELECT count(*) FROM strangler_change").fetchone()
        details["changes_captured_by_triggers"] = int(row[0]) if row else 0
    details["cluster"] = f"{services.pg_host}:{services.pg_port} (wal_level=logical), all variants"
    details["mix"] = "50% single-row INSERT of a lot, 50% single-row UPDATE of a lot's qty"
    details["driver"] = "pgbench -M prepared" if shutil.which("pgbench") else "python (psycopg)"
    details["cpu_note"] = (
        "cores used during each variant's rounds: postgres = the whole logical cluster "
        "(its WAL sender included), rabbitmq = every beam.smp on the machine"
    )
    result.details |= details
    return result


class _Bench:
    """The three databases, the two pipelines and the rounds between them."""

    def __init__(
        self,
        ctx: Context,
        services: Services,
        databases: dict[str, Database],
        names: AmqpNames,
        procs: Processes,
    ) -> None:
        self.ctx, self.services, self.databases = ctx, services, databases
        self.names, self.procs = names, procs
        self.pgbench = shutil.which("pgbench")
        self.scripts = _pgbench_scripts(ctx.logs(NAME)) if self.pgbench else ()
        self.slot = f"bench_{uuid.uuid4().hex[:10]}"
        postgres = cluster_cpu_of(services.dsn())
        self.samplers: dict[str, Sampler] = {
            **({"postgres": postgres} if postgres is not None else {}),
            "relay": lambda: procs.cpu_seconds("relay"),
            "engine (JVM + Python)": lambda: procs.cpu_seconds("engine"),
            "rabbitmq": command_cpu("beam.smp"),
            "load driver": children_cpu,
        }

    def queues(self, variant: str) -> tuple[str, str]:
        """The variant's change queue and its exchange's unrouted queue."""
        return self.names.queue(variant), f"{self.names.exchange(variant)}.unrouted"

    def start_pipelines(self) -> None:
        admin = broker.connect(self.services.amqp_url)
        try:
            for variant in PIPELINE:
                exchange = self.names.exchange(variant)
                admin.declare_exchange(exchange, alternate_exchange=f"{exchange}.unrouted")
                admin.declare_queue(
                    QueueSpec(self.names.queue(variant), [(exchange, "stock_lot.*")])
                )
        finally:
            admin.close()
        triggers, debezium = self.databases["triggers"], self.databases["debezium"]
        self.procs.strangler(
            "relay", "bridge", "run", "--legacy-db-url", triggers.url,
            "--exchange", self.names.exchange("triggers"), *self.ctx.bridge_args, profile=True,
        )  # fmt: skip
        self.procs.strangler(
            "engine", "bridge", "run", "--engine", "debezium", "--legacy-db-url", debezium.url,
            "--tables", ",".join(TABLES), "--slot", self.slot,
            "--exchange", self.names.exchange("debezium"), *self.ctx.bridge_args, profile=True,
        )  # fmt: skip
        # Debezium's initial snapshot brings the seeded lots first; one update in each
        # captured database then shows both pipelines streaming
        self.caught_up("debezium", SEED.lots, 180)
        for variant in PIPELINE:
            with psycopg.connect(self.databases[variant].dsn) as conn:
                conn.execute(_UPDATE, (1,))
        for variant in PIPELINE:
            self.caught_up(variant, 1, 60)

    def caught_up(self, variant: str, changes: int, timeout: float) -> None:
        """Wait until ``changes`` of the variant are in its queue, then empty its queues."""
        process, queue = PIPELINE[variant], self.names.queue(variant)

        def arrived() -> bool:
            self.procs.check_running(process)
            return queue_depth(self.services.amqp_url, queue) >= changes

        wait_for(arrived, timeout, f"{changes} changes from the {variant} pipeline", 0.1)
        purge_queues(self.services.amqp_url, *self.queues(variant))

    def measure(self, result: Result, size: int) -> dict[str, Any]:
        rounds = 1 if self.ctx.smoke else ROUNDS
        details: dict[str, Any] = {"slot": self.slot}
        for clients in CLIENT_COUNTS:
            seconds = dict.fromkeys(VARIANTS, 0.0)
            cpu = {variant: dict.fromkeys(self.samplers, 0.0) for variant in VARIANTS}
            per_round = max(1, size // rounds // clients) * clients
            for round_ in range(rounds):
                for variant in round_order(VARIANTS, round_):
                    before = sample_cpu(self.samplers)
                    elapsed = self.transactions(variant, per_round, clients, round_)
                    after = sample_cpu(self.samplers)
                    seconds[variant] += elapsed
                    for piece, used in cores(before, after, 1.0).items():
                        cpu[variant][piece] += used
                    if variant in PIPELINE:
                        self.procs.check_running("relay", "engine")
                        self.caught_up(variant, per_round, CATCH_UP_SECONDS + per_round / 100)
            done = per_round * rounds
            rates = {variant: done / seconds[variant] for variant in VARIANTS}
            plural = "s" if clients > 1 else ""
            for variant in PIPELINE:
                result.figures.append(
                    Figure(
                        f"{LABELS[variant]}: tx/s, {clients} client{plural}", rates[variant],
                        "tx/s", rates["plain"], "no capture",
                        Target("ratio", ">=", TARGETS[variant]),
                    )
                )  # fmt: skip
            details[f"clients_{clients}"] = {
                "transactions_per_variant": done,
                **{f"{variant}_tx_per_s": round(rates[variant], 1) for variant in VARIANTS},
                "cpu_cores_by_variant": {
                    variant: {
                        piece: round(used / seconds[variant], 3)
                        for piece, used in cpu[variant].items()
                    }
                    for variant in VARIANTS
                },
            }
        return details

    def transactions(self, variant: str, count: int, clients: int, round_: int) -> float:
        """Run ``count`` transactions on the variant's database; seconds they took."""
        database = self.databases[variant]
        if self.pgbench:
            services = self.services
            return _pgbench(
                self.pgbench, self.scripts, services.pg_host, services.pg_port,
                services.pg_user, database.name, count, clients,
            )  # fmt: skip
        return _transactions(database.dsn, count, clients, f"c{clients}r{round_}{variant[0]}")


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
