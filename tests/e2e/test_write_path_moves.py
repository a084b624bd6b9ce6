"""The write group's whole journey with real processes on PostgreSQL and RabbitMQ.

Clients write concurrently through the facade while the group ``allocation`` goes
legacy -> shadow -> canary 30 -> new -> legacy (a hand-back) -> new. At the end both
databases agree (``strangler verify --databases`` exits 0), legacy's own
``GET /batches/<ref>`` agrees with the new system for every batch, and no accepted write
is lost, applied twice, or over-allocated, in either database.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import create_engine, text

from examples.legacy_shop import TABLES
from tests.e2e.processes import free_port, port_open, processes, run_cli, wait_for
from tests.e2e.test_runbooks import rabbitmq_vhost

pytestmark = [pytest.mark.e2e, pytest.mark.postgres, pytest.mark.rabbitmq]

SKUS = [f"SKU-{n}" for n in range(8)]
WRITERS = 4
TOKEN = "e2e-write-token"


@dataclass
class Ledger:
    """What the clients were told: every accepted write, per writer."""

    allocated: dict[str, tuple[str, str]] = field(default_factory=dict)  # order -> (sku, batch)
    deallocated: set[str] = field(default_factory=set)
    allocated_how: dict[str, tuple[str, str]] = field(default_factory=dict)  # (phase, side)
    batches: dict[str, tuple[str, int]] = field(default_factory=dict)  # ref -> (sku, qty)
    served_by: dict[str, set[str]] = field(default_factory=dict)  # phase -> {legacy, new}
    refused: int = 0
    examples: dict[tuple[str, str], str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def note(self, phase: str, served_by: str, what: str) -> None:
        with self.lock:
            self.served_by.setdefault(phase, set()).add(served_by)
            self.examples.setdefault((phase, served_by), what)


class Writers:
    """Threads writing through the facade; each op retried while the product changes
    hands (503 with Retry-After)."""

    def __init__(self, facade: str, ledger: Ledger) -> None:
        self.facade = facade
        self.ledger = ledger
        self.phase = "legacy"
        self.done: dict[str, int] = {}
        self.stop = threading.Event()
        self.errors: list[str] = []
        self.threads = [
            threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(WRITERS)
        ]

    def __enter__(self) -> Writers:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=60)

    def writes_in(self, phase: str) -> int:
        return self.done.get(phase, 0)

    def _run(self, writer: int) -> None:
        rng = random.Random(writer)
        http = requests.Session()
        mine: list[str] = []
        count = 0
        while not self.stop.is_set():
            count += 1
            try:
                self._one(http, rng, writer, count, mine)
            except Exception as error:  # noqa: BLE001 - reported by the test
                self.errors.append(f"writer {writer}: {error!r}")
                return

    def _call(self, http: requests.Session, method: str, path: str, body: Any) -> requests.Response:
        while True:
            phase = self.phase
            response = http.request(method, self.facade + path, json=body, timeout=30)
            if response.status_code != 503:
                served_by = response.headers.get("X-Served-By", "?")
                self.ledger.note(phase, served_by, f"{method} {path} {body} {response.text}")
                return response
            assert response.headers.get("Retry-After"), response.text
            assert response.json()["error"] == "service unavailable", response.text
            with self.ledger.lock:
                self.ledger.refused += 1
            time.sleep(0.05)  # a client honouring Retry-After, shortened

    def _one(
        self, http: requests.Session, rng: random.Random, writer: int, n: int, mine: list[str]
    ) -> None:
        phase = self.phase
        roll = rng.random()
        if roll < 0.1:
            ref, sku, qty = f"b-{writer}-{n}", rng.choice(SKUS), rng.randint(5, 20)
            answer = self._call(
                http, "POST", "/batches", {"ref": ref, "sku": sku, "qty": qty, "eta": None}
            )
            assert answer.status_code == 201, answer.text
            with self.ledger.lock:
                self.ledger.batches[ref] = (sku, qty)
        elif roll < 0.25 and mine:
            orderid = mine.pop(rng.randrange(len(mine)))
            sku = self.ledger.allocated[orderid][0]
            answer = self._call(http, "POST", "/deallocate", {"orderid": orderid, "sku": sku})
            assert answer.status_code == 200, (
                f"{answer.text} from {answer.headers.get('X-Served-By')} in phase {phase}; "
                f"allocated in {self.ledger.allocated_how.get(orderid)}"
            )
            assert answer.json()["batchref"] == self.ledger.allocated[orderid][1]
            with self.ledger.lock:
                self.ledger.deallocated.add(orderid)
        else:
            orderid, sku = f"o-{writer}-{n}", rng.choice(SKUS)
            answer = self._call(
                http,
                "POST",
                "/allocate",
                {"orderid": orderid, "sku": sku, "qty": rng.randint(1, 3)},
            )
            assert answer.status_code in (201, 409), answer.text
            if answer.status_code == 201:
                with self.ledger.lock:
                    self.ledger.allocated[orderid] = (sku, answer.json()["batchref"])
                    self.ledger.allocated_how[orderid] = (phase, answer.headers["X-Served-By"])
                mine.append(orderid)
        with self.ledger.lock:
            self.done[phase] = self.done.get(phase, 0) + 1


def _listed(env: dict[str, str]) -> dict[str, Any]:
    return dict(json.loads(run_cli("routes", "list", "--json", env=env).stdout))


def _ownership(env: dict[str, str]) -> dict[str, Any]:
    return dict(_listed(env)["groups"]["allocation"]["ownership"])


def _decision_samples(env: dict[str, str]) -> int:
    parity = _listed(env)["decision_parity"]
    return sum(v["samples"] for k, v in parity.items() if k != "unclassified")


def _move(env: dict[str, str], writers: Writers, mode: str, reason: str, phase: str = "") -> None:
    """Move the group to ``mode``; the writes that start once the move settled count as
    phase ``phase`` (default: the mode), those that start while it moves as ``-> mode``."""
    writers.phase = f"-> {mode}"
    move = ("routes", "set", "POST", "/allocate", *mode.split(), "--reason", reason)
    result = run_cli(*move, env=env, check=False)
    # a refused move shows the gate's evidence: each decision the new rules took otherwise
    assert result.returncode == 0, (
        f"the move to {mode} failed: {result.stderr}\n"
        + run_cli("decisions", "list", "--limit", "20", env=env).stdout
    )
    for route in ("POST /batches", "PATCH /batches/<ref>", "POST /allocate", "POST /deallocate"):
        assert route in result.stdout, result.stdout
    wait_for(
        lambda: _ownership(env)["state"] == "active",
        90,
        f"the move to {mode} to settle (its fence back through legacy)",
        interval=0.2,
    )
    writers.phase = phase or mode
    wait_for(
        lambda: writers.writes_in(phase or mode) >= 40, 120, f"40 writes on {mode}", interval=0.2
    )


@pytest.fixture
def vhost_url(amqp_url: str) -> Iterator[str]:
    with rabbitmq_vhost(amqp_url) as url:
        yield url


def test_the_write_group_moves_and_hands_back_without_losing_a_write(
    pg_url_factory, vhost_url: str, tmp_path: Path
) -> None:
    legacy_db, new_db = pg_url_factory(), pg_url_factory()
    legacy_port, facade_port = free_port(), free_port()
    legacy, facade = f"http://127.0.0.1:{legacy_port}", f"http://127.0.0.1:{facade_port}"
    env = {
        "LEGACY_DB_URL": legacy_db,
        "NEW_DB_URL": new_db,
        "BROKER_URL": vhost_url,
        "LEGACY_URL": legacy,
        "ADMIN_TOKEN": TOKEN,
        "USER": "e2e",
    }
    ledger = Ledger()
    with processes(tmp_path, env) as procs:
        procs.start("legacy", "legacy", "serve", "--port", str(legacy_port))
        wait_for(lambda: port_open(legacy_port), 30, "the legacy shop")
        run_cli("bridge", "install", "--tables", ",".join(TABLES), env=env)
        run_cli("db", "upgrade", env=env)
        run_cli("backsync", "install", env=env)
        procs.start("consumer", "consume")
        # the queue first: what the bridge publishes before it is bound is not the consumer's
        wait_for(
            lambda: "consuming new_domain.legacy_cdc" in procs.log("consumer"),
            60,
            "the consumer's queue",
        )
        procs.start("bridge", "bridge", "run", "--heartbeat-interval", "0.5")
        procs.start("outbox", "outbox", "relay")
        procs.start("backsync", "backsync", "run", "--settle", "1")
        procs.start(
            "facade",
            "serve",
            "--port",
            str(facade_port),
            "--workers",
            "2",
            "--refresh-interval",
            "0.2",
            "--max-lag",
            "600",
        )
        wait_for(lambda: port_open(facade_port), 30, "the facade")
        http = requests.Session()
        for sku in SKUS:
            for ref, qty in ((f"wh-{sku}", 200), (f"ship-{sku}", 300)):
                body = {
                    "ref": ref,
                    "sku": sku,
                    "qty": qty,
                    "eta": None if ref.startswith("wh") else "2027-03-01",
                }
                assert http.post(f"{facade}/batches", json=body, timeout=10).status_code == 201
                ledger.batches[ref] = (sku, qty)

        with Writers(facade, ledger) as writers:
            wait_for(lambda: writers.writes_in("legacy") >= 40, 120, "40 writes on legacy")
            _move(env, writers, "shadow", "judge legacy's decisions")
            wait_for(lambda: _decision_samples(env) >= 30, 120, "decision samples")
            _move(env, writers, "canary 30", "a third of the products")
            _move(env, writers, "new", "every product")
            _move(env, writers, "legacy", "hand-back drill")
            _move(env, writers, "new", "forward again", phase="new again")
        procs.assert_running()
        assert not writers.errors, _explained(writers.errors, legacy_db, new_db)
        assert ledger.served_by["canary 30"] == {"legacy", "new"}
        for phase in ("new", "new again"):
            assert ledger.served_by[phase] == {"new"}, ledger.examples.get((phase, "legacy"))
        assert ledger.served_by["legacy"] == {"legacy"}
        assert ledger.refused > 0  # products changing hands waited

        def verified() -> bool:
            return run_cli("verify", "--databases", env=env, check=False).returncode == 0

        wait_for(verified, 120, "strangler verify to find both databases equal", interval=1)
        _check_ledger(ledger, legacy_db, new_db)
        _check_legacy_batches_agree(http, legacy, new_db)


def _check_ledger(ledger: Ledger, legacy_db: str, new_db: str) -> None:
    """Every accepted allocation is in both databases in the batch the client was told,
    every accepted deallocation is gone from both, no batch is over-allocated."""
    legacy_sql = """
        SELECT l.order_no, p.prod_code, s.lot_ref
        FROM cust_order_line l JOIN prod_catalog p ON p.prod_id = l.prod_id
        JOIN lot_allocation a ON a.line_id = l.line_id JOIN stock_lot s ON s.lot_id = a.lot_id"""
    new_sql = "SELECT orderid, sku, batchref FROM batch_allocations"
    for url, sql in ((legacy_db, legacy_sql), (new_db, new_sql)):
        engine = create_engine(url)
        try:
            with engine.connect() as conn:
                rows = conn.execute(text(sql)).all()
                over = conn.execute(text(_OVER_ALLOCATED[url == legacy_db])).all()
        finally:
            engine.dispose()
        held: dict[tuple[str, str], list[str]] = {}
        for orderid, sku, batchref in rows:
            held.setdefault((orderid, sku), []).append(batchref)
        assert all(len(refs) == 1 for refs in held.values()), "an order line held twice"
        for orderid, (sku, batchref) in ledger.allocated.items():
            expected = [] if orderid in ledger.deallocated else [batchref]
            assert held.get((orderid, sku), []) == expected, (url, orderid)
        assert over == [], f"over-allocated batches: {over}"


_OVER_ALLOCATED = {
    True: """SELECT s.lot_ref FROM stock_lot s JOIN lot_allocation a ON a.lot_id = s.lot_id
             JOIN cust_order_line l ON l.line_id = a.line_id
             GROUP BY s.lot_ref, s.qty_units HAVING SUM(l.qty_units) > s.qty_units""",
    False: """SELECT b.reference FROM batches b
              JOIN batch_allocations a ON a.batchref = b.reference
              GROUP BY b.reference, b.purchased_quantity
              HAVING SUM(a.qty) > b.purchased_quantity""",
}


def _check_legacy_batches_agree(http: requests.Session, legacy: str, new_db: str) -> None:
    """Legacy's own GET /batches/<ref> answers what the new system holds, for every batch."""
    engine = create_engine(new_db)
    try:
        with engine.connect() as conn:
            batches = conn.execute(
                text(
                    "SELECT b.reference, b.sku, b.purchased_quantity, COALESCE(SUM(a.qty), 0)"
                    " FROM batches b LEFT JOIN batch_allocations a ON a.batchref = b.reference"
                    " GROUP BY b.reference, b.sku, b.purchased_quantity"
                )
            ).all()
    finally:
        engine.dispose()
    assert len(batches) >= 2 * len(SKUS)
    for ref, sku, qty, allocated in batches:
        answer = http.get(f"{legacy}/batches/{ref}", timeout=10)
        assert answer.status_code == 200, (ref, answer.text)
        body = answer.json()
        assert (body["sku"], body["qty"], body["allocated"], body["available"]) == (
            sku,
            qty,
            allocated,
            qty - allocated,
        ), ref


