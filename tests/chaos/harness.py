"""One chaos run: the whole pipeline as real processes, a workload, faults, the oracle.

PostgreSQL holds the legacy shop's database and the new domain's; RabbitMQ carries the
run's own ``legacy.cdc`` exchange (uniquely named, so runs on one broker never see each
other's messages) to the consumer's queue and to an audit queue bound with ``#``, and the
run's own domain events exchange to back-sync's queue. The facade (``strangler serve``)
runs in front of the shop: the workload's writes go through it, ``GET
/allocations/<orderid>`` is in shadow mode for the fault rounds, its route table and
shadow results in the new database. During the workload the write group ``allocation``
goes legacy -> shadow -> canary 30 -> new -> legacy (the hand-back) -> new.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import pika
import psycopg
import requests
from sqlalchemy.engine import make_url

import broker
from backsync import dead_letter_queue
from broker import QueueSpec
from broker.rabbitmq import connection_parameters, node_urls
from examples.legacy_shop import TABLES
from skeleton_app import CutoverGate, Mode, RouteError, RouteTable
from tests.chaos import faults
from tests.chaos.faults import FacadeRound, FaultLog, Supervised, with_application_name
from tests.chaos.oracle import (
    Store,
    Verdict,
    drain,
    judge_changes,
    judge_dead_letters,
    judge_facade,
    judge_verify,
    queue_counts,
)
from tests.chaos.workload import Workload
from tests.chaos.write_oracle import (
    WriteVerdict,
    judge_backsync,
    judge_databases,
    judge_ledger,
    judge_ownership,
    parity_between,
)
from tests.e2e.processes import STRANGLER, free_port, port_open, run_cli
from tests.services import (
    CLUSTER_NODES,
    CLUSTER_SCRIPT,
    PG_HOST,
    PG_PORT,
    PG_USER,
    postgres_database,
    unique_name,
)

MOVES: tuple[tuple[float, str, str], ...] = (
    (0.08, "shadow", "shadow"),
    (0.16, "canary 30", "canary 30"),
    (0.30, "new", "new"),
    (0.60, "legacy", "handed back"),
    (0.80, "new", "new again"),
)
"""The write group's journey: (share of the workload's changes, mode, phase name). The
hand-back is the move to legacy; the run ends with the group on new."""

HANDBACK = "handed back"

PINNED = {"kill_backsync": HANDBACK, "kill_bridge": HANDBACK, "kill_consumer": "new"}
"""Faults whose first one comes right after a move (the phase it starts) was set."""


@dataclass(frozen=True)
class ChaosConfig:
    """Sizes of one run. ``changes``: captured changes the workload writes at least."""

    mode: str
    seed: int
    changes: int
    kill_bridge: int
    kill_consumer: int
    kill_backsync: int
    broker_restart: int
    pg_terminate: int
    new_db_outage: int
    poison: int  # rounds of poison, ``poison_per_round`` messages each
    bad_paths: int  # rounds of bad paths to the facade, ``requests_per_round`` bad + good each
    poison_per_round: int = 4
    requests_per_round: int = 16
    threads: int = 6
    outage: tuple[float, float] = (2.0, 5.0)  # seconds a broker / new-db outage lasts
    step_timeout: float = 600.0
    moves: tuple[tuple[float, str, str], ...] = MOVES
    settle: float = 1.0  # back-sync's --settle (the facade refreshes its routes every 0.2 s)
    shards: int = 0  # 0: one consumer; N: the shard router, on the local RabbitMQ cluster
    min_phase: float = 0.1  # share of ``changes`` each phase lasts at least, once settled

    def plan(self) -> list[str]:
        """The faults of the run, in a seeded random order."""
        kinds = [kind for kind in faults.KINDS for _ in range(getattr(self, kind))]
        random.Random(self.seed).shuffle(kinds)
        return kinds

    def schedule(self, rng: random.Random) -> list[tuple[float, str]]:
        """Every step of the run at its share of the workload's changes: the group's moves
        (``move <phase>``) and the faults at random points between 5% and 90%, except the
        first of each kind in ``PINNED``, which comes right after its move was set: the
        hand-back's fence and the decisions before it still on their way through
        back-sync and the bridge, the takeover's fence through the consumer."""
        kinds = self.plan()
        points = sorted(rng.uniform(0.05, 0.9) for _ in kinds)
        steps = [(point, 1, kind) for point, kind in zip(points, kinds, strict=True)]
        moved_at = {phase: at for at, _, phase in self.moves}
        for kind, phase in PINNED.items():
            first = next((n for n, step in enumerate(steps) if step[2] == kind), None)
            if first is not None and phase in moved_at:
                steps[first] = (moved_at[phase], 1, kind)
        steps += [(at, 0, f"move {phase}") for at, _, phase in self.moves]
        return [(point, step) for point, _, step in sorted(steps)]


