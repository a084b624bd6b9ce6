"""Legacy change streams for consumer tests: what the bridge would publish for a busy shop.

:class:`LegacyShopStream` plays the legacy shop's rules (first lot with room, warehouse
stock first, PATCH deallocating the newest lines and reallocating them) in memory and
writes, for each simulated request, the change envelopes the capture triggers and the
relay would produce: one legacy transaction per request, with Debezium's
``transaction`` block, consecutive ``source.seq`` positions and stable message ids.
"""

from __future__ import annotations

import atexit
import json
import random
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from broker import Message

INSTALL = "5d0c1d2e-7f4a-4b8e-9c3d-2a1b0c9d8e7f"
BASE_TS_MS = 1_714_557_600_000


@dataclass
class _Lot:
    lot_id: int
    ref: str
    prod_id: int
    qty: int
    eta: str | None
    lines: list[int] = field(default_factory=list)  # allocated line ids, oldest first


@dataclass
class _Line:
    line_id: int
    orderid: str
    prod_id: int
    qty: int
    lot_id: int | None = None
    alloc_id: int | None = None


class LegacyShopStream:
    """Simulated legacy writes, as ``legacy.cdc`` messages (see the module docstring)."""

    def __init__(
        self, *, seed: int = 7, install: str = INSTALL, name: str = "legacy", db: str = "shop"
    ) -> None:
        self.rng = random.Random(seed)
        self.install = install
        self.name = name
        self.db = db
        self.messages: list[Message] = []
        self.products: dict[str, int] = {}
        self.lots: dict[int, _Lot] = {}
        self.lines: dict[int, _Line] = {}
        self._by_order: dict[tuple[str, int], int] = {}
        self._ids = {"prod": 0, "lot": 0, "line": 0, "alloc": 0, "change": 0, "tx": 1000}
        self._ids["origin"] = 0
        self._echo: dict[str, Any] | None = None

    # -- the shop's requests -------------------------------------------------------------

    def add_batch(
        self, ref: str, sku: str, qty: int, eta: str | None, lot_id: int | None = None
    ) -> None:
        """``lot_id``: one :meth:`reserve_lot` gave out (its transaction commits now)."""
        events: list[tuple[str, str, Any, Any]] = []
        if sku not in self.products:
            prod_id = self._next("prod")
            self.products[sku] = prod_id
            events.append(("prod_catalog", "c", None, _product(prod_id, sku)))
        lot = _Lot(lot_id or self._next("lot"), ref, self.products[sku], qty, eta)
        self.lots[lot.lot_id] = lot
        events.append(("stock_lot", "c", None, _lot(lot)))
        self._transaction(events)

    def reserve_lot(self) -> int:
        """A lot id taken by a request whose transaction commits later (legacy numbers
        its lots as it inserts them, and commits need not follow)."""
        return self._next("lot")

    def allocate(self, orderid: str, sku: str, qty: int) -> str | None:
        prod_id = self.products[sku]
        held = self._by_order.get((orderid, prod_id))
        if held is not None and self.lines[held].lot_id is not None:
            return None
        lot = self._choose_lot(prod_id, qty)
        if lot is None:
            return None
        line = _Line(self._next("line"), orderid, prod_id, qty)
        self.lines[line.line_id] = line
        self._by_order[(orderid, prod_id)] = line.line_id
        events = [("cust_order_line", "c", None, _line(line))]
        events.append(self._allocation_created(line, lot))
        self._transaction(events)
        return lot.ref

    def deallocate(self, line_id: int) -> None:
        line = self.lines.pop(line_id)
        del self._by_order[(line.orderid, line.prod_id)]
        assert line.lot_id is not None
        self.lots[line.lot_id].lines.remove(line_id)
        events = [("lot_allocation", "d", _allocation(line), None)]
        events.append(("cust_order_line", "d", _line(line), None))
        self._transaction(events)

    def change_quantity(self, lot_id: int, qty: int) -> None:
        lot = self.lots[lot_id]
        before = _lot(lot)
        lot.qty = qty
        events: list[tuple[str, str, Any, Any]] = [("stock_lot", "u", before, _lot(lot))]
        moved: list[_Line] = []
        while self._allocated(lot) > qty:
            line = self.lines[lot.lines.pop()]
            events.append(("lot_allocation", "d", _allocation(line), None))
            line.lot_id = line.alloc_id = None
            moved.append(line)
        for line in reversed(moved):
            target = self._choose_lot(line.prod_id, line.qty)
            if target is not None:
                events.append(self._allocation_created(line, target))
        self._transaction(events)

    # -- the kit's own transactions (docs/write-path.md, "The origin marker") --------------

    @contextmanager
    def echo(self, route: str, summary: str, sku: str, decision_id: str = "d-1") -> Iterator[None]:
        """The requests in the block are the new system's decision ``route``/``summary``
        written back by back-sync: each legacy transaction opens with an origin marker."""
        self._echo = {
            "kind": "decision",
            "group_name": "allocation",
            "epoch": None,
            "decision_id": decision_id,
            "route": route,
            "sku": sku,
            "summary": summary,
        }
        try:
            yield
        finally:
            self._echo = None

    def fence(self, epoch: int, group: str = "allocation") -> None:
        """Back-sync's fence of the write group's ownership ``epoch``."""
        marker = {"kind": "fence", "group_name": group, "epoch": epoch}
        self._transaction([("strangler_origin", "c", None, self._origin_row(marker))])

    def _origin_row(self, marker: dict[str, Any]) -> dict[str, Any]:
        row: dict[str, Any] = dict.fromkeys(("epoch", "decision_id", "route", "sku", "summary"))
        row.update(marker, origin_id=self._next("origin"), written_at="2024-05-01T10:00:02")
        return row

    # -- a busy day --------------------------------------------------------------------

    def busy_day(self, changes: int, products: int = 40, lots_per_product: int = 5) -> None:
        """Batches for ``products`` skus, then orders, deallocations and quantity changes,
        until at least ``changes`` change events exist."""
        for p in range(products):
            sku = f"SKU-{p:03d}"
            for n in range(lots_per_product):
                eta = None if n == 0 else f"2027-{1 + n:02d}-{1 + p % 28:02d}"
                self.add_batch(f"{sku}-lot{n}", sku, self.rng.randint(200, 400), eta)
        order = 0
        while len(self.messages) < changes:
            roll = self.rng.random()
            allocated = (
                [line for line in self.lines.values() if line.lot_id is not None]
                if roll < 0.08
                else []
            )
            if allocated:
                self.deallocate(self.rng.choice(allocated).line_id)
            elif roll < 0.11:
                lot = self.rng.choice(list(self.lots.values()))
                self.change_quantity(lot.lot_id, max(0, lot.qty + self.rng.randint(-30, 40)))
            else:
                order += 1
                sku = f"SKU-{self.rng.randrange(products):03d}"
                self.allocate(f"order-{order:06d}", sku, self.rng.randint(1, 5))

    def expected_allocations(self) -> dict[str, list[tuple[str, str]]]:
        """What legacy answers: orderid -> sorted (sku, batchref) of its allocated lines."""
        skus = {prod_id: sku for sku, prod_id in self.products.items()}
        out: dict[str, list[tuple[str, str]]] = {}
        for line in self.lines.values():
            if line.lot_id is not None:
                out.setdefault(line.orderid, []).append(
                    (skus[line.prod_id], self.lots[line.lot_id].ref)
                )
        return {orderid: sorted(rows) for orderid, rows in out.items()}

    def snapshot(self, tables: tuple[str, ...] | None = None) -> None:
        """What ``strangler bridge snapshot`` adds: every current row as a snapshot read
        (op ``r``), table by table (all, or ``tables``), each table's rows one legacy
        transaction."""
        images: list[tuple[str, list[dict[str, Any]]]] = [
            ("prod_catalog", [_product(i, sku) for sku, i in sorted(self.products.items())]),
            ("stock_lot", [_lot(lot) for _, lot in sorted(self.lots.items())]),
            ("cust_order_line", [_line(line) for _, line in sorted(self.lines.items())]),
            (
                "lot_allocation",
                [_allocation(line) for _, line in sorted(self.lines.items()) if line.lot_id],
            ),
        ]
        for table, rows in images:
            if rows and (tables is None or table in tables):
                self._transaction([(table, "r", None, row) for row in rows])

    def heartbeat(self, ts_ms: int = BASE_TS_MS + 10_000_000) -> Message:
        """A heartbeat of this source: nothing left to publish."""
        body = {
            "type": "heartbeat",
            "ts_ms": ts_ms,
            "source": {
                "version": "0.1.0",
                "connector": "postgresql",
                "name": self.name,
                "db": self.db,
            },
            "last_commit_ts_ms": BASE_TS_MS + self._ids["change"],
            "last_seq": self._ids["change"],
        }
        return Message(
            "heartbeat", json.dumps(body).encode(), f"{self.install}:hb:{ts_ms}", type="heartbeat"
        )

    def emit(self, table: str, op: str, before: Any, after: Any) -> Message:
        """One change of any row, as its own legacy transaction (for odd cases)."""
        self._transaction([(table, op, before, after)])
        return self.messages[-1]

    def line_of(self, orderid: str) -> int:
        """The line id of ``orderid``'s (only) line."""
        return next(i for i, line in self.lines.items() if line.orderid == orderid)

    # -- plumbing ----------------------------------------------------------------------

    def _choose_lot(self, prod_id: int, qty: int) -> _Lot | None:
        candidates = [lot for lot in self.lots.values() if lot.prod_id == prod_id]
        candidates.sort(key=lambda lot: (lot.eta is not None, lot.eta or "", lot.lot_id))
        return next((lot for lot in candidates if lot.qty - self._allocated(lot) >= qty), None)

    def _allocated(self, lot: _Lot) -> int:
        return sum(self.lines[line_id].qty for line_id in lot.lines)

    def _allocation_created(self, line: _Line, lot: _Lot) -> tuple[str, str, Any, Any]:
        line.lot_id, line.alloc_id = lot.lot_id, self._next("alloc")
        lot.lines.append(line.line_id)
        return ("lot_allocation", "c", None, _allocation(line))

    def _next(self, kind: str) -> int:
        self._ids[kind] += 1
        return self._ids[kind]

    def _transaction(self, events: list[tuple[str, str, Any, Any]]) -> None:
        if self._echo is not None:
            events = [("strangler_origin", "c", None, self._origin_row(self._echo)), *events]
        txid = self._next("tx")
        per_table: dict[str, int] = {}
        for order, (table, op, before, after) in enumerate(events, 1):
            per_table[table] = per_table.get(table, 0) + 1
            seq = self._next("change")
            source_snapshot: bool | str = False
            if op == "r":
                source_snapshot = "last" if order == len(events) else True
            body = {
                "before": before,
                "after": after,
                "op": op,
                "ts_ms": BASE_TS_MS + seq,
                "source": {
                    "version": "0.1.0",
                    "connector": "postgresql",
                    "name": self.name,
                    "db": self.db,
                    "schema": "public",
                    "table": table,
                    "txid": str(txid),
                    "seq": seq,
                    "change_id": seq,
                    "ts_ms": BASE_TS_MS + seq,
                    "snapshot": source_snapshot,
                },
                "transaction": {
                    "id": str(txid),
                    "total_order": order,
                    "data_collection_order": per_table[table],
                    "last": order == len(events),
                },
            }
            self.messages.append(
                Message(
                    f"{table}.{op}",
                    json.dumps(body, separators=(",", ":")).encode(),
                    f"{self.install}:{seq}",
                    headers={"x-legacy-table": table, "x-legacy-seq": seq},
                )
            )


