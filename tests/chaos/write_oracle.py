"""The write path's oracle: what both databases must show once the run drained, for the
writes the workload was told succeeded and for the decisions the new system took.

Definitions (see docs/reliability.md, *The write path*):

- **decisions**: the new system's decisions, the distinct ``decision.id`` of the events in
  the new database's outbox. Each must be in legacy exactly once: one origin marker of
  kind ``decision`` (``strangler_origin``) and one ``strangler_backsync_applied`` row.
  **lost** = decisions without their marker; **doubled** = markers beyond one per
  decision, and markers of no decision.
- **fences**: every ``OwnershipMoved`` event (a move whose products changed hands) has
  exactly one fence marker of its epoch in legacy.
- **the ledger** (``workload.Ledger``), held against each database: an accepted
  allocation is held by its order in the batch it was answered, unless the order was
  deallocated (then it is held nowhere) or a quantity cut the workload made moved it (the
  cut's answer says where: a batch or nowhere; a line moved by two cuts may be anywhere);
  an allocation refused as out of stock is held nowhere; a write whose outcome is unknown
  (502, 504, or a cut of its batch with an unknown outcome) may be held or not; no order
  line is held twice; no allocation is held that nobody was told about; every batch
  created exists with its sku and its created quantity or one a PATCH set; no batch holds
  more than its quantity.
- **ownership**: no ownership violation, no echo anomaly (the consumer's tables).
- ``strangler verify --databases`` exits 0.
"""

from __future__ import annotations

import re
import statistics
import subprocess
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import text

import broker
from backsync.status import read_status
from tests.chaos.oracle import Store
from tests.chaos.workload import Ledger

_DATABASES_LINE = re.compile(
    r"compared (\d+) batches and (\d+) allocations in the legacy and new databases: (.*)"
)

ANY = object()
"""An order whose outcome the workload cannot know: held in one batch or in none."""


@dataclass
class WriteVerdict:
    decisions: int = 0
    decisions_by_route: dict[str, int] = field(default_factory=dict)
    decisions_incomplete: int = 0  # decisions whose events are not all in the outbox
    decisions_in_legacy: int = 0
    decisions_lost: int = 0
    decisions_doubled: int = 0
    decisions_unapplied: int = 0  # markers without their strangler_backsync_applied row
    moves_fenced: int = 0
    fences: int = 0
    fences_missing: int = 0
    fences_doubled: int = 0
    backsync_position: dict[str, Any] = field(default_factory=dict)
    relay_lag_s: dict[str, float] = field(default_factory=dict)  # new commit -> published
    backsync_lag_s: dict[str, float] = field(default_factory=dict)  # new -> legacy commit
    backsync_behind: dict[str, float] = field(default_factory=dict)  # see _behind
    backsync_dead_letters: int = 0
    backsync_queue_ready: int = 0
    backsync_queue_unacked: int = 0
    ownership_violations: int = 0
    echo_anomalies: int = 0
    ledger_orders: int = 0
    ledger: dict[str, dict[str, int]] = field(default_factory=dict)  # per database
    databases_exit: int | None = None
    databases_line: str = ""
    examples: dict[str, list[str]] = field(default_factory=dict)

    @property
    def ledger_broken(self) -> int:
        return sum(n for counts in self.ledger.values() for k, n in counts.items() if k != "ok")

    def as_dict(self) -> dict[str, Any]:
        return {**vars(self), "ledger_broken": self.ledger_broken}


# -- back-sync: decisions and fences -------------------------------------------------------