MIN_DECISION_SAMPLES = 100
"""The gate's default minimum of judged decisions before a group moves past shadow."""

READY = {
    "bridge": "relaying captured changes",
    "consumer": "consuming ",
    "consumer-2": "consuming ",
    "consumer-3": "consuming ",
    "router": "routing ",
    "outbox": "relaying the outbox of",
    "backsync": "back-sync: ",
}
"""What a process logs once it works (after its start-up checks)."""

BOUNDED = ChaosConfig(
    mode="bounded",
    seed=0,
    changes=3000,
    kill_bridge=2,
    kill_consumer=2,
    kill_backsync=2,
    broker_restart=1,
    pg_terminate=1,
    new_db_outage=1,
    poison=2,
    bad_paths=2,
    step_timeout=120.0,
)
LONG = ChaosConfig(
    mode="long",
    seed=0,
    changes=100_000,
    kill_bridge=12,
    kill_consumer=12,
    kill_backsync=12,
    broker_restart=4,
    pg_terminate=6,
    new_db_outage=4,
    poison=6,
    bad_paths=6,
)


def sharded(config: ChaosConfig) -> ChaosConfig:
    """``config`` on the local 3-node RabbitMQ cluster with the shard router and three
    consumer processes on 4 shards (two active on two shards each, one standby for
    all): a consumer kill kills one of them or the router, a broker restart stops one
    node of the cluster (the nodes in turn) for the outage."""
    return replace(config, mode=f"{config.mode}, sharded", shards=4)


