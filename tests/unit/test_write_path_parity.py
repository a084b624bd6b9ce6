"""The new write path decides what legacy decides: the same requests, from the same
starting state, run against the legacy shop (its HTTP API on its own SQLite database) and
against :class:`WritePath` (a new database whose products the new system owns) give the
same answers, refusal for refusal, and leave the same batches.

The new side's answer is built the way the facade builds it: the write path's result in
legacy's answer shape, a refusal as legacy's status and ``error`` for the error class
with the error's message as ``detail``.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select

from examples.legacy_shop import create_app
from new_domain import (
    AlreadyAllocated,
    DomainError,
    DuplicateBatch,
    NotAllocated,
    OutOfStock,
    UnknownBatch,
    UnknownSku,
    WritePath,
    move_ownership,
)
from new_domain.adapters import orm
from new_domain.adapters.database import create_engine
from new_domain.adapters.ownership import settle_ownership
from tests.integration.consumer_streams import migrated_sqlite_url

LEGACY_REFUSALS: dict[type[DomainError], tuple[int, str]] = {
    UnknownSku: (400, "unknown sku"),
    OutOfStock: (409, "out of stock"),
    AlreadyAllocated: (409, "already allocated"),
    DuplicateBatch: (409, "duplicate batch"),
    UnknownBatch: (404, "not found"),
    NotAllocated: (404, "not found"),
}

Answer = tuple[int, Any]


@dataclass(frozen=True)
class Request:
    route: str  # "POST /batches", "PATCH /batches/<ref>", "POST /allocate", "POST /deallocate"
    body: dict[str, Any]
    ref: str = ""  # PATCH's batch

    def __str__(self) -> str:
        return f"{self.route.replace('<ref>', self.ref)} {self.body}"


def batch(ref: str, sku: str, qty: int, eta: str | None = None) -> Request:
    return Request("POST /batches", {"ref": ref, "sku": sku, "qty": qty, "eta": eta})


def allocate(orderid: str, sku: str, qty: int) -> Request:
    return Request("POST /allocate", {"orderid": orderid, "sku": sku, "qty": qty})


def deallocate(orderid: str, sku: str) -> Request:
    return Request("POST /deallocate", {"orderid": orderid, "sku": sku})


def change(ref: str, qty: int) -> Request:
    return Request("PATCH /batches/<ref>", {"qty": qty}, ref)


class Shops:
    """Legacy and the new write path, side by side."""

    def __init__(self, legacy: FlaskClient, write_path: WritePath, new_db_url: str) -> None:
        self.legacy, self.write_path, self.new_db_url = legacy, write_path, new_db_url

    def legacy_answer(self, request: Request) -> Answer:
        method, path = request.route.split(" ")
        response = self.legacy.open(
            path.replace("<ref>", request.ref), method=method, json=request.body
        )
        return response.status_code, response.get_json()

    def new_answer(self, request: Request) -> Answer:
        try:
            return self._decide(request)
        except DomainError as refused:
            status, error = LEGACY_REFUSALS[type(refused)]
            extra = {"sku": refused.sku} if isinstance(refused, OutOfStock) else {}
            return status, {"error": error, "detail": str(refused), **extra}

    def _decide(self, request: Request) -> Answer:
        body, w = request.body, self.write_path
        match request.route:
            case "POST /batches":
                eta = None if body["eta"] is None else date.fromisoformat(body["eta"])
                w.add_batch(body["ref"], body["sku"], body["qty"], eta)
                return 201, body
            case "POST /allocate":
                return 201, {"batchref": w.allocate(body["orderid"], body["sku"], body["qty"])}
            case "POST /deallocate":
                batchref = w.deallocate(body["orderid"], body["sku"])
                return 200, {**body, "batchref": batchref}
        changed = w.change_batch_quantity(request.ref, body["qty"])
        return 200, {
            "ref": request.ref,
            "qty": body["qty"],
            "reallocated": [
                {"orderid": o, "sku": changed.sku, "batchref": b} for o, b in changed.reallocated
            ],
            "unallocated": [{"orderid": o, "sku": changed.sku} for o in changed.unallocated],
        }

    def run(self, requests: list[Request]) -> list[tuple[str, Answer, Answer]]:
        """Each request's (request, legacy's answer, the new answer)."""
        return [(str(r), self.legacy_answer(r), self.new_answer(r)) for r in requests]

    def legacy_batches(self, refs: set[str]) -> dict[str, tuple[int, int]]:
        found = {}
        for ref in refs:
            response = self.legacy.get(f"/batches/{ref}")
            if response.status_code == 200:
                found[ref] = (response.json["qty"], response.json["allocated"])  # type: ignore[index]
        return found

    def new_batches(self) -> dict[str, tuple[int, int]]:
        b = orm.batches
        engine = create_engine(self.new_db_url)
        try:
            with engine.connect() as connection:
                rows = connection.execute(
                    select(b.c.reference, b.c.purchased_quantity, b.c.allocated_quantity)
                ).all()
        finally:
            engine.dispose()
        return {ref: (qty, allocated) for ref, qty, allocated in rows}


@pytest.fixture
def shops(tmp_path: Path) -> Iterator[Shops]:
    legacy = create_app(f"sqlite:///{tmp_path / 'legacy.db'}").test_client()
    new_db_url = migrated_sqlite_url(tmp_path)
    engine = create_engine(new_db_url, for_writes=True)
    with engine.begin() as connection:
        settle_ownership(
            connection, "allocation", move_ownership(connection, "allocation", "new", "ops").epoch
        )
    engine.dispose()
    with WritePath(new_db_url) as write_path:
        yield Shops(legacy, write_path, new_db_url)


STOCK = [
    batch("w1", "LAMP", 10),
    batch("s-late", "LAMP", 10, "2027-03-01"),
    batch("s-z", "LAMP", 5, "2027-02-01"),  # created before s-a: preferred on the same eta
    batch("s-a", "LAMP", 5, "2027-02-01"),
    batch("r1", "RUG", 3),
]

SCENARIOS = {
    "POST /batches": [
        batch("b-new", "CHAIR", 7, "2027-01-01"),
        batch("w1", "LAMP", 4),  # this product's reference
        batch("r1", "LAMP", 4),  # another product's reference
        batch("w2", "LAMP", 1),
    ],
    "POST /allocate": [
        allocate("o1", "LAMP", 8),  # warehouse first
        allocate("o2", "LAMP", 3),  # then the earliest eta, ties by creation
        allocate("o3", "LAMP", 3),
        allocate("o1", "LAMP", 1),  # already allocated
        allocate("o4", "LAMP", 11),  # out of stock
        allocate("o5", "NOPE", 1),  # unknown sku
        allocate("o6", "LAMP", 2),
        allocate("o1", "RUG", 3),  # same order, another product
    ],
    "POST /deallocate": [
        allocate("o1", "LAMP", 8),
        deallocate("o1", "LAMP"),
        deallocate("o1", "LAMP"),  # not allocated any more
        deallocate("o1", "NOPE"),  # unknown sku
        deallocate("never", "LAMP"),
        allocate("o2", "LAMP", 2),
        deallocate("o2", "RUG"),  # the order holds no RUG
        deallocate("o2", "LAMP"),
    ],
    "PATCH /batches/<ref>": [
        allocate("o1", "LAMP", 4),  # w1
        allocate("o2", "LAMP", 3),  # w1
        allocate("o3", "LAMP", 3),  # w1, full
        allocate("o4", "LAMP", 5),  # s-z
        allocate("o5", "LAMP", 5),  # s-a
        allocate("o6", "LAMP", 6),  # s-late, 4 left
        change("w1", 3),  # all off, newest first; o1 -> s-late, o2 -> w1, o3 nowhere
        change("w1", 3),  # nothing to move
        change("s-late", 20),  # raised
        change("nope", 1),  # unknown batch
        change("s-late", 5),  # o1 and o6 off; o6 fits nowhere, o1 back on s-late
        deallocate("o3", "LAMP"),  # left unallocated: legacy keeps its line
        allocate("o3", "LAMP", 1),  # and allocates it again, with a new quantity
        change("w1", 0),  # o2 off and nowhere to go
    ],
}


@pytest.mark.parametrize("route", SCENARIOS)
def test_each_write_route_decides_and_refuses_as_legacy(shops: Shops, route: str) -> None:
    shops.run(STOCK)
    answers = shops.run(SCENARIOS[route])
    assert [(r, new) for r, _, new in answers] == [(r, legacy) for r, legacy, _ in answers]
    assert any(legacy[0] >= 400 for _, legacy, _ in answers)  # refusals were compared too
    refs = set(shops.new_batches()) | {"w2", "b-new"}
    assert shops.new_batches() == shops.legacy_batches(refs)


def random_requests(seed: int, count: int) -> list[Request]:
    """A busy, unlucky day: few products and orders, many refusals, many cuts."""
    rng = random.Random(seed)
    skus, refs = ["LAMP", "RUG", "NOPE"], [f"b{i}" for i in range(8)]
    orders, etas = [f"o{i}" for i in range(10)], [None, "2027-01-01", "2027-02-01"]
    requests = []
    for _ in range(count):
        kind = rng.choices(["batch", "allocate", "deallocate", "change"], [2, 6, 3, 3])[0]
        if kind == "batch":
            eta = rng.choice(etas)
            requests.append(batch(rng.choice(refs), rng.choice(skus[:2]), rng.randint(1, 12), eta))
        elif kind == "allocate":
            requests.append(allocate(rng.choice(orders), rng.choice(skus), rng.randint(1, 6)))
        elif kind == "deallocate":
            requests.append(deallocate(rng.choice(orders), rng.choice(skus)))
        else:
            requests.append(change(rng.choice(refs + ["nope"]), rng.randint(0, 12)))
    return requests


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_random_day_gets_legacys_answers_one_by_one(shops: Shops, seed: int) -> None:
    answers = shops.run(random_requests(seed, 250))
    assert [(r, new) for r, _, new in answers] == [(r, legacy) for r, legacy, _ in answers]
    statuses = {legacy[0] for _, legacy, _ in answers}
    assert {200, 201, 400, 404, 409} <= statuses
    moved = [legacy for _, legacy, _ in answers if isinstance(legacy[1], dict)]
    assert any(answer.get("reallocated") or answer.get("unallocated") for _, answer in moved)
    assert shops.new_batches() == shops.legacy_batches(
        set(shops.new_batches()) | set(f"b{i}" for i in range(8))
    )
