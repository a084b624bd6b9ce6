"""Write path: ``POST /allocate`` through the facade with the write group on ``new``, vs
legacy's own ``POST /allocate`` on the same data, in the same run; then back-sync's lag.

The legacy database gets the bridge's capture, then ``SHAPE`` (products, lots with
plenty of stock, allocated order lines) written with set-based SQL; ``strangler bridge
run`` and ``strangler consume`` (its outbox relay beside it) carry it into the new
database, and ``strangler verify --databases`` checks both hold the same facts.
``strangler backsync run``, ``strangler legacy serve`` and ``strangler serve`` (2 gunicorn
workers each, the facade behind its default data plane) start; the kit's processes run
throughout, as deployed, and every phase ends by waiting until both databases agree and
every queue is drained, so no phase pays for the one before.

Closed loop (wrk, a second process): ``POST /allocate`` of a new order (unique id) for a
random product, 1 and 16 connections, against legacy directly while the group is on
``legacy`` (the pipeline carries legacy's writes to the new system), and through the
facade once ``strangler routes set POST /allocate new --force`` moved the group and its
fence came back (the new write path decides, back-sync writes legacy). Phases in the
order legacy, facade, facade, legacy (the group handed back in between), so drift hits
both alike. Targets: the facade's p50 at most legacy's, its throughput at least legacy's.

Open loop, group on ``new``: half of ``RATE``, then ``RATE`` writes/s through the facade,
each for ``size`` seconds (the kit catching up in between);
per decision, back-sync's lag: from the ``occurred_at`` of its outbox event (taken in the
new system's transaction, before its commit) to the ``written_at`` of its origin marker
in legacy (the legacy database's ``now()`` in back-sync's transaction). Both clocks are
the one machine's. Target: p99 at most 250 ms at ``RATE``; the half rate shows the lag
where the machine is not saturated.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
import requests

from bench.context import Context
from bench.http_load import LoadFailed, LoadResult
from bench.kit import kit_env, note_disturbances, start_bridge, start_consumer
from bench.processes import STRANGLER, BenchmarkFailed, Processes, processes, wait_for
from bench.report import Figure, Result, Target
from bench.seed import Shape, create_legacy_schema, seed_legacy
from bench.servers import WORKERS, Servers, merge_loads, start_servers
from bench.services import AmqpNames, Database
from bench.stats import percentile
from bench.write_load import OpenLoopResult, run_closed, run_open
from examples.legacy_shop import TABLES
from legacy_bridge import install
from new_domain import upgrade_database

NAME = "write_path"
SHAPE = Shape(products=100, lots_per_product=10, lines=20_000)
SMOKE_SHAPE = Shape(products=10, lots_per_product=2, lines=200)
RATE = 200
SMOKE_RATE = 50
THROUGHPUT_CONNECTIONS = 16
OPEN_LOOP_SENDERS = 16
SETTLE_S = 1.0
"""back-sync's ``--settle`` (the facade's route refresh interval is 1 s)."""
CATCH_UP_S = 180.0
PROCESSES = ("legacy", "facade", "consumer", "bridge", "backsync")
ASYNCHRONOUS = ("consumer", "bridge", "backsync")
"""The kit's processes that carry writes between the systems after they were answered."""
REASON = "write path benchmark"
HELD = "legacy-via-facade"
"""The side of legacy's own writes sent through the facade while the group is on legacy:
the facade proxies each while it holds the group's ownership row (docs/write-path.md)."""


