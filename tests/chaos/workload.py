"""Concurrent writes through the facade, counted by kind and outcome, with a ledger of
every write the workload was told succeeded.

Each thread has its own ``requests`` session and its own random generator (derived from
the run's seed). The mix: new batches, allocations (most of the traffic, each a new
order line and its allocation), deallocations of lines the thread allocated, quantity
changes (raises, and cuts below what is allocated, which make the owner deallocate the
newest lines and reallocate them), and a few reads.

The writes (the write group ``allocation``: ``POST /batches``, ``PATCH /batches/<ref>``,
``POST /allocate``, ``POST /deallocate``) go to the facade, which sends each to the
product's owner; the reads go straight to the legacy shop (``GET /batches/<ref>`` to
choose a cut, ``GET /allocations/<orderid>``), so the facade's shadowed route only sees
the fault rounds' requests. A ``503`` (a product changing hands, the ownership unreadable)
means nothing was accepted: the writer waits ``Retry-After`` seconds and sends the same
request again. A ``502`` or ``504`` from the new system means its outcome is unknown (it
may have decided): the ledger keeps the write as unknown, and the oracle accepts either
outcome for it, but never both systems disagreeing.
"""

from __future__ import annotations

import random
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

# status codes a write or read may be answered per kind of request; anything else is an
# error. 502 and 504 (the new system failed or timed out: it may have decided) are the
# unknown outcomes of a write; 503 is retried and never recorded as an answer.
EXPECTED: dict[str, frozenset[int]] = {
    "add_batch": frozenset({201}),
    "allocate": frozenset({201, 409}),  # 409: out of stock
    "deallocate": frozenset({200, 404}),  # 404: a reallocation left the line unallocated
    "raise_qty": frozenset({200}),
    "cut_qty": frozenset({200}),
    "read": frozenset({200, 404}),  # 404: a batch back-sync has not written into legacy yet
}
UNKNOWN_OUTCOME = frozenset({502, 504})
WRITES = frozenset({"add_batch", "allocate", "deallocate", "raise_qty", "cut_qty"})


@dataclass
class Ledger:
    """What the writers were told. The oracle holds both databases to it."""

    allocated: dict[str, tuple[str, str]] = field(default_factory=dict)  # order -> (sku, ref)
    out_of_stock: dict[str, str] = field(default_factory=dict)  # order -> sku (409)
    deallocated: set[str] = field(default_factory=set)
    moved: dict[str, list[str | None]] = field(default_factory=dict)
    """order -> where each cut that moved its line said it went (None: unallocated)."""
    unknown_orders: dict[str, str] = field(default_factory=dict)  # allocate/deallocate 502/504
    batches: dict[str, tuple[str, int]] = field(default_factory=dict)  # ref -> (sku, qty)
    quantities: dict[str, set[int]] = field(default_factory=dict)  # ref -> qty set by a PATCH
    unknown_batches: dict[str, str] = field(default_factory=dict)  # ref -> sku (502/504)
    unknown_quantities: set[str] = field(default_factory=set)
    """Batches a PATCH with an unknown outcome was about: its lines may have moved."""
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def as_dict(self) -> dict[str, int]:
        return {
            "allocations_accepted": len(self.allocated),
            "allocations_out_of_stock": len(self.out_of_stock),
            "deallocations_accepted": len(self.deallocated),
            "lines_moved_by_cuts": len(self.moved),
            "orders_unknown_outcome": len(self.unknown_orders),
            "batches_created": len(self.batches),
            "batches_unknown_outcome": len(self.unknown_batches),
            "quantities_set": sum(len(q) for q in self.quantities.values()),
            "quantities_unknown_outcome": len(self.unknown_quantities),
        }


@dataclass
class Counts:
    """What the workload did: requests by kind and status, writes by the phase of the
    group's journey and who served them, 503 retries, failures with a sample."""

    by_kind: Counter[str] = field(default_factory=Counter)
    by_status: Counter[str] = field(default_factory=Counter)
    served: Counter[str] = field(default_factory=Counter)  # "<phase>: <served by>"
    retried_503: int = 0
    unknown_outcome: int = 0
    reallocating_cuts: int = 0
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, kind: str, status: int, phase: str, served_by: str) -> None:
        with self.lock:
            self.by_kind[kind] += 1
            self.by_status[f"{kind} {status}"] += 1
            if kind in WRITES:
                self.served[f"{phase}: {served_by}"] += 1
                self.unknown_outcome += status in UNKNOWN_OUTCOME

    def retried(self) -> None:
        with self.lock:
            self.retried_503 += 1

    def fail(self, message: str) -> None:
        with self.lock:
            self.by_kind["failed"] += 1
            if len(self.errors) < 20:
                self.errors.append(message)

    def served_in(self, phase: str, by: str) -> int:
        with self.lock:
            return self.served[f"{phase}: {by}"]

    @property
    def requests(self) -> int:
        return sum(n for kind, n in self.by_kind.items() if kind != "failed")

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "by_kind": dict(sorted(self.by_kind.items())),
            "by_status": dict(sorted(self.by_status.items())),
            "served": dict(self.served),
            "retried_503": self.retried_503,
            "unknown_outcome": self.unknown_outcome,
            "reallocating_cuts": self.reallocating_cuts,
            "errors": list(self.errors),
        }