def _product(prod_id: int, sku: str) -> dict[str, Any]:
    return {"prod_id": prod_id, "prod_code": sku, "descr": None}


def _lot(lot: _Lot) -> dict[str, Any]:
    return {
        "lot_id": lot.lot_id,
        "lot_ref": lot.ref,
        "prod_id": lot.prod_id,
        "qty_units": lot.qty,
        "arrival_date": lot.eta,
        "created_at": "2024-05-01T10:00:00.123456",
    }


def _line(line: _Line) -> dict[str, Any]:
    return {
        "line_id": line.line_id,
        "order_no": line.orderid,
        "prod_id": line.prod_id,
        "qty_units": line.qty,
    }


def _allocation(line: _Line) -> dict[str, Any]:
    return {
        "alloc_id": line.alloc_id,
        "lot_id": line.lot_id,
        "line_id": line.line_id,
        "allocated_at": "2024-05-01T10:00:01.5",
    }


_templates: dict[str, Path] = {}


def migrated_sqlite_url(folder: Path) -> str:
    """URL of a migrated SQLite new database in ``folder`` (copied from one migrated once
    per test session: migrating takes longer than most tests)."""
    template = _templates.get("new")
    if template is None:
        from new_domain import upgrade_database

        template = Path(tempfile.mkdtemp(prefix="new-domain-template-")) / "new.db"
        upgrade_database(f"sqlite:///{template}")
        atexit.register(shutil.rmtree, template.parent, True)
        _templates["new"] = template
    target = folder / "new.db"
    shutil.copyfile(template, target)
    return f"sqlite:///{target}"


