"""One chaos run: the whole pipeline as real processes, a workload, faults, the oracle.

PostgreSQL holds the legacy shop's database and the new domain's; RabbitMQ carries the
run's own ``legacy.cdc`` exchange (uniquely named, so runs on one broker never see each
other's messages) to the consumer's queue and to an audit queue bound with ``#``. The
facade (``strangler serve``) runs in front of the shop with ``GET /allocations/<orderid>``
in shadow mode, its route table and shadow results in the new database.
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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pika
import psycopg
import requests
from sqlalchemy.engine import make_url

import broker
from broker import QueueSpec
from examples.legacy_shop import TABLES
from skeleton_app import Mode, RouteTable
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
from tests.e2e.processes import STRANGLER, free_port, port_open, run_cli
from tests.services import PG_HOST, PG_PORT, PG_USER, postgres_database, unique_name


@dataclass(frozen=True)
class ChaosConfig:
    """Sizes of one run. ``changes``: captured changes the workload writes at least."""

    mode: str
    seed: int
    changes: int
    kill_bridge: int
    kill_consumer: int
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

    def plan(self) -> list[str]:
        """The faults of the run, in a seeded random order."""
        kinds = [kind for kind in faults.KINDS for _ in range(getattr(self, kind))]
        random.Random(self.seed).shuffle(kinds)
        return kinds


READY = {"bridge": "relaying captured changes", "consumer": "consuming "}
"""What a process logs once it works (after its start-up checks)."""

BOUNDED = ChaosConfig(
    mode="bounded",
    seed=0,
    changes=3000,
    kill_bridge=2,
    kill_consumer=2,
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
    broker_restart=4,
    pg_terminate=6,
    new_db_outage=4,
    poison=6,
    bad_paths=6,
)


def run(config: ChaosConfig, workdir: Path, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Run once; the summary (also written to ``workdir/summary.json``)."""
    echo(f"chaos run: mode {config.mode}, seed {config.seed}, logs in {workdir}")
    started = time.monotonic()
    with ExitStack() as stack:
        legacy_url = stack.enter_context(postgres_database("chaos_legacy"))
        new_url = stack.enter_context(postgres_database("chaos_new"))
        run_ = stack.enter_context(_Run(config, workdir, legacy_url, new_url, echo).started())
        run_.inject_faults_under_load()
        verdict = run_.drain_and_judge()
        summary = run_.summary(verdict, time.monotonic() - started)
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
        self.legacy_url, self.new_url = legacy_url, new_url
        self.legacy_db = make_url(legacy_url).database or ""
        self.new_db = make_url(new_url).database or ""
        self.admin_dsn = f"host={PG_HOST} port={PG_PORT} user={PG_USER} dbname=postgres"
        self.exchange = unique_name("chaos_cdc")
        self.events = unique_name("chaos_events")
        self.queue = unique_name("chaos_q")
        self.audit = unique_name("chaos_audit")
        self.store = Store(legacy_url, new_url)
        self.faults = FaultLog()
        self.poison_ids: set[str] = set()
        self.legacy_port = free_port()
        self.legacy_http = f"http://127.0.0.1:{self.legacy_port}"
        self.workload = Workload(self.legacy_http, config.seed, threads=config.threads)
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
        self.consumer = Supervised(
            "consumer",
            [
                "consume",
                "--queue",
                self.queue,
                "--exchange",
                self.exchange,
                "--events-exchange",
                self.events,
                "--max-attempts",
                "3",
            ],
            {
                "NEW_DB_URL": with_application_name(new_url, faults.CONSUMER_APP),
                "BROKER_URL": self.amqp_url,
            },
            logs,
        )
        self.facade_port = free_port()
        self.facade_http = f"http://127.0.0.1:{self.facade_port}"
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
                # and a tripped guard compares nothing; this facade is here for the bad
                # paths and the shadow results, so its guard never trips
                "--max-lag",
                "86400",
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
        self.mark = {"bridge": 0, "consumer": 0}

    # -- setup and teardown ---------------------------------------------------------------

    @contextmanager
    def started(self) -> Iterator[_Run]:
        try:
            self.shop.start()
            self.poll(lambda: port_open(self.legacy_port), "the legacy shop", self.shop)
            env = {"LEGACY_DB_URL": self.legacy_url, "NEW_DB_URL": self.new_url}
            run_cli("bridge", "install", "--tables", ",".join(TABLES), env=env)
            run_cli("db", "upgrade", env=env)
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
            self.start(self.consumer)
            self.poll(lambda: self._depth(self.queue) >= 0, "the consumer's queue")
            self.start(self.bridge)
            self.workload.stock()
            yield self
        finally:
            self.workload.stop()
            for process in (self.facade, self.consumer, self.bridge, self.shop):
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
            connection = pika.BlockingConnection(pika.URLParameters(self.amqp_url))
        except pika.exceptions.AMQPError:
            return
        try:
            channel = connection.channel()
            for queue in (self.queue, f"{self.queue}.dlq", self.audit, self.unrouted):
                channel.queue_delete(queue)
            for exchange in (self.exchange, self.unrouted, f"{self.queue}.dlx", self.events):
                channel.exchange_delete(exchange)
        finally:
            connection.close()

    # -- the workload and the faults ------------------------------------------------------

    def inject_faults_under_load(self) -> None:
        config = self.config
        plan = config.plan()
        points = sorted(self.rng.uniform(0.05, 0.9) * config.changes for _ in plan)
        self.workload.start()
        for point, kind in zip(points, plan, strict=True):
            self._wait_for_changes(int(point), f"{int(point)} captured changes")
            self._inject(kind)
        self._wait_for_changes(config.changes, f"{config.changes} captured changes")
        self.workload.stop()
        self._check_alive()
        assert not self.workload.counts.errors, self.workload.counts.errors

    def _wait_for_changes(self, count: int, what: str) -> None:
        self.poll(
            lambda: self.store.captured_count() >= count,
            what,
            self.shop,
            self.bridge,
            self.consumer,
            self.facade,
            interval=0.25,
        )

    def _check_alive(self) -> None:
        for process in (self.shop, self.bridge, self.consumer, self.facade):
            process.assert_running()
        assert len(self.workload.counts.errors) == 0, self.workload.counts.errors

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
            self.consumer.kill()
            self.faults.record(kind, at, applied=self.store.applied_position())
            self.start(self.consumer)
            self.mark["consumer"] = self.store.applied_position()
        elif kind == "broker_restart":
            outage = round(self.rng.uniform(low, high), 2)
            faults.broker_restart(outage)
            self.faults.record(kind, at, outage_s=outage)
        elif kind == "pg_terminate":
            terminated = faults.pg_terminate(
                self.admin_dsn,
                [self.legacy_db, self.new_db],
                [faults.BRIDGE_APP, faults.CONSUMER_APP],
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
        process = self.bridge if name == "bridge" else self.consumer
        self.poll(lambda: position() > mark, f"the {name} to make progress past {mark}", process)

    # -- drain and oracle -----------------------------------------------------------------

    def drain_and_judge(self) -> Verdict:
        both = (self.bridge, self.consumer)
        last = self.poll(self.store.relay_done, "the relay to publish everything", *both)
        self.poll(
            lambda: self.store.applied_position() >= last,
            f"the consumer to apply up to position {last}",
            *both,
        )
        self.poll(lambda: self.store.outbox_backlog() == 0, "the outbox relay", *both)
        self.poll(
            lambda: self._depth(f"{self.queue}.dlq") >= len(self.poison_ids),
            "the poison to reach the dead-letter queue",
            *both,
        )
        self._check_alive()

        verdict = Verdict()
        assert self.bridge.stop() == 0, self.bridge.log()  # no more heartbeats after this
        try:
            self.poll(
                lambda: queue_counts(self.queue) == (0, 0),
                "the consumer's queue to hold nothing ready or unacknowledged",
                self.consumer,
                timeout=60,
            )
        finally:
            verdict.queue_ready, verdict.queue_unacked = queue_counts(self.queue)
        assert self.consumer.stop() == 0, self.consumer.log()
        verdict.unrouted = self._depth(self.unrouted)
        applied = self.store.applied_position()
        judge_changes(verdict, self.store, drain(self.amqp_url, self.audit), applied)
        judge_dead_letters(verdict, self.poison_ids, drain(self.amqp_url, f"{self.queue}.dlq"))
        result = subprocess.run(
            [STRANGLER, "verify", "--legacy-url", self.legacy_http, "--show", "20"],
            env={**os.environ, "LEGACY_DB_URL": self.legacy_url, "NEW_DB_URL": self.new_url},
            capture_output=True,
            text=True,
            timeout=1800,
        )
        judge_verify(verdict, result)
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
        return verdict

    def summary(self, verdict: Verdict, duration: float) -> dict[str, Any]:
        return {
            "mode": self.config.mode,
            "seed": self.config.seed,
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "machine": f"{os.uname().sysname} {os.uname().machine}, {os.cpu_count()} cores",
            "duration_s": round(duration, 1),
            "config": asdict(self.config),
            "workload": self.workload.counts.as_dict(),
            "faults": dict(sorted(self.faults.counts.items())),
            "process_kills": self.faults.counts["kill_bridge"]
            + self.faults.counts["kill_consumer"],
            "fault_events": self.faults.events,
            "verdict": verdict.as_dict(),
            "decision_parity": self.store.decision_parity(),
            "decision_differences": self.store.decision_differences(),
        }


def markdown(summary: dict[str, Any]) -> str:
    """The summary as a Markdown table (for docs/reliability.md)."""
    v, w = summary["verdict"], summary["workload"]
    rows = [
        ("date", summary["date"]),
        ("machine", summary["machine"]),
        ("mode / seed", f"{summary['mode']} / {summary['seed']}"),
        ("duration", f"{summary['duration_s']} s"),
        (
            "HTTP requests to legacy",
            f"{w['requests']:,}: " + ", ".join(f"{k} {n:,}" for k, n in w["by_kind"].items()),
        ),
        ("cuts that made legacy reallocate", f"{w['reallocating_cuts']:,}"),
        (
            "changes captured",
            f"{v['captured']:,}: "
            + ", ".join(f"{k} {n:,}" for k, n in v["captured_by_kind"].items()),
        ),
        (
            "changes published (distinct / deliveries)",
            f"{v['published']:,} / {v['deliveries_to_audit']:,}",
        ),
        ("changes applied", f"{v['applied']:,}"),
        (
            "domain events expected / recorded",
            f"{v['effects_expected']:,} / {v['effects_recorded']:,}",
        ),
        ("faults", ", ".join(f"{k} {n}" for k, n in summary["faults"].items())),
        ("process kills", str(summary["process_kills"])),
        (
            "poison injected / dead-lettered (of them again) / other dead letters",
            f"{v['poison_injected']} / {v['dead_lettered']} ({v['dead_letter_duplicates']})"
            f" / {v['dead_letters_unexpected']}",
        ),
        (
            "left in the consumer's queue (ready / unacked)",
            f"{v['queue_ready']} / {v['queue_unacked']}",
        ),
        (
            "facade: bad paths refused with JSON / sent; good requests answered / sent",
            f"{v['facade_bad_refused']} / {v['facade_bad_requests']};"
            f" {v['facade_good_answered']} / {v['facade_good_requests']}",
        ),
        (
            "facade: shadow results matching / recorded (unexpected, missing)",
            f"{v['facade_shadow_matching']} / {v['facade_shadow_recorded']}"
            f" ({v['facade_shadow_unexpected']}, {v['facade_shadow_missing']})",
        ),
        ("**lost**", f"**{v['lost']}**"),
        ("**double-applied**", f"**{v['double_applied']}**"),
        (
            "**parity**",
            f"**{v['parity']}%** ({v['orders_matching']:,} of {v['orders_checked']:,} orders)",
        ),
        (
            "decision parity (agree of judged)",
            "; ".join(
                f"{route} {p['percent']}% ({p['agree']:,} of {p['agree'] + p['differ']:,})"
                if route != "unclassified"
                else f"unclassified transactions {p['differ']:,}"
                for route, p in summary.get("decision_parity", {}).items()
            ),
        ),
    ]
    lines = ["| | |", "|---|---|"] + [f"| {k} | {val} |" for k, val in rows]
    return "\n".join(lines)


def assert_clean(summary: dict[str, Any]) -> None:
    """The run's promises: nothing lost, nothing applied twice, full parity, only the
    poison dead-lettered, nothing left in the queue, every planned fault injected."""
    v, config = summary["verdict"], summary["config"]
    planned = {k: config[k] for k in faults.KINDS if config[k]}
    promises = {
        "nothing lost": v["lost"] == 0,
        "nothing applied twice": v["double_applied"] == 0,
        "nothing published that was not captured": v["phantom_published"] == 0,
        "every order matches legacy": v["verify_exit"] == 0 and v["parity"] == 100.0,
        "the workload's size": v["captured"] >= config["changes"],
        "captured = published = applied": v["applied"] == v["captured"] == v["published"],
        "one domain event per effect": v["effects_recorded"] == v["effects_expected"],
        "the poison, and only it, dead-lettered": v["poison_injected"] > 0
        and v["dead_letters_unexpected"] == 0
        and v["poison_missing"] == 0,
        "nothing left in the queues": (v["queue_ready"], v["queue_unacked"], v["unrouted"])
        == (0, 0, 0),
        "every planned fault injected": summary["faults"] == planned,
        "the facade refused every bad path with a JSON error and answered every good one": 0
        < v["facade_bad_refused"]
        == v["facade_bad_requests"]
        and 0 < v["facade_good_answered"] == v["facade_good_requests"],
        "the facade's shadow results: one per good request, all matching, none for a bad one": v[
            "facade_shadow_matching"
        ]
        == v["facade_shadow_recorded"]
        == v["facade_good_requests"]
        and (v["facade_shadow_unexpected"], v["facade_shadow_missing"]) == (0, 0),
        "the facade's log: no traceback, no raw NUL or escape, one line per refused path": v[
            "facade_log_problems"
        ]
        == 0,
    }
    broken = [promise for promise, kept in promises.items() if not kept]
    assert not broken, (
        f"seed {summary['seed']}: broken: {', '.join(broken)}; faults {summary['faults']};"
        f" verdict {v}"
    )