def judge_backsync(
    verdict: WriteVerdict,
    store: Store,
    queue: str,
    dead_letters: list[broker.Message],
    queue_counts: tuple[int, int],
) -> None:
    """Every decision and every fence of the new system in legacy once, and back-sync's
    figures."""
    bodies = store.outbox_bodies()
    blocks = [b["decision"] for b in bodies if b.get("decision")]
    routes = {block["id"]: block["route"] for block in blocks}
    events = Counter(block["id"] for block in blocks)
    wanted = {block["id"]: block["events"] for block in blocks}
    verdict.decisions = len(routes)
    verdict.decisions_by_route = dict(sorted(Counter(routes.values()).items()))
    verdict.decisions_incomplete = sum(1 for i, n in wanted.items() if events[i] != n)
    last_events = [b for b in bodies if b.get("decision") and _last(b["decision"])]
    occurred = {b["decision"]["id"]: datetime.fromisoformat(b["occurred_at"]) for b in last_events}
    verdict.relay_lag_s = _spread(
        (b["published_at"] - occurred[b["decision"]["id"]]).total_seconds()
        for b in last_events
        if b["published_at"] is not None
    )
    epochs = [int(b["data"]["epoch"]) for b in bodies if b["type"] == "OwnershipMoved"]

    with store.legacy.connect() as conn:
        markers = conn.execute(
            text("SELECT kind, decision_id, epoch, written_at FROM strangler_origin")
        ).all()
        applied = set(
            conn.execute(text("SELECT decision_id FROM strangler_backsync_applied")).scalars()
        )
    marked = Counter(str(m.decision_id) for m in markers if m.kind == "decision")
    verdict.decisions_in_legacy = len(marked)
    lost = sorted(set(routes) - set(marked))
    stray = sorted(set(marked) - set(routes))
    verdict.decisions_lost = len(lost)
    verdict.decisions_doubled = sum(n - 1 for n in marked.values()) + sum(marked[i] for i in stray)
    verdict.decisions_unapplied = len(set(marked) - applied)
    fences = Counter(int(m.epoch) for m in markers if m.kind == "fence")
    verdict.moves_fenced = len(epochs)
    verdict.fences = sum(fences.values())
    verdict.fences_missing = len(set(epochs) - set(fences))
    verdict.fences_doubled = sum(n - 1 for n in fences.values()) + sum(
        fences[e] for e in set(fences) - set(epochs)
    )
    position = read_status(store.legacy, queue).as_dict()  # the queue's row and its lanes'
    verdict.backsync_position = {k: str(v) for k, v in position.items()}
    written = [
        (m.written_at, (m.written_at - occurred[m.decision_id]).total_seconds())
        for m in markers
        if m.kind == "decision" and m.decision_id in occurred
    ]
    verdict.backsync_lag_s = _spread(lag for _, lag in written)
    verdict.backsync_behind = _behind(written, occurred.values())
    verdict.backsync_dead_letters = len(dead_letters)
    verdict.backsync_queue_ready, verdict.backsync_queue_unacked = queue_counts
    for name, values in (
        ("decisions_lost", lost),
        ("decisions_stray", stray),
        ("decisions_doubled", sorted(i for i, n in marked.items() if n > 1)),
        ("fences_missing", sorted(str(e) for e in set(epochs) - set(fences))),
        (
            "backsync_dead_letters",
            [f"{m.message_id}: {m.headers.get('x-error')}" for m in dead_letters],
        ),
    ):
        if values:
            verdict.examples[name] = [str(v) for v in values[:5]]


def _behind(written: list[tuple[datetime, float]], taken: Iterable[datetime]) -> dict[str, float]:
    """The longest stretch back-sync was more than a second behind (its writes then at
    most 2 s apart): for how long, and how many decisions a second it wrote and the new
    system took meanwhile."""
    stretches: list[list[datetime]] = []
    for at in sorted(at for at, lag in written if lag > 1.0):
        if stretches and (at - stretches[-1][-1]).total_seconds() <= 2.0:
            stretches[-1].append(at)
        else:
            stretches.append([at])
    late = max(stretches, key=len, default=[])
    if len(late) < 2:
        return {}
    span = (late[-1] - late[0]).total_seconds()
    if span <= 0:
        return {}
    decided = sum(1 for at in taken if late[0] <= at <= late[-1])
    return {
        "seconds": round(span, 1),
        "written_per_s": round(len(late) / span, 1),
        "taken_per_s": round(decided / span, 1),
    }


def _last(block: dict[str, Any]) -> bool:
    """The decision's last event (back-sync writes it once that arrived)."""
    return bool(block["index"] == block["events"] - 1)


def _spread(seconds: Iterable[float]) -> dict[str, float]:
    """Median, 99th percentile and maximum of ``seconds`` (negative ones as 0)."""
    values = sorted(max(0.0, s) for s in seconds)
    if not values:
        return {}
    return {
        "median": round(statistics.median(values), 3),
        "p99": round(values[int(0.99 * (len(values) - 1))], 3),
        "max": round(values[-1], 3),
    }


# -- ownership -------------------------------------------------------------------------------


def judge_ownership(verdict: WriteVerdict, store: Store) -> None:
    with store.new.connect() as conn:
        violations = conn.execute(
            text("SELECT sku, change_id, detail FROM ownership_violation ORDER BY id")
        ).all()
        anomalies = conn.execute(
            text("SELECT route, sku, expected, found FROM echo_anomaly ORDER BY id")
        ).all()
    verdict.ownership_violations = len(violations)
    verdict.echo_anomalies = len(anomalies)
    if violations:
        verdict.examples["ownership_violations"] = [str(tuple(v)) for v in violations[:5]]
    if anomalies:
        verdict.examples["echo_anomalies"] = [str(tuple(a)) for a in anomalies[:5]]


# -- the ledger -----------------------------------------------------------------------------

_ALLOCATIONS = {
    "legacy": """SELECT l.order_no, p.prod_code, s.lot_ref
        FROM cust_order_line l JOIN prod_catalog p ON p.prod_id = l.prod_id
        JOIN lot_allocation a ON a.line_id = l.line_id JOIN stock_lot s ON s.lot_id = a.lot_id""",
    "new": "SELECT orderid, sku, batchref FROM batch_allocations",
}
_BATCHES = {
    "legacy": """SELECT s.lot_ref, p.prod_code, s.qty_units
        FROM stock_lot s JOIN prod_catalog p ON p.prod_id = s.prod_id""",
    "new": "SELECT reference, sku, purchased_quantity FROM batches",
}
_OVER_ALLOCATED = {
    "legacy": """SELECT s.lot_ref FROM stock_lot s JOIN lot_allocation a ON a.lot_id = s.lot_id
        JOIN cust_order_line l ON l.line_id = a.line_id
        GROUP BY s.lot_ref, s.qty_units HAVING SUM(l.qty_units) > s.qty_units""",
    "new": """SELECT b.reference FROM batches b
        JOIN batch_allocations a ON a.batchref = b.reference
        GROUP BY b.reference, b.purchased_quantity HAVING SUM(a.qty) > b.purchased_quantity""",
}