class LegacyWorkload:
    """Writes to a real legacy shop database, fast: batches and quantity changes through
    the shop's HTTP API (Flask test client: the shop's own rules), order lines and their
    allocations with multi-row inserts (many lines per legacy transaction), some
    deallocations by deleting like the shop does. Capture triggers record it all."""

    def __init__(self, legacy_db_url: str, products: int = 20, seed: int = 11) -> None:
        """Creates the shop's tables if needed; :meth:`stock` before the first orders."""
        from examples.legacy_shop import create_app
        from examples.legacy_shop.database import make_engine

        self.app = create_app(legacy_db_url)
        self.client = self.app.test_client()
        self.engine = make_engine(legacy_db_url)
        self.rng = random.Random(seed)
        self.skus = [f"SKU-{p:03d}" for p in range(products)]
        self.orders = 0
        self.lots = 0
        self._big_lots: dict[int, int] = {}  # prod_id -> its big lot

    def stock(self) -> None:
        """One big lot per sku (write after capture is installed, so it is captured)."""
        for sku in self.skus:
            self.add_lot(sku, 1_000_000, "2030-01-01")

    def add_lot(self, sku: str, qty: int, eta: str | None) -> str:
        self.lots += 1
        ref = f"lot-{self.lots:05d}"
        response = self.client.post(
            "/batches", json={"ref": ref, "sku": sku, "qty": qty, "eta": eta}
        )
        assert response.status_code == 201, response.json
        return ref

    def allocate_many(self, orders: int, per_transaction: int = 50) -> None:
        """``orders`` new orders of one or two skus, each line allocated to its sku's big
        lot (it never runs out), ``per_transaction`` orders per legacy transaction."""
        from sqlalchemy import insert, select

        from examples.legacy_shop.schema import cust_order_line, lot_allocation, stock_lot

        if not self._big_lots:
            with self.engine.begin() as conn:
                rows = conn.execute(select(stock_lot.c.prod_id, stock_lot.c.lot_id)).all()
            self._big_lots = {prod_id: lot_id for prod_id, lot_id in rows}
        prod_ids = sorted(self._big_lots)
        for start in range(0, orders, per_transaction):
            lines = []
            for _ in range(min(per_transaction, orders - start)):
                self.orders += 1
                kinds = self.rng.choice((2, 3, 4))
                for prod_id in self.rng.sample(prod_ids, kinds):
                    lines.append(
                        {
                            "order_no": f"order-{self.orders:06d}",
                            "prod_id": prod_id,
                            "qty_units": self.rng.randint(1, 5),
                        }
                    )
            with self.engine.begin() as conn:
                returning = cust_order_line.c.line_id, cust_order_line.c.prod_id
                ids = conn.execute(
                    insert(cust_order_line).returning(*returning, sort_by_parameter_order=True),
                    lines,
                ).all()
                now = datetime.now(UTC).replace(tzinfo=None)
                conn.execute(
                    insert(lot_allocation),
                    [
                        {"lot_id": self._big_lots[prod_id], "line_id": line_id, "allocated_at": now}
                        for line_id, prod_id in ids
                    ],
                )

    def deallocate_some(self, count: int) -> None:
        """Deallocate ``count`` random allocated lines as the shop does (the allocation
        row, then the line), in one transaction."""
        from sqlalchemy import delete, func, select

        from examples.legacy_shop.schema import cust_order_line, lot_allocation

        with self.engine.begin() as conn:
            rows = conn.execute(
                select(lot_allocation.c.alloc_id, lot_allocation.c.line_id)
                .order_by(func.random())
                .limit(count)
            ).all()
            for alloc_id, line_id in rows:
                conn.execute(delete(lot_allocation).where(lot_allocation.c.alloc_id == alloc_id))
                conn.execute(delete(cust_order_line).where(cust_order_line.c.line_id == line_id))

    def squeeze(self, sku: str, orders: int = 4) -> None:
        """A small warehouse lot that takes the next orders of ``sku`` (the shop's own
        rule), then is shrunk: the shop deallocates its newest lines and reallocates
        them to the big lot."""
        ref = self.add_lot(sku, 40, None)
        for _ in range(orders):
            self.orders += 1
            orderid = f"order-{self.orders:06d}"
            response = self.client.post(
                "/allocate", json={"orderid": orderid, "sku": sku, "qty": 6}
            )
            assert response.status_code == 201 and response.json == {"batchref": ref}
        response = self.client.patch(f"/batches/{ref}", json={"qty": 7})
        assert response.status_code == 200, response.json

    def close(self) -> None:
        self.engine.dispose()
