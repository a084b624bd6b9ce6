"""Consumers sharded by product: a captured backlog until the read model shows it all,
applied by one `strangler consume`, then by `strangler shard-router --shards 4` and 1, 2
and 4 `strangler consume --shard K/4` processes (4, 2 and 1 shards each).

The backlog and the clock are pipeline_throughput's (the same seeded legacy tables, from
the bridge's start until ``allocations_view`` holds every allocation), on the kit's
default quorum queues. Each pass reports its end-to-end rate against the one-consumer
pass of the same run, and the CPU time every kit process on the path (bridge, router,
consumers) spent per change. The machine has few cores: past them, more processes only
share them, and the database's write rate is the next limit; the figures say what
sharding buys here, not in general.
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.context import Context
from bench.kit import kit_env, note_disturbances, start_consumer
from bench.pipeline_throughput import Timeline, captured_backlog, drive, shape_for
from bench.processes import Processes, processes, wait_for
from bench.report import Figure, Result
from bench.services import queue_exists

NAME = "sharded_throughput"
SHARDS = 4
PROCESSES = (1, 2, 4)


@dataclass
class _Pass:
    label: str
    changes: int
    timeline: Timeline
    cpu_seconds: dict[str, float]

    @property
    def rate(self) -> float:
        return self.changes / (self.timeline.done - self.timeline.started)

    @property
    def cpu_us_per_change(self) -> float:
        return 1e6 * sum(self.cpu_seconds.values()) / max(self.changes, 1)


def run(ctx: Context, size: int) -> Result:
    result = Result(NAME, size)
    one = _measure(ctx, size, result, 0)
    sharded = [_measure(ctx, size, result, count) for count in PROCESSES]
    result.figures = [
        Figure("end-to-end rate, one consumer", one.rate, "changes/s"),
        Figure("CPU per change, one consumer (bridge + consumer)", one.cpu_us_per_change, "us"),
    ]
    for measured in sharded:
        result.figures += [
            Figure(f"end-to-end rate, {measured.label}", measured.rate, "changes/s", one.rate,
                   "one consumer"),
            Figure(f"CPU per change, {measured.label} (bridge + router + consumers)",
                   measured.cpu_us_per_change, "us", one.cpu_us_per_change, "one consumer"),
        ]  # fmt: skip
    result.details |= {
        "changes": one.changes,
        "shards": SHARDS,
        "passes": {
            m.label: {
                "seconds": round(m.timeline.done - m.timeline.started, 3),
                "cpu_seconds": {k: round(v, 2) for k, v in m.cpu_seconds.items()},
                "progress": m.timeline.samples,
            }
            for m in (one, *sharded)
        },
    }
    return result


def _measure(ctx: Context, size: int, result: Result, consumers: int) -> _Pass:
    """One pass: ``consumers`` processes on the shards (0: one unsharded consumer)."""
    services = ctx.services
    shape = shape_for(size)
    label = (
        "one consumer"
        if not consumers
        else f"router + {consumers} consumer process{'es' if consumers > 1 else ''}"
    )
    with (
        services.database("bench_legacy") as legacy,
        services.database("bench_new") as new,
        services.amqp_names(f"bench_shard_{consumers}") as names,
    ):
        changes = captured_backlog(legacy, new, shape)
        env = kit_env(ctx, legacy.url, new.url)
        queue, exchange = names.queue("pipeline"), names.exchange("pipeline")
        with processes(ctx.logs(f"{NAME}_{consumers}"), env, ctx.profile_dir) as procs:
            running = _start(procs, ctx, queue, exchange, consumers)
            timeline = drive(
                procs, ctx, legacy.dsn, new.dsn, exchange, shape.lines, changes, running
            )
            cpu = {name: procs.cpu_seconds(name) for name in running}
            for name in running:
                procs.stop(name)
            note_disturbances(result, procs, *running)
    return _Pass(label, changes, timeline, cpu)


def _start(
    procs: Processes, ctx: Context, queue: str, exchange: str, consumers: int
) -> tuple[str, ...]:
    """Start the consumer side; the names of every process on the path (the bridge is
    started by :func:`drive`)."""
    if not consumers:
        start_consumer(procs, ctx, queue, exchange)
        return ("consumer", "bridge")
    procs.strangler(
        "router", "shard-router", "--shards", str(SHARDS), "--queue", queue,
        "--exchange", exchange, profile=True,
    )  # fmt: skip
    per_process = SHARDS // consumers
    names = []
    for number in range(consumers):
        shards = range(number * per_process, (number + 1) * per_process)
        options = [a for k in shards for a in ("--shard", f"{k}/{SHARDS}")]
        name = f"consumer-{number + 1}"
        procs.strangler(
            name, "consume", "--queue", queue, *options, *ctx.consumer_args,
            profile=number == 0,
        )  # fmt: skip
        names.append(name)
    shard_queues = [f"{queue}.shard-{k}-of-{SHARDS}" for k in range(SHARDS)]

    def ready() -> bool:
        procs.check_running("router", *names)
        return queue_exists(ctx.services.amqp_url, queue) and all(
            queue_exists(ctx.services.amqp_url, q) for q in shard_queues
        )

    wait_for(ready, 60, "the router and the shard consumers", interval=0.1)
    return ("router", *names, "bridge")