def expected_batch(ledger: Ledger, orderid: str) -> object:
    """The batch the ledger says ``orderid`` is held in (None: nowhere; ANY: unknown)."""
    if orderid in ledger.unknown_orders:
        return ANY
    if orderid in ledger.deallocated or orderid in ledger.out_of_stock:
        return None
    moves = ledger.moved.get(orderid)
    if moves is not None and len(moves) > 1:
        return ANY  # two cuts moved it: their answers may have been noted out of order
    ref = moves[0] if moves else ledger.allocated[orderid][1]
    if ref is not None and ref in ledger.unknown_quantities:
        return ANY  # a cut of its batch with an unknown outcome may have moved it
    return ref


def judge_ledger(verdict: WriteVerdict, store: Store, ledger: Ledger) -> None:
    """Hold both databases to what the workload was told."""
    orders = {**ledger.out_of_stock, **{o: sku for o, (sku, _) in ledger.allocated.items()}}
    verdict.ledger_orders = len(orders)
    for name, engine in (("legacy", store.legacy), ("new", store.new)):
        with engine.connect() as conn:
            rows = conn.execute(text(_ALLOCATIONS[name])).all()
            batches = {ref: (sku, qty) for ref, sku, qty in conn.execute(text(_BATCHES[name]))}
            over = list(conn.execute(text(_OVER_ALLOCATED[name])).scalars())
        held: dict[str, list[tuple[str, str]]] = {}
        for orderid, sku, batchref in rows:
            held.setdefault(orderid, []).append((sku, batchref))
        wrong = [
            f"{orderid}: {held.get(orderid)}"
            for orderid, sku in orders.items()
            if not _holds(held.get(orderid, []), sku, expected_batch(ledger, orderid))
        ]
        twice = sorted(o for o, lines in held.items() if len(lines) > 1)
        stray = sorted(set(held) - set(orders) - set(ledger.unknown_orders))
        bad_batches = [
            f"{ref}: {batches.get(ref)}"
            for ref, (sku, qty) in ledger.batches.items()
            if not _batch_ok(batches.get(ref), sku, qty, ref, ledger)
        ]
        stray_batches = sorted(set(batches) - set(ledger.batches) - set(ledger.unknown_batches))
        verdict.ledger[name] = {
            "ok": len(orders) - len(wrong),
            "wrong": len(wrong),
            "held_twice": len(twice),
            "stray": len(stray),
            "batches_wrong": len(bad_batches),
            "batches_stray": len(stray_batches),
            "over_allocated": len(over),
        }
        for what, values in (
            ("wrong", wrong),
            ("held_twice", twice),
            ("stray", stray),
            ("batches_wrong", bad_batches),
            ("batches_stray", stray_batches),
            ("over_allocated", over),
        ):
            if values:
                verdict.examples[f"ledger_{name}_{what}"] = [str(v) for v in values[:5]]


def _holds(lines: list[tuple[str, str]], sku: str, expected: object) -> bool:
    if len(lines) > 1 or any(held_sku != sku for held_sku, _ in lines):
        return False
    if expected is ANY:
        return True
    return [ref for _, ref in lines] == ([] if expected is None else [expected])


def _batch_ok(found: tuple[str, int] | None, sku: str, qty: int, ref: str, ledger: Ledger) -> bool:
    if found is None or found[0] != sku:
        return False
    if ref in ledger.unknown_quantities:
        return True
    return found[1] == qty or found[1] in ledger.quantities.get(ref, set())


# -- strangler verify --databases -----------------------------------------------------------


def judge_databases(verdict: WriteVerdict, result: subprocess.CompletedProcess[str]) -> None:
    verdict.databases_exit = result.returncode
    match = _DATABASES_LINE.search(result.stdout)
    assert match, f"no summary line from verify --databases:\n{result.stdout}\n{result.stderr}"
    verdict.databases_line = match.group(0)
    if result.returncode != 0:
        verdict.examples["verify_databases"] = result.stdout.splitlines()[1:6]


# -- decision parity by phase ---------------------------------------------------------------


def parity_between(
    before: dict[str, dict[str, float]], after: dict[str, dict[str, float]]
) -> dict[str, dict[str, float]]:
    """Decision parity judged between two readings of ``Store.decision_parity``."""
    out = {}
    for route, now in after.items():
        then = before.get(route, {"agree": 0, "differ": 0})
        agree, differ = int(now["agree"] - then["agree"]), int(now["differ"] - then["differ"])
        judged = agree + differ
        out[route] = {
            "agree": agree,
            "differ": differ,
            "percent": round(100.0 * agree / judged, 4) if judged else 0.0,
        }
    return out
