"""Concurrent writes to the legacy shop over its HTTP API, counted by kind and outcome.

Each thread has its own ``requests`` session and its own random generator (derived from
the run's seed). The mix: new batches, allocations (most of the traffic, each a new
order line and its allocation), deallocations of lines the thread allocated, quantity
changes (raises, and cuts below what is allocated, which make legacy deallocate the
newest lines and reallocate them), and a few reads.
"""

from __future__ import annotations

import random
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import requests

# status codes the shop may answer per kind of request; anything else is an error
EXPECTED: dict[str, frozenset[int]] = {
    "add_batch": frozenset({201}),
    "allocate": frozenset({201, 409}),  # 409: out of stock
    "deallocate": frozenset({200, 404}),  # 404: a reallocation left the line unallocated
    "raise_qty": frozenset({200}),
    "cut_qty": frozenset({200}),
    "read": frozenset({200, 404}),
}


@dataclass
class Counts:
    """What the workload did: requests by kind and status, failures with a sample."""

    by_kind: Counter[str] = field(default_factory=Counter)
    by_status: Counter[str] = field(default_factory=Counter)
    reallocating_cuts: int = 0
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, kind: str, status: int) -> None:
        with self.lock:
            self.by_kind[kind] += 1
            self.by_status[f"{kind} {status}"] += 1

    def fail(self, message: str) -> None:
        with self.lock:
            self.by_kind["failed"] += 1
            if len(self.errors) < 20:
                self.errors.append(message)

    @property
    def requests(self) -> int:
        return sum(n for kind, n in self.by_kind.items() if kind != "failed")

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "by_kind": dict(sorted(self.by_kind.items())),
            "by_status": dict(sorted(self.by_status.items())),
            "reallocating_cuts": self.reallocating_cuts,
            "errors": list(self.errors),
        }


class Workload:
    """``threads`` writers against ``base_url`` until :meth:`stop`."""

    def __init__(self, base_url: str, seed: int, threads: int = 6, skus: int = 40) -> None:
        self.base_url = base_url.rstrip("/")
        self.seed = seed
        self.skus = [f"CHAOS-{n:03d}" for n in range(skus)]
        self.counts = Counts()
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
        with requests.Session() as http:
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
                        self._call(
                            http,
                            "deallocate",
                            "POST",
                            "/deallocate",
                            {"orderid": orderid, "sku": sku},
                        )
                    elif roll < 0.21:
                        self._change_qty(http, rng)
                    elif roll < 0.24:
                        path = rng.choice(
                            [
                                f"/batches/{rng.choice(self.skus)}-wh",
                                f"/allocations/o{index}-{rng.randrange(orders + 1)}",
                            ]
                        )
                        self._call(http, "read", "GET", path, None)
                    else:
                        orders += 1
                        orderid, sku = f"o{index}-{orders}", rng.choice(self.skus)
                        response = self._call(
                            http,
                            "allocate",
                            "POST",
                            "/allocate",
                            {"orderid": orderid, "sku": sku, "qty": rng.randint(1, 12)},
                        )
                        if response is not None and response.status_code == 201:
                            allocated.append((orderid, sku))
                except requests.RequestException as error:
                    self.counts.fail(f"{type(error).__name__}: {error}")

    def _change_qty(self, http: requests.Session, rng: random.Random) -> None:
        with self._refs_lock:
            ref = rng.choice(self._refs)
        batch = self._call(http, "read", "GET", f"/batches/{ref}", None)
        if batch is None or batch.status_code != 200:
            return
        current, allocated = batch.json()["qty"], batch.json()["allocated"]
        if allocated > 0 and rng.random() < 0.6:
            kind, qty = "cut_qty", rng.randrange(allocated)  # below what is allocated
        else:
            kind, qty = "raise_qty", current + rng.randint(1, 50)
        response = self._call(http, kind, "PATCH", f"/batches/{ref}", {"qty": qty})
        if response is not None and kind == "cut_qty":
            body = response.json()
            if body.get("reallocated") or body.get("unallocated"):
                with self.counts.lock:
                    self.counts.reallocating_cuts += 1

    def _add_batch(
        self, http: requests.Session, ref: str, sku: str, qty: int, eta: str | None
    ) -> None:
        body = {"ref": ref, "sku": sku, "qty": qty, "eta": eta}
        response = self._call(http, "add_batch", "POST", "/batches", body)
        if response is not None:
            with self._refs_lock:
                self._refs.append(ref)

    def _call(
        self, http: requests.Session, kind: str, method: str, path: str, body: Any
    ) -> requests.Response | None:
        """The response when its status is one expected for ``kind``; else None (counted)."""
        response = http.request(method, self.base_url + path, json=body, timeout=30)
        self.counts.record(kind, response.status_code)
        if response.status_code not in EXPECTED[kind]:
            self.counts.fail(f"{method} {path} -> {response.status_code} {response.text[:200]}")
            return None
        return response