def run(config: ChaosConfig, workdir: Path, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Run once; the summary (also written to ``workdir/summary.json``)."""
    echo(f"chaos run: mode {config.mode}, seed {config.seed}, logs in {workdir}")
    started = time.monotonic()
    with ExitStack() as stack:
        legacy_url = stack.enter_context(postgres_database("chaos_legacy"))
        new_url = stack.enter_context(postgres_database("chaos_new"))
        run_ = stack.enter_context(_Run(config, workdir, legacy_url, new_url, echo).started())
        run_.inject_faults_under_load()
        verdict, writes = run_.drain_and_judge()
        summary = run_.summary(verdict, writes, time.monotonic() - started)
    (workdir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    echo(json.dumps(summary, indent=2, default=str))
    return summary


class _Run:
    def __init__(
        self,
        config: ChaosConfig,
        workdir: Path,
        legacy_url: str,
        new_url: str,
        echo: Callable[[str], None],
    ) -> None:
        self.config = config
        self.workdir = workdir
        self.echo = echo
        self.rng = random.Random(config.seed + 1)
        self.amqp_url = os.environ.get("TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
        if config.shards:
            self.amqp_url = os.environ.get("TEST_CLUSTER_URL", CLUSTER_NODES)
        self.legacy_url, self.new_url = legacy_url, new_url
        self.legacy_db = make_url(legacy_url).database or ""
        self.new_db = make_url(new_url).database or ""
        self.admin_dsn = f"host={PG_HOST} port={PG_PORT} user={PG_USER} dbname=postgres"
        self.exchange = unique_name("chaos_cdc")
        self.events = unique_name("chaos_events")
        self.queue = unique_name("chaos_q")
        self.audit = unique_name("chaos_audit")
        self.backsync_queue = unique_name("chaos_backsync")
        self.store = Store(legacy_url, new_url)
        self.faults = FaultLog()
        self.poison_ids: set[str] = set()
        self.legacy_port = free_port()
        self.legacy_http = f"http://127.0.0.1:{self.legacy_port}"
        self.facade_port = free_port()
        self.facade_http = f"http://127.0.0.1:{self.facade_port}"
        self.workload = Workload(
            self.facade_http, self.legacy_http, config.seed, threads=config.threads
        )
        self.env = {"LEGACY_DB_URL": legacy_url, "NEW_DB_URL": new_url, "BROKER_URL": self.amqp_url}
        logs = workdir
        self.shop = Supervised(
            "legacy",
            [
                "legacy",
                "serve",
                "--port",
                str(self.legacy_port),
                "--workers",
                "2",
                "--threads",
                "4",
            ],
            {"LEGACY_DB_URL": with_application_name(legacy_url, faults.SHOP_APP)},
            logs,
        )
        self.bridge = Supervised(
            "bridge",
            [
                "bridge",
                "run",
                "--exchange",
                self.exchange,
                "--heartbeat-interval",
                "1",
                "--retention",
                "100000000",
            ],
            {
                "LEGACY_DB_URL": with_application_name(legacy_url, faults.BRIDGE_APP),
                "BROKER_URL": self.amqp_url,
            },
            logs,
        )
        consumer_args = [
            "consume",
            "--queue",
            self.queue,
            "--exchange",
            self.exchange,
            "--events-exchange",
            self.events,
            "--max-attempts",
            "3",
            "--no-outbox-relay",
        ]
        consumer_env = {
            "NEW_DB_URL": with_application_name(new_url, faults.CONSUMER_APP),
            "BROKER_URL": self.amqp_url,
        }
        shards = [f"{k}/{config.shards}" for k in range(config.shards)]
        half = len(shards) // 2
        takes = [shards[:half], shards[half:], shards] if shards else [[]]
        self.consumers = [
            Supervised(
                "consumer" if n == 0 else f"consumer-{n + 1}",
                [*consumer_args, *(a for shard in taken for a in ("--shard", shard))],
                consumer_env,
                logs,
            )
            for n, taken in enumerate(takes)
        ]
        self.consumer = self.consumers[0]
        self.router = Supervised(
            "router",
            ["shard-router", "--shards", str(config.shards), "--queue", self.queue,
             "--exchange", self.exchange],
            consumer_env,
            logs,
        )  # fmt: skip
        self.outbox = Supervised(
            "outbox",
            ["outbox", "relay", "--events-exchange", self.events],
            {
                "NEW_DB_URL": with_application_name(new_url, faults.OUTBOX_APP),
                "BROKER_URL": self.amqp_url,
            },
            logs,
        )
        self.backsync = Supervised(
            "backsync",
            [
                "backsync",
                "run",
                "--queue",
                self.backsync_queue,
                "--exchange",
                self.events,
                "--settle",
                str(config.settle),
            ],
            {
                "LEGACY_DB_URL": with_application_name(legacy_url, faults.BACKSYNC_APP),
                "BROKER_URL": self.amqp_url,
            },
            logs,
        )
        self.facade = Supervised(
            "facade",
            [
                "serve",
                "--port",
                str(self.facade_port),
                "--workers",
                "2",
                "--threads",
                "4",
                "--data-plane",
                "none",
                # the faults hold the consumer up for longer than the lag guard's 15 s,
                # and a tripped guard compares nothing; the shadowed route is here for the
                # bad paths and the shadow results, so its guard never trips
                "--max-lag",
                "86400",
                # a move's settle (back-sync's --settle) must outlast a worker's snapshot
                "--refresh-interval",
                "0.2",
                # a slow decision under load is not an unknown outcome
                "--new-timeout",
                "10",
            ],
            {
                "LEGACY_URL": self.legacy_http,
                "NEW_DB_URL": with_application_name(new_url, faults.FACADE_APP),
            },
            logs,
        )
        self.facade.env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # serve makes its own
        self.facade_rounds: list[FacadeRound] = []
        # progress marks: a process is killed only after it did something since its start
        self.mark = {"bridge": 0, "consumer": 0, "backsync": 0}
        self.journey: list[dict[str, Any]] = []  # the group's moves, as they went
        self.parity_marks: dict[str, dict[str, dict[str, float]]] = {}

    @property
    def pipeline(self) -> tuple[Supervised, ...]:
        router = (self.router,) if self.config.shards else ()
        return (
            self.shop, self.bridge, *router, *self.consumers, self.outbox, self.backsync,
            self.facade,
        )  # fmt: skip

    # -- setup and teardown ---------------------------------------------------------------

    @contextmanager
    def started(self) -> Iterator[_Run]:
        try:
            self.shop.start()
            self.poll(lambda: port_open(self.legacy_port), "the legacy shop", self.shop)
            env = self.env
            run_cli("bridge", "install", "--tables", ",".join(TABLES), env=env)
            run_cli("db", "upgrade", env=env)
            # back-sync's queue before the first decision: one published earlier reaches no one
            run_cli(
                "backsync",
                "install",
                "--queue",
                self.backsync_queue,
                "--exchange",
                self.events,
                env=env,
            )
            table = RouteTable(self.new_url)
            try:
                table.set(*faults.SHADOWED, Mode.SHADOW, by="chaos", reason="the chaos run")
            finally:
                table.close()
            self.facade.start()
            self.poll(self._facade_healthy, "the facade to start", self.facade)
            admin = broker.connect(self.amqp_url)
            try:
                admin.declare_exchange(self.exchange, alternate_exchange=self.unrouted)
                admin.declare_queue(
                    QueueSpec(self.audit, [(self.exchange, "#")], single_active_consumer=False)
                )
            finally:
                admin.close()
            if self.config.shards:
                self.start(self.router)
            for consumer in self.consumers:  # the standby (taking every shard) last
                self.start(consumer)
            self.poll(lambda: self._depth(self.queue) >= 0, "the consumer's queue")
            self.start(self.outbox)
            self.start(self.backsync)
            self.start(self.bridge)
            self.workload.stock()
            yield self
        finally:
            self.workload.stop()
            for process in reversed(self.pipeline):
                process.stop()
            self.store.close()
            self._delete_broker_objects()

    def _facade_healthy(self) -> bool:
        return requests.get(f"{self.facade_http}/_strangler/health", timeout=5).ok

    @property
    def unrouted(self) -> str:
        return f"{self.exchange}.unrouted"

    def _depth(self, queue: str) -> int:
        connection = broker.connect(self.amqp_url)
        try:
            return connection.queue_depth(queue)
        finally:
            connection.close()

    def _delete_broker_objects(self) -> None:
        try:
            nodes = [connection_parameters(url) for url in node_urls(self.amqp_url)]
            connection = pika.BlockingConnection(nodes)  # any node of a cluster
        except pika.exceptions.AMQPError:
            return
        try:
            channel = connection.channel()
            backsync = (self.backsync_queue, dead_letter_queue(self.backsync_queue))
            shards = (*self._queues()[1:], f"{self.queue}.shards.unrouted")
            for queue in (
                self.queue,
                f"{self.queue}.dlq",
                self.audit,
                self.unrouted,
                *backsync,
                *shards,
            ):
                channel.queue_delete(queue)
            for exchange in (
                f"{self.queue}.shards",
                f"{self.queue}.shards.unrouted",
                self.exchange,
                self.unrouted,
                f"{self.queue}.dlx",
                self.events,
                f"{self.backsync_queue}.dlx",
            ):
                channel.exchange_delete(exchange)
        finally:
            connection.close()

    # -- the workload and the faults ------------------------------------------------------

    def inject_faults_under_load(self) -> None:
        config = self.config
        self.workload.start()
        for share, step in config.schedule(self.rng):
            point = int(share * config.changes)
            self._wait_for_changes(point, f"{point} captured changes")
            if step.startswith("move "):
                self._move(step.removeprefix("move "))
            else:
                self._inject(step)
        self._wait_for_changes(config.changes, f"{config.changes} captured changes")
        self._settled()
        self._phase_lasted()
        self.workload.stop()
        self._check_alive()
        assert not self.workload.counts.errors, self.workload.counts.errors

    def _wait_for_changes(self, count: int, what: str) -> None:
        self.poll(
            lambda: self._note_settled() and self.store.captured_count() >= count,
            what,
            *self.pipeline,
            interval=0.25,
        )

    def _check_alive(self) -> None:
        for process in self.pipeline:
            process.assert_running()
        assert len(self.workload.counts.errors) == 0, self.workload.counts.errors

    # -- the write group's journey --------------------------------------------------------

    def _move(self, phase: str) -> None:
        """Once the previous move settled, move the write group (``routes set`` on one of
        its routes moves all four); the move settles while the run goes on."""
        mode = next(mode for _, mode, name in self.config.moves if name == phase)
        self._settled()
        self._phase_lasted()
        if mode != "legacy" and mode != "shadow":
            # the gate judges the group on decision parity: wait for its samples
            self.poll(
                lambda: self.store.decision_samples() >= MIN_DECISION_SAMPLES,
                f"{MIN_DECISION_SAMPLES} judged decisions before the move to {mode}",
                *self.pipeline,
            )
        if self.workload.phase == "shadow":
            self._judged_up_to(self.store.captured_count())
            self.parity_marks["shadow ended"] = self.store.decision_parity()
        self.workload.phase = f"-> {phase}"
        at, started = self.store.captured_count(), time.monotonic()
        # what `strangler routes set POST /allocate <mode>` does, without its start-up
        # (seconds on a busy machine): the faults pinned to a move follow it at once
        table = RouteTable(self.new_url, gate=CutoverGate())
        try:
            change = table.change("POST", "/allocate", mode, by="chaos", reason=phase)
        except RouteError as refused:
            raise AssertionError(
                f"the move to {mode} was refused: {refused}\n"
                + self._strangler("ownership", "violations").stdout
                + self._strangler("ownership", "anomalies").stdout
            ) from None
        finally:
            table.close()
        moved = change.ownership
        assert moved is not None and len(change.routes) == 4, change
        self.journey.append(
            {
                "phase": phase,
                "mode": mode,
                "at_changes": at,
                "epoch": moved.epoch,
                "state": str(moved.state),
                "set_at": started,
                "set_in_s": round(time.monotonic() - started, 2),
                "moved": ", ".join(f"{r.method} {r.pattern}" for r in change.routes),
            }
        )
        self.echo(
            f"  move {phase} ({mode}) at {at} captured changes, epoch {moved.epoch},"
            f" set in {self.journey[-1]['set_in_s']} s"
        )

    def _judged_up_to(self, captured: int) -> None:
        """Wait until the consumers applied (and so judged) the first ``captured``
        changes: the decisions legacy took in a phase are judged after it, by as much as
        the consumers lag (positions are dense, given in commit order)."""
        if self.config.shards:
            self.poll(
                lambda: self.store.routed_position() >= captured,
                f"the shard router to route the first {captured} changes",
                *self.pipeline,
            )
            routed = self.store.shard_positions()
            self.poll(
                lambda: self.store.shards_applied(routed),
                f"the shards to apply the first {captured} changes",
                *self.pipeline,
            )
        else:
            self.poll(
                lambda: self.store.applied_position() >= captured,
                f"the consumer to apply the first {captured} changes",
                *self.pipeline,
            )

    def _phase_lasted(self) -> None:
        """Wait until the phase of the last move had its share of the workload since it
        settled (``min_phase``)."""
        if self.journey:
            least = self.journey[-1]["settled_at_changes"] + int(
                self.config.min_phase * self.config.changes
            )
            ends = self.journey[-1]["phase"]
            self._wait_for_changes(least, f"{least} captured changes (the phase {ends} ends)")

    def _settled(self) -> None:
        """Wait until the group's last move is active (its fence came back through
        legacy)."""
        if self.journey:
            self.poll(
                lambda: self._note_settled(wait=True),
                f"the move to {self.journey[-1]['mode']} to settle (its fence back through legacy)",
                *self.pipeline,
            )

    def _note_settled(self, wait: bool = False) -> bool:
        """Note when the last move went active: the workload's writes from then on count
        in its phase. True, unless ``wait`` and the move is still under way."""
        last = self.journey[-1] if self.journey else None
        if last is None or "settled_after_s" in last:
            return True
        if self.store.ownership()["state"] != "active":
            return not wait
        last["settled_after_s"] = round(time.monotonic() - last.pop("set_at"), 2)
        last["settled_at_changes"] = self.store.captured_count()
        self.workload.phase = last["phase"]
        if last["phase"] == "shadow":
            self.parity_marks["shadow started"] = self.store.decision_parity()
        return True

    def poll(
        self,
        condition: Callable[[], Any],
        what: str,
        *alive: Supervised,
        timeout: float | None = None,
        interval: float = 0.1,
    ) -> Any:
        """Poll ``condition`` until it is truthy; fail at once when one of ``alive`` has
        exited or the workload saw an error, and after ``timeout`` (the step timeout)."""
        deadline = time.monotonic() + (timeout or self.config.step_timeout)
        last_error: Exception | None = None
        while True:
            for process in alive:
                process.assert_running()
            assert not self.workload.counts.errors, self.workload.counts.errors
            try:
                if result := condition():
                    return result
            except Exception as error:  # noqa: BLE001 - a service may be down: poll again
                last_error = error
            assert time.monotonic() < deadline, f"timed out waiting for {what} ({last_error})"
            threading.Event().wait(interval)

    def start(self, process: Supervised) -> None:
        """Start ``process`` and wait until it says it is working (as a supervisor that
        restarts it would): faults are injected into a running pipeline."""
        process.start()
        self.poll(
            lambda: READY[process.name] in process.current_log(),
            f"the {process.name} to start",
            process,
        )

    def _inject(self, kind: str) -> None:
        at = self.store.captured_count()
        low, high = self.config.outage
        if kind == "kill_bridge":
            self._progressed("bridge", self.store.confirmed_position)
            self.bridge.kill()
            self.faults.record(kind, at, confirmed=self.store.confirmed_position())
            self.start(self.bridge)
            self.mark["bridge"] = self.store.confirmed_position()
        elif kind == "kill_consumer":
            self._progressed("consumer", self.store.applied_position)
            victim = (
                self.rng.choice(self._killable_consumers()) if self.config.shards else self.consumer
            )
            victim.kill()
            self.faults.record(kind, at, applied=self.store.applied_position(), process=victim.name)
            self.start(victim)
            self.mark["consumer"] = self.store.applied_position()
        elif kind == "kill_backsync":
            # mid-stream when the new system decides; while legacy owns every product
            # back-sync only acknowledges legacy's mirrored events (and a hand-back fence)
            if self.store.ownership()["rule"] not in ("legacy", "shadow"):
                self._progressed("backsync", self.store.backsync_written)
            waiting = self._depth(self.backsync_queue)
            self.backsync.kill()
            self.faults.record(
                kind,
                at,
                written=self.store.backsync_written(),
                queued=waiting,
                group=self.workload.phase,
            )
            self.start(self.backsync)
            self.mark["backsync"] = self.store.backsync_written()
        elif kind == "broker_restart" and self.config.shards:
            outage = round(self.rng.uniform(low, high), 2)
            node = 1 + self.faults.counts[kind] % 3  # the nodes in turn
            faults.node_loss(CLUSTER_SCRIPT, node, outage)
            self.faults.record(kind, at, outage_s=outage, node=node)
        elif kind == "broker_restart":
            outage = round(self.rng.uniform(low, high), 2)
            faults.broker_restart(outage)
            self.faults.record(kind, at, outage_s=outage)
        elif kind == "pg_terminate":
            terminated = faults.pg_terminate(
                self.admin_dsn,
                [self.legacy_db, self.new_db],
                [faults.BRIDGE_APP, faults.CONSUMER_APP, faults.OUTBOX_APP, faults.BACKSYNC_APP],
            )
            self.faults.record(kind, at, backends=terminated)
        elif kind == "new_db_outage":
            outage = round(self.rng.uniform(low, high), 2)
            faults.new_db_outage(self.admin_dsn, self.new_db, outage)
            self.faults.record(kind, at, outage_s=outage)
        elif kind == "poison":
            first = len(self.poison_ids)
            messages = faults.poison_messages(
                self.config.seed, first, self.config.poison_per_round, self._stream()
            )
            faults.publish(self.amqp_url, self.exchange, messages)
            self.poison_ids.update(m.message_id for m in messages)
            self.faults.record(kind, at, messages=len(messages))
        elif kind == "bad_paths":
            n = len(self.facade_rounds)
            orderids = [f"chaos-none-{n}-{k}" for k in range(self.config.requests_per_round)]
            done = self._facade_round(orderids, f"o{n}")
            self.faults.record(
                kind, at, bad=done.bad, refused=done.bad_refused, good=len(done.good)
            )
        else:
            raise ValueError(f"unknown fault {kind}")
        self.echo(f"  fault {kind} at {at} captured changes")

    def _killable_consumers(self) -> list[Supervised]:
        """The consumer, or with shards the consumers and the router."""
        return [*self.consumers, self.router] if self.config.shards else [self.consumer]

    def _applied_everything(self, last: int) -> bool:
        """The consumer applied up to ``last``; with shards: the router routed up to it and
        every shard applied what it was routed."""
        if not self.config.shards:
            return self.store.applied_position() >= last
        return self.store.routed_position() >= last and self.store.shards_caught_up()

    def _queues(self) -> list[str]:
        shards = [
            f"{self.queue}.shard-{k}-of-{self.config.shards}" for k in range(self.config.shards)
        ]
        return [self.queue, *shards]

    def _facade_round(self, orderids: list[str], tag: str) -> FacadeRound:
        """Bad and good requests to the facade (``faults.facade_round``), then wait until
        the facade recorded a shadow result for every good one: a later fault (the new
        database's outage) must not catch them still queued."""
        done = faults.facade_round(self.facade_http, self.facade_port, orderids, tag)
        self.facade_rounds.append(done)
        sent = {path for r in self.facade_rounds for path in r.good}
        self.poll(
            lambda: sent <= {path for path, _ in self.store.shadow_results()},
            "the facade's shadow results of the good requests",
            self.facade,
        )
        return done

    def _stream(self) -> tuple[str, str, str]:
        """The bridge's stream identity (server name, database, install id), for a forger."""
        dsn = f"host={PG_HOST} port={PG_PORT} user={PG_USER} dbname={self.legacy_db}"
        with psycopg.connect(dsn) as conn:
            row = conn.execute(
                "SELECT server_name, install_id FROM strangler_relay_state"
            ).fetchone()
        assert row is not None, "the bridge is installed before any fault"
        return str(row[0]), self.legacy_db, str(row[1])

    def _progressed(self, name: str, position: Callable[[], int]) -> None:
        """Wait until ``name`` has moved past its mark (it is working mid-stream)."""
        mark = self.mark[name]
        process = {"bridge": self.bridge, "consumer": self.consumer, "backsync": self.backsync}[
            name
        ]
        self.poll(lambda: position() > mark, f"the {name} to make progress past {mark}", process)

    # -- drain and oracle -----------------------------------------------------------------

    def drain_and_judge(self) -> tuple[Verdict, WriteVerdict]:
        alive = self.pipeline
        # every decision of the new system published and written into legacy ...
        self.poll(self._decisions_in_legacy, "back-sync to write every decision", *alive)
        # ... captured (the echoes too), relayed and applied ...
        last = self.poll(self.store.relay_done, "the relay to publish everything", *alive)
        self.poll(
            lambda: self._applied_everything(last),
            f"the consumer to apply up to position {last}",
            *alive,
        )
        # ... and the events the consumer raised for legacy's own changes published
        self.poll(lambda: self.store.outbox_backlog() == 0, "the outbox relay", *alive)
        self.poll(
            lambda: self._depth(f"{self.queue}.dlq") >= len(self.poison_ids),
            "the poison to reach the dead-letter queue",
            *alive,
        )
        self._check_alive()

        verdict, writes = Verdict(), WriteVerdict()
        assert self.bridge.stop() == 0, self.bridge.log()  # no more heartbeats after this
        node = "strangler-1@localhost" if self.config.shards else None
        try:
            self.poll(
                lambda: all(queue_counts(q, node) == (0, 0) for q in self._queues()),
                "the consumer's queues to hold nothing ready or unacknowledged",
                *self._killable_consumers(),
                timeout=60,
            )
        finally:
            counts = [queue_counts(q, node) for q in self._queues()]
            verdict.queue_ready = sum(ready for ready, _ in counts)
            verdict.queue_unacked = sum(unacked for _, unacked in counts)
        for process in self._killable_consumers():
            assert process.stop() == 0, process.log()
        assert self.outbox.stop() == 0, self.outbox.log()
        try:
            self.poll(
                lambda: queue_counts(self.backsync_queue, node) == (0, 0),
                "back-sync's queue to hold nothing ready or unacknowledged",
                self.backsync,
                timeout=60,
            )
        finally:
            backsync_queue = queue_counts(self.backsync_queue, node)
        assert self.backsync.stop() == 0, self.backsync.log()
        verdict.unrouted = self._depth(self.unrouted)
        applied = (
            self.store.routed_position() if self.config.shards else self.store.applied_position()
        )
        judge_changes(verdict, self.store, drain(self.amqp_url, self.audit), applied)
        judge_dead_letters(verdict, self.poison_ids, drain(self.amqp_url, f"{self.queue}.dlq"))
        backsync_dlq = drain(self.amqp_url, dead_letter_queue(self.backsync_queue))
        judge_backsync(writes, self.store, self.backsync_queue, backsync_dlq, backsync_queue)
        judge_ownership(writes, self.store)
        judge_ledger(writes, self.store, self.workload.ledger)
        judge_databases(writes, self._strangler("verify", "--databases", "--show", "20"))
        http_verify = self._strangler("verify", "--legacy-url", self.legacy_http, "--show", "20")
        judge_verify(verdict, http_verify)
        # after the drain new equals legacy: a round on real orders must match all through
        orders = self.store.order_ids()
        sample = sorted(self.rng.sample(orders, min(len(orders), self.config.requests_per_round)))
        self._facade_round(sample, "after")
        self.facade.assert_running()
        judge_facade(
            verdict,
            self.facade_rounds,
            self.store.shadow_results(),
            self.facade.log_path.read_text(errors="backslashreplace"),
        )
        return verdict, writes

    def _decisions_in_legacy(self) -> bool:
        """Nothing left in the outbox, nothing waiting in back-sync's queue, and as many
        decisions written into legacy as the new system took."""
        return (
            self.store.outbox_backlog() == 0
            and self._depth(self.backsync_queue) == 0
            and self.store.backsync_decisions() >= self.store.decisions_taken()
        )

    def _strangler(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [STRANGLER, *args],
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            timeout=1800,
        )

    def summary(self, verdict: Verdict, writes: WriteVerdict, duration: float) -> dict[str, Any]:
        kills = ("kill_bridge", "kill_consumer", "kill_backsync")
        return {
            "mode": self.config.mode,
            "seed": self.config.seed,
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "machine": f"{os.uname().sysname} {os.uname().machine}, {os.cpu_count()} cores",
            "duration_s": round(duration, 1),
            "config": asdict(self.config),
            "workload": self.workload.counts.as_dict(),
            "ledger": self.workload.ledger.as_dict(),
            "journey": self.journey,
            "faults": dict(sorted(self.faults.counts.items())),
            "process_kills": sum(self.faults.counts[kind] for kind in kills),
            "fault_events": self.faults.events,
            "verdict": verdict.as_dict(),
            "writes": writes.as_dict(),
            "decision_parity": self.store.decision_parity(),
            "decision_parity_shadow": parity_between(
                self.parity_marks.get("shadow started", {}),
                self.parity_marks.get("shadow ended", {}),
            ),
            "decision_differences": self.store.decision_differences(),
        }