class Workload:
    """``threads`` writers sending writes to ``write_url`` (the facade) and reads to
    ``read_url`` (legacy) until :meth:`stop`. ``phase`` names the group's current step
    (set by the harness) for the counts of who served the writes."""

    def __init__(
        self, write_url: str, read_url: str, seed: int, threads: int = 6, skus: int = 40
    ) -> None:
        self.write_url = write_url.rstrip("/")
        self.read_url = read_url.rstrip("/")
        self.seed = seed
        self.skus = [f"CHAOS-{n:03d}" for n in range(skus)]
        self.counts = Counts()
        self.ledger = Ledger()
        self.phase = "legacy"
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(n,), name=f"workload-{n}", daemon=True)
            for n in range(threads)
        ]
        self._refs: list[str] = []  # every batch created, shared by the threads
        self._refs_lock = threading.Lock()

    # -- lifecycle ---------------------------------------------------------------------

    def stock(self) -> None:
        """Per sku: a warehouse batch and two shipments (before the threads start)."""
        with requests.Session() as http:
            for n, sku in enumerate(self.skus):
                self._add_batch(http, f"{sku}-wh", sku, 120, None)
                self._add_batch(http, f"{sku}-s1", sku, 300, f"2027-0{1 + n % 9}-1{n % 10}")
                self._add_batch(http, f"{sku}-s2", sku, 500, f"2028-0{1 + n % 9}-2{n % 8}")

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            if thread.ident is None:
                continue  # never started
            thread.join(60)
            assert not thread.is_alive(), f"{thread.name} did not stop"

    # -- one thread ----------------------------------------------------------------------

    def _run(self, index: int) -> None:
        rng = random.Random(f"{self.seed}-{index}")
        allocated: list[tuple[str, str]] = []
        orders = 0
        with self._session() as http:
            while not self._stop.is_set():
                roll = rng.random()
                try:
                    if roll < 0.04:
                        sku = rng.choice(self.skus)
                        ref = f"{sku}-t{index}-{orders}-{rng.randrange(10**6)}"
                        eta = rng.choice([None, f"2027-{rng.randint(1, 12):02d}-15"])
                        self._add_batch(http, ref, sku, rng.randint(50, 400), eta)
                    elif roll < 0.16 and allocated:
                        orderid, sku = allocated.pop(rng.randrange(len(allocated)))
                        self._deallocate(http, orderid, sku)
                    elif roll < 0.21:
                        self._change_qty(http, rng)
                    elif roll < 0.24:
                        path = rng.choice(
                            [
                                f"/batches/{rng.choice(self.skus)}-wh",
                                f"/allocations/o{index}-{rng.randrange(orders + 1)}",
                            ]
                        )
                        self._read(http, path)
                    else:
                        orders += 1
                        orderid, sku = f"o{index}-{orders}", rng.choice(self.skus)
                        if self._allocate(http, orderid, sku, rng.randint(1, 12)):
                            allocated.append((orderid, sku))
                except requests.RequestException as error:
                    url = error.request.url if error.request is not None else "?"
                    self.counts.fail(f"{url}: {type(error).__name__}: {error}")

    def _allocate(self, http: requests.Session, orderid: str, sku: str, qty: int) -> bool:
        body = {"orderid": orderid, "sku": sku, "qty": qty}
        response = self._write(http, "allocate", "POST", "/allocate", body)
        ledger = self.ledger
        with ledger.lock:
            if response is None:
                pass  # never accepted (stopped while the product changed hands)
            elif response.status_code in UNKNOWN_OUTCOME:
                ledger.unknown_orders[orderid] = sku
            elif response.status_code == 201:
                ledger.allocated[orderid] = (sku, response.json()["batchref"])
                return True
            elif response.status_code == 409:
                ledger.out_of_stock[orderid] = sku
        return False

    def _deallocate(self, http: requests.Session, orderid: str, sku: str) -> None:
        body = {"orderid": orderid, "sku": sku}
        response = self._write(http, "deallocate", "POST", "/deallocate", body)
        ledger = self.ledger
        with ledger.lock:
            if response is None:
                pass
            elif response.status_code in UNKNOWN_OUTCOME:
                ledger.unknown_orders[orderid] = sku
            elif response.status_code == 200:
                ledger.deallocated.add(orderid)

    def _change_qty(self, http: requests.Session, rng: random.Random) -> None:
        with self._refs_lock:
            ref = rng.choice(self._refs)
        batch = self._read(http, f"/batches/{ref}")
        if batch is None or batch.status_code != 200:
            return
        current, allocated = batch.json()["qty"], batch.json()["allocated"]
        if allocated > 0 and rng.random() < 0.6:
            kind, qty = "cut_qty", rng.randrange(allocated)  # below what is allocated
        else:
            kind, qty = "raise_qty", current + rng.randint(1, 50)
        response = self._write(http, kind, "PATCH", f"/batches/{ref}", {"qty": qty})
        if response is None:
            return
        ledger = self.ledger
        with ledger.lock:
            ledger.quantities.setdefault(ref, set()).add(qty)
            if response.status_code != 200:
                ledger.unknown_quantities.add(ref)  # set or not, lines moved or not
                return
            body = response.json()
            for line in body["reallocated"]:
                ledger.moved.setdefault(line["orderid"], []).append(line["batchref"])
            for line in body["unallocated"]:
                ledger.moved.setdefault(line["orderid"], []).append(None)
        if kind == "cut_qty" and (body["reallocated"] or body["unallocated"]):
            with self.counts.lock:
                self.counts.reallocating_cuts += 1

    def _add_batch(
        self, http: requests.Session, ref: str, sku: str, qty: int, eta: str | None
    ) -> None:
        body = {"ref": ref, "sku": sku, "qty": qty, "eta": eta}
        response = self._write(http, "add_batch", "POST", "/batches", body)
        if response is None:
            return
        with self.ledger.lock:
            if response.status_code in UNKNOWN_OUTCOME:
                self.ledger.unknown_batches[ref] = sku
                return
            self.ledger.batches[ref] = (sku, qty)
        with self._refs_lock:
            self._refs.append(ref)

    # -- requests ------------------------------------------------------------------------

    def _read(self, http: requests.Session, path: str) -> requests.Response | None:
        """A read straight from legacy: the response when its status is expected."""
        response = http.get(self.read_url + path, timeout=30)
        return self._expected("read", response, "GET", path, "legacy")

    def _session(self) -> requests.Session:
        """A writer's session. Its connection to legacy idles between reads longer than
        the shop's keep-alive (2 s): a read sent as the shop closes it is reset before
        the shop read it, and a read (only) is sent again, as HTTP clients do."""
        http = requests.Session()
        again = Retry(total=3, connect=3, read=3, status=0, allowed_methods={"GET"})
        http.mount(self.read_url, HTTPAdapter(max_retries=again))
        return http

    def _write(
        self, http: requests.Session, kind: str, method: str, path: str, body: Any
    ) -> requests.Response | None:
        """A write through the facade, sent again after ``Retry-After`` while it is
        answered 503. The response when its status is expected for ``kind`` or an unknown
        outcome (502, 504); None when it was refused otherwise (counted as an error) or
        the workload stopped while it waited (nothing accepted)."""
        while True:
            phase = self.phase
            response = http.request(method, self.write_url + path, json=body, timeout=30)
            if response.status_code != 503:
                break
            retry_after = response.headers.get("Retry-After", "")
            error = response.json() if response.content else {}
            if not retry_after.isdigit() or error.get("error") != "service unavailable":
                self.counts.fail(f"{method} {path} -> 503 without Retry-After: {response.text}")
                return None
            self.counts.retried()
            if self._stop.wait(float(retry_after)):  # a client honouring Retry-After
                return None
        served_by = response.headers.get("X-Served-By", "?")
        if phase != self.phase:
            phase = "(the group moved meanwhile)"
        if response.status_code in UNKNOWN_OUTCOME:
            self.counts.record(kind, response.status_code, phase, served_by)
            return response
        return self._expected(kind, response, method, path, served_by, phase)

    def _expected(
        self,
        kind: str,
        response: requests.Response,
        method: str,
        path: str,
        served_by: str,
        phase: str = "",
    ) -> requests.Response | None:
        self.counts.record(kind, response.status_code, phase, served_by)
        if response.status_code not in EXPECTED[kind]:
            self.counts.fail(
                f"{method} {path} -> {response.status_code} by {served_by}: {response.text[:200]}"
            )
            return None
        return response