def _explained(errors: list[str], legacy_db: str, new_db: str) -> str:
    """The writers' errors in full, with what each database holds about their orders and
    what the guard recorded (pytest would cut a long assertion message)."""
    lines = list(errors)
    queries = {
        legacy_db: "SELECT l.order_no, l.prod_id, a.lot_id FROM cust_order_line l"
        " LEFT JOIN lot_allocation a ON a.line_id = l.line_id WHERE l.order_no = :o",
        new_db: "SELECT orderid, sku, batchref FROM batch_allocations WHERE orderid = :o",
    }
    for url, sql in queries.items():
        engine = create_engine(url)
        try:
            with engine.connect() as conn:
                for order in {
                    w for e in errors for w in e.replace("'", " ").split() if w.startswith("o-")
                }:
                    held = conn.execute(text(sql), {"o": order}).all()
                    lines.append(f"{url.rsplit('/', 1)[-1]} {order}: {held}")
                if url == new_db:
                    for table in ("ownership_violation", "echo_anomaly", "dead_letter"):
                        try:
                            rows = conn.execute(text(f"SELECT * FROM {table}")).all()
                        except Exception as exc:  # noqa: BLE001 - a diagnosis
                            rows = [repr(exc)[:200]]
                        lines.append(f"{table}: {rows[:20]}")
        finally:
            engine.dispose()
    print("\n".join(lines))
    return "\n".join(lines)