def run(ctx: Context, size: int) -> Result:
    services = ctx.services
    shape = SMOKE_SHAPE if ctx.smoke else SHAPE
    rate = ctx.rate or (SMOKE_RATE if ctx.smoke else RATE)
    result = Result(NAME, size)
    with (
        services.database("bench_legacy") as legacy,
        services.database("bench_new") as new,
        services.amqp_names("bench_writes") as names,
    ):
        create_legacy_schema(legacy.url)
        install(legacy.url, TABLES)
        upgrade_database(new.url)
        seed_legacy(legacy.dsn, shape, chunk=500)
        env = kit_env(ctx, legacy.url, new.url)
        with processes(ctx.logs(NAME), env, ctx.profile_dir) as procs:
            kit = _Kit(ctx, procs, legacy, new, names)
            servers = kit.start(shape)
            phases = _Phases(ctx, kit, servers, shape, float(size))
            measured = phases.run_all(rate)
            result.details["verified_after"] = kit.verify()
            kit.check_running()
            note_disturbances(result, procs, *PROCESSES)
    _report(result, measured, shape, rate)
    return result


# -- the kit's processes and the two databases -----------------------------------------


class _Kit:
    """The kit's processes of one run and what the benchmark asks the databases."""

    def __init__(
        self,
        ctx: Context,
        procs: Processes,
        legacy: Database,
        new: Database,
        names: AmqpNames,
    ) -> None:
        self.ctx = ctx
        self.procs = procs
        self.legacy = legacy
        self.new = new
        self.events = names.exchange("events")
        self.backsync_queue = names.queue("backsync")
        self.pipeline = (names.queue("pipeline"), names.exchange("pipeline"))

    def start(self, shape: Shape) -> Servers:
        """Back-sync installed, the pipeline running until the new system holds the
        seeded data (checked by ``verify --databases``), back-sync and the servers."""
        self.cli_or_fail("backsync", "install", *self._backsync_names())
        self._start_pipeline()
        wait_for(lambda: self._seeded(shape), CATCH_UP_S, "the seeded data in the new system", 0.2)
        self.caught_up_or_fail("the seeded data")
        verified = self.verify()
        if verified != "equal":
            raise BenchmarkFailed(f"the seeded databases differ:\n{verified}")
        self._start_backsync()
        return start_servers(self.procs, self.legacy.url, self.new.url, "/batches/LOT-00000001")

    def _start_pipeline(self) -> None:
        queue, exchange = self.pipeline
        start_consumer(self.procs, self.ctx, queue, exchange, "--events-exchange", self.events)
        start_bridge(self.procs, self.ctx, exchange)

    def _start_backsync(self) -> None:
        self.procs.strangler(
            "backsync", "backsync", "run", *self._backsync_names(), "--settle", str(SETTLE_S),
            profile=True,
        )  # fmt: skip

    def pause(self) -> None:
        """Stop the kit's asynchronous processes (bridge, consumer with its outbox relay,
        back-sync): a load phase then measures only what a client waits for."""
        for name in ASYNCHRONOUS:
            finished = self.procs.stop(name)
            if finished.returncode != 0:
                raise BenchmarkFailed(
                    f"{name} exited with {finished.returncode} when stopped:\n"
                    f"{self.procs.log_tail(name)}"
                )

    def resume(self) -> None:
        """Start them again; they catch up with what the phase wrote."""
        self._start_pipeline()
        self._start_backsync()

    def _backsync_names(self) -> tuple[str, ...]:
        return ("--queue", self.backsync_queue, "--exchange", self.events)

    def cli(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """``strangler ARGS`` to completion (its output)."""
        return subprocess.run(
            [STRANGLER, *args], env=self.procs.env, capture_output=True, text=True,
            timeout=timeout,
        )  # fmt: skip

    def cli_or_fail(self, *args: str) -> None:
        completed = self.cli(*args)
        if completed.returncode != 0:
            raise BenchmarkFailed(
                f"strangler {' '.join(args)} exited with {completed.returncode}:\n"
                f"{(completed.stdout + completed.stderr)[-2000:]}"
            )

    def verify(self) -> str:
        """``strangler verify --databases``: ``equal``, or what it printed."""
        completed = self.cli("verify", "--databases")
        if completed.returncode == 0:
            return "equal"
        return (completed.stdout + completed.stderr)[-2000:]

    def check_running(self) -> None:
        """Fail when one of the kit's long-running processes started so far has exited
        (one stopped on purpose by :meth:`pause` is started again before this is asked)."""
        self.procs.check_running(*(name for name in PROCESSES if name in self.procs.procs))

    def _seeded(self, shape: Shape) -> bool:
        self.procs.check_running("consumer", "bridge")
        return _scalar(self.new.dsn, "SELECT count(*) FROM batch_allocations") >= shape.lines

    def move(self, rule: str) -> None:
        """``strangler routes set POST /allocate RULE`` (forced to ``new``), then wait until
        its fence came back (the group ``active`` again)."""
        force = ("--force",) if rule == "new" else ()
        self.cli_or_fail(
            "routes", "set", "POST", "/allocate", rule, *force,
            "--reason", REASON, "--by", "bench",
        )  # fmt: skip

        def settled() -> bool:
            self.check_running()
            row = _row(
                self.new.dsn,
                "SELECT rule, state FROM write_ownership WHERE group_name = 'allocation'",
            )
            return row is not None and tuple(row) == (rule, "active")

        wait_for(settled, CATCH_UP_S, f"the write group's move to {rule} to settle", 0.1)

    def caught_up(self) -> bool:
        """Both databases hold the same allocations, the outbox is published, every
        captured change is published and applied by the consumer."""
        self.check_running()
        with (
            psycopg.connect(self.legacy.dsn, autocommit=True) as legacy,
            psycopg.connect(self.new.dsn, autocommit=True) as new,
        ):
            legacy_row = legacy.execute(_LEGACY_PROGRESS).fetchone()
            new_row = new.execute(_NEW_PROGRESS).fetchone()
        assert legacy_row is not None and new_row is not None
        allocations, pending, published = legacy_row
        new_allocations, unpublished, applied = new_row
        return bool(
            allocations == new_allocations
            and pending == 0
            and unpublished == 0
            and applied >= published
        )

    def caught_up_or_fail(self, after: str) -> None:
        wait_for(self.caught_up, CATCH_UP_S, f"the kit to catch up after {after}", 0.1)

    def cpu(self) -> dict[str, float]:
        return {
            name: self.procs.cpu_seconds(name) for name in PROCESSES if name in self.procs.procs
        }


_LEGACY_PROGRESS = """
SELECT (SELECT count(*) FROM lot_allocation),
       (SELECT count(*) FROM strangler_change WHERE pos IS NULL),
       (SELECT coalesce(max(pos), 0) FROM strangler_change)
"""
_NEW_PROGRESS = """
SELECT (SELECT count(*) FROM batch_allocations),
       (SELECT count(*) FROM outbox WHERE published_at IS NULL),
       (SELECT coalesce(max(position), 0) FROM applied_change_position)
"""


def _scalar(dsn: str, sql: str) -> int:
    row = _row(dsn, sql)
    return int(row[0]) if row is not None else 0


def _row(dsn: str, sql: str) -> tuple[Any, ...] | None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(sql).fetchone()


# -- the load phases -------------------------------------------------------------------


@dataclass(frozen=True)
class _Measured:
    """One side's closed-loop phases merged; the CPU each process spent per request,
    until the kit had caught up with them."""

    load: LoadResult
    cpu_ms_per_request: dict[str, float]

    def as_dict(self) -> dict[str, Any]:
        cpu = {name: round(ms, 3) for name, ms in self.cpu_ms_per_request.items()}
        return {**self.load.as_dict(), "cpu_ms_per_request": cpu}


@dataclass(frozen=True)
class _Lag:
    """Back-sync's lag per decision of the open-loop phase (ms)."""

    written_at_ms: list[float]
    """to the origin marker's ``written_at`` (legacy's ``now()``)"""
    applied_at_ms: list[float]
    """to ``strangler_backsync_applied.applied_at`` (back-sync's clock before its commit)"""
    published_at_ms: list[float]
    """to the outbox row's ``published_at`` (the relay's clock after RabbitMQ confirmed)"""
    window_p50_ms: list[float]
    cpu_ms_per_write: dict[str, float]
    """per process, from the start of the phase until the kit caught up with it"""
    open_loop: OpenLoopResult
    decisions: int


@dataclass(frozen=True)
class _AllMeasured:
    legacy: dict[int, _Measured]
    facade: dict[int, _Measured]
    lags: dict[int, _Lag]
    """by rate (writes/s): half the target rate, then the target rate"""
    held: dict[int, _Measured]
    """legacy's writes through the facade while the group is on legacy (not in smoke runs)"""


class _Phases:
    """The closed-loop phases on both sides and the open-loop lag phase."""

    def __init__(
        self, ctx: Context, kit: _Kit, servers: Servers, shape: Shape, seconds: float
    ) -> None:
        self.ctx = ctx
        self.kit = kit
        self.servers = servers
        self.shape = shape
        self.seconds = seconds
        self.rounds = 1 if ctx.smoke else 2
        self.loads: dict[str, dict[int, list[tuple[LoadResult, dict[str, float]]]]] = {
            "legacy": {},
            "facade": {},
            HELD: {},
        }
        self.phase = 0

    def run_all(self, rate: int) -> _AllMeasured:
        one, many = 1, THROUGHPUT_CONNECTIONS
        self._warm("legacy")
        self._measure("legacy", one)
        self._measure("legacy", many)
        if not self.ctx.smoke:  # legacy's writes through the facade, which holds the lock
            self._measure(HELD, one)
            self._measure(HELD, many)
        self.kit.move("new")
        self._warm("facade")
        self._measure("facade", one)
        self._measure("facade", many)
        lags = {r: self._lag(r) for r in (max(1, rate // 2), rate)}
        if self.rounds > 1:
            self._measure("facade", many)
            self._measure("facade", one)
            self.kit.move("legacy")
            self._measure("legacy", many)
            self._measure("legacy", one)
        return _AllMeasured(
            self._merged("legacy"), self._merged("facade"), lags, self._merged(HELD)
        )

    def _url(self, side: str) -> str:
        return self.servers.legacy if side == "legacy" else self.servers.facade

    def _warm(self, side: str) -> None:
        """A short closed loop (not measured); through the facade, first until the new
        system answers (the facade's workers refresh their route snapshot each second)."""
        if side == "facade":
            self._served_by_new()
        seconds = self.ctx.seconds(3, 0.5)
        for attempt in range(3):
            try:
                run_closed(
                    self.ctx.load_tool, self._url(side), f"warm{self.phase}-{attempt}",
                    self.shape.products, connections=THROUGHPUT_CONNECTIONS,
                    duration=seconds, work_dir=self.kit.procs.logs,
                )  # fmt: skip
                break
            except LoadFailed:
                if attempt == 2:
                    raise
        self.kit.caught_up_or_fail(f"warming {side} up")

    def _served_by_new(self) -> None:
        answers: list[bool] = []

        def twenty_in_a_row() -> bool:
            n = len(answers)
            body = {"orderid": f"probe-{n}", "sku": "SKU-000001", "qty": 1}
            response = requests.post(f"{self.servers.facade}/allocate", json=body, timeout=10)
            answers.append(
                response.status_code == 201 and response.headers.get("X-Served-By") == "new"
            )
            return len(answers) >= 20 and all(answers[-20:])

        wait_for(twenty_in_a_row, 60, "the facade to write with the new system", 0.05)

    def _measure(self, side: str, connections: int) -> None:
        """One closed-loop phase with the asynchronous processes stopped; the CPU the
        server spent per request; then they catch up."""
        self.phase += 1
        server = "facade" if side == HELD else side
        self.kit.pause()
        before = self.kit.procs.cpu_seconds(server)
        load = run_closed(
            self.ctx.load_tool, self._url(side), f"p{self.phase}-{side}", self.shape.products,
            connections=connections, duration=self.seconds / self.rounds,
            work_dir=self.kit.procs.logs,
        )  # fmt: skip
        cpu = {server: self.kit.procs.cpu_seconds(server) - before}
        self.kit.resume()
        self.kit.caught_up_or_fail(f"phase {self.phase} ({side}, {connections} connections)")
        self.loads[side].setdefault(connections, []).append((load, cpu))

    def _merged(self, side: str) -> dict[int, _Measured]:
        merged = {}
        for connections, phases in self.loads[side].items():
            load = merge_loads([load for load, _ in phases])
            cpu = {
                name: 1000 * sum(c[name] for _, c in phases) / load.requests
                for name in phases[0][1]
            }
            merged[connections] = _Measured(load, cpu)
        return merged

    def _lag(self, rate: int) -> _Lag:
        """``rate`` writes/s through the facade (open loop); each decision's lag."""
        start_id = _scalar(self.kit.new.dsn, "SELECT coalesce(max(id), 0) FROM outbox")
        before = self.kit.cpu()
        open_loop = run_open(
            self.servers.facade, f"lag{rate}", self.shape.products, rate=rate,
            duration=self.seconds, connections=OPEN_LOOP_SENDERS,
        )  # fmt: skip
        self.kit.caught_up_or_fail("the open-loop phase")
        after = self.kit.cpu()
        taken = _decisions_since(self.kit.new.dsn, start_id)
        written = _written(self.kit.legacy.dsn, list(taken))
        missing = [d for d in taken if d not in written]
        if missing:
            raise BenchmarkFailed(f"{len(missing)} decisions never reached legacy")
        occurred = {d: occurred_at for d, (occurred_at, _) in taken.items()}
        by_marker = {d: _ms(written[d][0] - occurred[d]) for d in occurred}
        return _Lag(
            written_at_ms=list(by_marker.values()),
            applied_at_ms=[_ms(written[d][1] - occurred[d]) for d in occurred],
            published_at_ms=[_ms(published - at) for at, published in taken.values()],
            window_p50_ms=_windows(occurred, by_marker, 5.0),
            cpu_ms_per_write={
                name: round(1000 * (after[name] - before[name]) / len(taken), 3)
                for name in before
                if name != "legacy"
            },
            open_loop=open_loop,
            decisions=len(occurred),
        )


def _decisions_since(dsn: str, start_id: int) -> dict[str, tuple[datetime, datetime]]:
    """decision id -> its event's ``occurred_at`` and ``published_at`` (the outbox relay's
    clock once RabbitMQ confirmed it), for the ``Allocated`` events after outbox row
    ``start_id``."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT body, published_at FROM outbox "
            "WHERE id > %s AND event_type = 'Allocated' ORDER BY id",
            (start_id,),
        ).fetchall()
    found: dict[str, tuple[datetime, datetime]] = {}
    for body, published_at in rows:
        event = json.loads(body)
        if event.get("decision"):
            occurred_at = datetime.fromisoformat(event["occurred_at"])
            found[event["decision"]["id"]] = (occurred_at, published_at)
    return found


def _written(dsn: str, decision_ids: list[str]) -> dict[str, tuple[datetime, datetime]]:
    """decision id -> (origin marker's ``written_at``, back-sync's ``applied_at``)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT o.decision_id, o.written_at, a.applied_at FROM strangler_origin o "
            "JOIN strangler_backsync_applied a ON a.decision_id = o.decision_id "
            "WHERE o.kind = 'decision' AND o.decision_id = ANY(%s)",
            (decision_ids,),
        ).fetchall()
    return {str(d): (written_at, applied_at) for d, written_at, applied_at in rows}


def _ms(delta: Any) -> float:
    return float(delta.total_seconds() * 1000)


def _windows(occurred: dict[str, datetime], lag_ms: dict[str, float], width: float) -> list[float]:
    """The p50 lag of the decisions taken in each ``width``-second window, in order."""
    if not occurred:
        return []
    start = min(occurred.values())
    windows: dict[int, list[float]] = {}
    for decision, at in occurred.items():
        windows.setdefault(int((at - start).total_seconds() // width), []).append(lag_ms[decision])
    return [round(percentile(windows[k], 50), 1) for k in sorted(windows)]


# -- figures ---------------------------------------------------------------------------


def _report(result: Result, measured: _AllMeasured, shape: Shape, rate: int) -> None:
    n = THROUGHPUT_CONNECTIONS
    legacy_1, facade_1 = measured.legacy[1], measured.facade[1]
    legacy_n, facade_n = measured.legacy[n], measured.facade[n]
    result.figures = [
        Figure("p50 latency, 1 connection", facade_1.load.p50_ms, "ms", legacy_1.load.p50_ms,
               "legacy", Target("ratio", "<=", 1.0)),
        Figure("p99 latency, 1 connection", facade_1.load.p99_ms, "ms", legacy_1.load.p99_ms,
               "legacy"),
        Figure(f"throughput, {n} connections", facade_n.load.rate, "req/s", legacy_n.load.rate,
               "legacy", Target("ratio", ">=", 1.0)),
        Figure(f"p50 latency, {n} connections", facade_n.load.p50_ms, "ms",
               legacy_n.load.p50_ms, "legacy", Target("ratio", "<=", 1.0)),
        Figure(f"p99 latency, {n} connections", facade_n.load.p99_ms, "ms",
               legacy_n.load.p99_ms, "legacy"),
    ]  # fmt: skip
    if measured.held:
        held_1, held_n = measured.held[1], measured.held[n]
        result.figures += [
            Figure("group on legacy, through the facade: p50 latency, 1 connection",
                   held_1.load.p50_ms, "ms", legacy_1.load.p50_ms, "legacy"),
            Figure(f"group on legacy, through the facade: throughput, {n} connections",
                   held_n.load.rate, "req/s", legacy_n.load.rate, "legacy"),
        ]  # fmt: skip
        result.details |= {"held_1": held_1.as_dict(), f"held_{n}": held_n.as_dict()}
    for at, lag in measured.lags.items():
        target = Target("value", "<=", 250) if at == rate else None
        result.figures += [
            Figure(f"back-sync lag p50 at {at} writes/s", percentile(lag.written_at_ms, 50), "ms"),
            Figure(f"back-sync lag p99 at {at} writes/s", percentile(lag.written_at_ms, 99), "ms",
                   target=target),
        ]  # fmt: skip
    result.details |= {
        "route": "POST /allocate (write group allocation: legacy directly vs facade on new)",
        "products": shape.products,
        "lots": shape.lots,
        "seeded_allocations": shape.lines,
        "workers": WORKERS,
        "legacy_1": legacy_1.as_dict(),
        "facade_1": facade_1.as_dict(),
        f"legacy_{n}": legacy_n.as_dict(),
        f"facade_{n}": facade_n.as_dict(),
    }
    for at, lag in measured.lags.items():
        result.details[f"open_loop_{at}"] = {
            **lag.open_loop.as_dict(),
            "cpu_ms_per_write": lag.cpu_ms_per_write,
            "lag_decisions": lag.decisions,
            "lag_p90_ms": round(percentile(lag.written_at_ms, 90), 1),
            "lag_max_ms": round(max(lag.written_at_ms), 1),
            "lag_to_applied_at_p50_ms": round(percentile(lag.applied_at_ms, 50), 1),
            "lag_to_applied_at_p99_ms": round(percentile(lag.applied_at_ms, 99), 1),
            "lag_to_published_at_p50_ms": round(percentile(lag.published_at_ms, 50), 1),
            "lag_to_published_at_p99_ms": round(percentile(lag.published_at_ms, 99), 1),
            "lag_p50_ms_per_5s_window": lag.window_p50_ms,
        }
