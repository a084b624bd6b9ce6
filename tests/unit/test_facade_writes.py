"""Serving the write group's routes: the owner of the product decides (legacy mocked with
``responses``, the new system's write path faked, the route table on SQLite)."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest
import responses
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import Engine, create_engine, update
from werkzeug.test import TestResponse

from examples import legacy_shop
from new_domain import (
    AlreadyAllocated,
    DomainError,
    DuplicateBatch,
    NotAllocated,
    NotOwned,
    OutOfStock,
    Owner,
    Ownership,
    OwnershipRule,
    QuantityChanged,
    UnknownBatch,
    UnknownSku,
)
from new_domain.adapters import orm
from new_domain.domain.ownership import State
from skeleton_app import FacadeSettings, RouteTable, close_app, create_app, facade_of
from skeleton_app.metrics import FacadeMetrics
from tests.e2e.processes import wait_for
from tests.unit.test_facade_fakes import (
    FakeReadModel,
    FakeWritePath,
    create_new_database,
    legacy_json,
    metric,
)

LEGACY = "http://legacy.test:8080"
ANY_LEGACY_URL = re.compile(r"http://legacy\.test:8080/.*")
LEGACY_ANSWER = {"answered": "by legacy"}


def bucket(sku: str) -> int:
    """docs/write-path.md: the first 8 bytes of the sku's SHA-256, mod 10000."""
    return int.from_bytes(hashlib.sha256(sku.encode("utf-8")).digest()[:8], "big") % 10000


def skus(below: int, above: int | None = None, count: int = 3) -> list[str]:
    """``count`` skus whose bucket is below ``below`` (and at least ``above``)."""
    found = []
    for n in range(100_000):
        sku = f"SKU-{n}"
        if bucket(sku) < below and (above is None or bucket(sku) >= above):
            found.append(sku)
            if len(found) == count:
                return found
    raise AssertionError("no such sku")


IN_10 = skus(1000)  # owned by new from canary 10 on
IN_10_TO_60 = skus(6000, above=1000)  # owned by new from canary 60 on
OUTSIDE_60 = skus(10000, above=6000)  # owned by legacy until new


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = create_engine(f"sqlite:///{tmp_path / 'new.db'}")
    create_new_database(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def table(engine: Engine) -> RouteTable:
    # every request waits for the reload it starts: a test's move is seen at once, even
    # on a loaded machine (the default wait, 0.2 s, would serve the snapshot before it)
    return RouteTable(engine, refresh_interval=0.0, refresh_wait=60.0)


@pytest.fixture
def write_path(table: RouteTable) -> FakeWritePath:
    return FakeWritePath(lambda: table.ownership("allocation"))


def facade(table: RouteTable, write_path: FakeWritePath, **options: Any) -> Flask:
    """The facade in front of the fake legacy upstream, with the write path ``write_path``."""
    options.setdefault("metrics", FacadeMetrics(multiprocess_mode=False))
    return create_app(
        LEGACY,
        "sqlite://",
        route_table=table,
        read_model=FakeReadModel(),
        lag_provider=None,
        write_path=write_path,
        **options,
    )


@pytest.fixture
def app(table: RouteTable, write_path: FakeWritePath) -> Iterator[Flask]:
    app = facade(table, write_path)
    yield app
    close_app(app)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def upstream() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        for method in (responses.POST, responses.PATCH):
            mock.add_callback(method, ANY_LEGACY_URL, callback=legacy_json(LEGACY_ANSWER, 299))
        yield mock


@pytest.fixture
def legacy(tmp_path: Path) -> FlaskClient:
    """The real legacy shop (SQLite): what legacy answers, for comparisons."""
    return legacy_shop.create_app(f"sqlite:///{tmp_path / 'legacy.db'}").test_client()


def move(table: RouteTable, engine: Engine, mode: str, *, settled: bool = True) -> None:
    """Move write group allocation; ``settled``: its fence came back (products changed
    hands), else the move is still waiting for it."""
    table.set("POST", "/allocate", mode, by="ops")
    if settled:
        with engine.begin() as conn:
            conn.execute(update(orm.write_ownership).values(state="active", previous_rule=None))


def post(client: FlaskClient, path: str, body: object, method: str = "POST") -> TestResponse:
    return client.open(path, method=method, data=json.dumps(body), content_type="application/json")


def allocate(client: FlaskClient, sku: str, orderid: str = "o-1", qty: int = 2) -> TestResponse:
    return post(client, "/allocate", {"orderid": orderid, "sku": sku, "qty": qty})


def answer(response: TestResponse) -> tuple[int, Any]:
    return response.status_code, response.get_json()


# -- legacy and shadow: legacy decides everything ------------------------------------


@pytest.mark.parametrize("mode", ["legacy", "shadow"])
def test_while_legacy_owns_every_product_writes_are_proxied(
    client: FlaskClient,
    app: Flask,
    table: RouteTable,
    engine: Engine,
    upstream: responses.RequestsMock,
    write_path: FakeWritePath,
    mode: str,
) -> None:
    if mode != "legacy":
        move(table, engine, mode)

    response = allocate(client, IN_10[0])
    patched = post(client, "/batches/b-9", {"qty": "not even valid"}, method="PATCH")

    assert answer(response) == (299, LEGACY_ANSWER)
    assert response.headers["X-Served-By"] == "legacy"
    assert answer(patched) == (299, LEGACY_ANSWER)  # legacy checks its bodies itself
    assert [c.request.url for c in upstream.calls] == [
        f"{LEGACY}/allocate",
        f"{LEGACY}/batches/b-9",
    ]
    assert json.loads(upstream.calls[0].request.body or b"") == {
        "orderid": "o-1",
        "sku": IN_10[0],
        "qty": 2,
    }
    assert write_path.decisions == []  # only the ownership, held during each proxied write
    assert write_path.calls == [("held",), ("held",)]
    assert (
        metric(
            app,
            "strangler_facade_write_answers_total",
            route="POST /allocate",
            owner="legacy",
            status="299",
        )
        == 1
    )


# -- new: the write path decides, answering as legacy does ---------------------------


@pytest.mark.parametrize("mode", ["legacy", "canary 30"])
def test_a_write_goes_to_legacy_while_the_ownership_row_is_held(
    client: FlaskClient,
    table: RouteTable,
    engine: Engine,
    write_path: FakeWritePath,
    mode: str,
) -> None:
    """A move waits for the lock: a write proxied under the old ownership commits
    before the move, so never after a takeover's fence."""
    move(table, engine, mode)
    held_when_called: list[bool] = []

    def legacy_answers(request: Any) -> tuple[int, dict[str, str], str]:
        held_when_called.append(write_path.holding)
        return 299, {"Content-Type": "application/json"}, json.dumps(LEGACY_ANSWER)

    with responses.RequestsMock() as mock:
        mock.add_callback(responses.POST, ANY_LEGACY_URL, callback=legacy_answers)
        response = allocate(client, OUTSIDE_60[0])

    assert answer(response) == (299, LEGACY_ANSWER)
    assert held_when_called == [True]
    # released on a serving thread once legacy answered, not waited for
    wait_for(lambda: not write_path.holding, 10, "the hold to be released")


def test_new_decides_every_write_route_with_legacys_success_answers(
    client: FlaskClient,
    app: Flask,
    table: RouteTable,
    engine: Engine,
    upstream: responses.RequestsMock,
    write_path: FakeWritePath,
) -> None:
    move(table, engine, "new")
    write_path.changed = QuantityChanged("LAMP", [("o-2", "b-2"), ("o-3", "b-3")], ["o-4"])

    added = post(client, "/batches", {"ref": "b-1", "sku": "LAMP", "qty": 10, "eta": "2027-01-15"})
    allocated = allocate(client, "LAMP")
    patched = post(client, "/batches/b-1", {"qty": 0}, method="PATCH")
    deallocated = post(client, "/deallocate", {"orderid": "o-1", "sku": "LAMP"})

    assert (added.status_code, added.data) == (
        201,
        b'{"eta":"2027-01-15","qty":10,"ref":"b-1","sku":"LAMP"}\n',
    )
    assert (allocated.status_code, allocated.data) == (201, b'{"batchref":"b-1"}\n')
    assert answer(patched) == (
        200,
        {
            "ref": "b-1",
            "qty": 0,
            "reallocated": [
                {"orderid": "o-2", "sku": "LAMP", "batchref": "b-2"},
                {"orderid": "o-3", "sku": "LAMP", "batchref": "b-3"},
            ],
            "unallocated": [{"orderid": "o-4", "sku": "LAMP"}],
        },
    )
    assert answer(deallocated) == (200, {"orderid": "o-1", "sku": "LAMP", "batchref": "b-1"})
    assert {r.headers["X-Served-By"] for r in (added, allocated, patched, deallocated)} == {"new"}
    assert {r.mimetype for r in (added, allocated, patched, deallocated)} == {"application/json"}
    assert write_path.calls == [
        ("add_batch", "b-1", "LAMP", 10, date(2027, 1, 15)),
        ("allocate", "o-1", "LAMP", 2),
        ("sku_of_batch", "b-1"),
        ("change_batch_quantity", "b-1", 0),
        ("deallocate", "o-1", "LAMP"),
    ]
    assert len(upstream.calls) == 0
    assert (
        metric(
            app,
            "strangler_facade_write_answers_total",
            route="POST /allocate",
            owner="new",
            status="201",
        )
        == 1
    )


def _legacy_state(legacy: FlaskClient, *requests: tuple[str, str, dict[str, Any]]) -> None:
    for method, path, body in requests:
        assert legacy.open(path, method=method, json=body).status_code < 300


BATCH = ("POST", "/batches", {"ref": "b-1", "sku": "LAMP", "qty": 5, "eta": None})
ALLOCATED = ("POST", "/allocate", {"orderid": "o-1", "sku": "LAMP", "qty": 2})


@pytest.mark.parametrize(
    ("refusal", "state", "request_"),
    [
        (
            UnknownSku("GHOST"),
            [],
            ("POST", "/allocate", {"orderid": "o", "sku": "GHOST", "qty": 1}),
        ),
        (
            OutOfStock("LAMP", 9),
            [BATCH],
            ("POST", "/allocate", {"orderid": "o", "sku": "LAMP", "qty": 9}),
        ),
        (AlreadyAllocated("o-1", "LAMP", "b-1"), [BATCH, ALLOCATED], ALLOCATED),
        (DuplicateBatch("b-1"), [BATCH], BATCH),
        (UnknownBatch("b-404"), [], ("PATCH", "/batches/b-404", {"qty": 3})),
        (
            NotAllocated("o-9", "LAMP"),
            [BATCH],
            ("POST", "/deallocate", {"orderid": "o-9", "sku": "LAMP"}),
        ),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, DomainError) else "",
)
def test_the_models_refusals_are_legacys_answers_word_for_word(
    client: FlaskClient,
    legacy: FlaskClient,
    table: RouteTable,
    engine: Engine,
    upstream: responses.RequestsMock,
    write_path: FakeWritePath,
    refusal: DomainError,
    state: list[tuple[str, str, dict[str, Any]]],
    request_: tuple[str, str, dict[str, Any]],
) -> None:
    move(table, engine, "new")
    _legacy_state(legacy, *state)
    write_path.refusal = refusal
    method, path, body = request_

    expected = legacy.open(path, method=method, json=body)
    got = client.open(path, method=method, json=body)

    assert expected.status_code in (400, 404, 409)
    assert (got.status_code, got.data) == (expected.status_code, expected.data)
    assert got.headers["X-Served-By"] == "new"
    assert len(upstream.calls) == 0


# -- bodies are checked exactly as legacy checks them --------------------------------

HOSTILE: list[tuple[str, str, bytes]] = [
    ("POST", "/allocate", b""),
    ("POST", "/allocate", b"not json"),
    ("POST", "/allocate", b'{"orderid": "o", "sku": "S", "qty": 1'),
    ("POST", "/allocate", b"[1, 2]"),
    ("POST", "/allocate", b"null"),
    ("POST", "/allocate", b"\xff\xfe\x00garbage"),
    ("POST", "/allocate", b"[" * 100_000),
    ("POST", "/allocate", b'{"orderid": "o\\u0000", "sku": "S", "qty": 1}'),
    ("POST", "/allocate", b'{"orderid": "o", "sku": "S\\u001b[2J", "qty": 1}'),
    ("POST", "/allocate", b'{"orderid": "o\x00", "sku": "S", "qty": 1}'),
    ("POST", "/allocate", b'{"orderid": "   ", "sku": "S", "qty": 1}'),
    ("POST", "/allocate", b'{"orderid": 7, "sku": "S", "qty": 1}'),
    ("POST", "/allocate", b'{"orderid": "o", "sku": ["S"], "qty": 1}'),
    ("POST", "/allocate", b'{"orderid": "o", "sku": "S", "qty": true}'),
    ("POST", "/allocate", b'{"orderid": "o", "sku": "S", "qty": 1.5}'),
    ("POST", "/allocate", b'{"orderid": "o", "sku": "S", "qty": "1"}'),
    ("POST", "/allocate", b'{"orderid": "o", "sku": "S", "qty": 0}'),
    ("POST", "/allocate", b'{"orderid": "o", "sku": "S", "qty": 2147483648}'),
    ("POST", "/allocate", b'{"orderid": "o", "sku": "S", "qty": 1e400}'),
    ("POST", "/allocate", b'{"orderid": "o", "sku": "S"}'),
    ("POST", "/allocate", b'{"orderid": "' + b"x" * 65 + b'", "sku": "S", "qty": 1}'),
    ("POST", "/deallocate", b'{"orderid": "o"}'),
    ("POST", "/deallocate", b'{"orderid": "o", "sku": {}}'),
    ("POST", "/batches", b'{"ref": "b", "sku": "S", "qty": 1}'),
    ("POST", "/batches", b'{"ref": "b", "sku": "S", "qty": 1, "eta": "2027-02-30"}'),
    ("POST", "/batches", b'{"ref": "b", "sku": "S", "qty": 1, "eta": "15/01/2027"}'),
    ("POST", "/batches", b'{"ref": "b", "sku": "S", "qty": 1, "eta": 20270115}'),
    ("POST", "/batches", b'{"ref": "", "sku": "S", "qty": 1, "eta": null}'),
    ("PATCH", "/batches/b-1", b'{"qty": -1}'),
    ("PATCH", "/batches/b-1", b'{"qty": null}'),
    ("PATCH", "/batches/b-1", b"{}"),
    (
        "POST",
        "/allocate",
        b'{"orderid": "o", "sku": "S", "qty": 1, "pad": "' + b"x" * (1024 * 1024) + b'"}',
    ),
]


@pytest.mark.parametrize(
    ("method", "path", "raw"), HOSTILE, ids=[f"{m} {p} {r[:24]!r}" for m, p, r in HOSTILE]
)
@pytest.mark.parametrize("mode", ["new", "canary 10"])
def test_hostile_bodies_get_legacys_refusal_and_decide_nothing(
    client: FlaskClient,
    legacy: FlaskClient,
    table: RouteTable,
    engine: Engine,
    upstream: responses.RequestsMock,
    write_path: FakeWritePath,
    mode: str,
    method: str,
    path: str,
    raw: bytes,
) -> None:
    move(table, engine, mode)
    headers = {"Content-Type": "application/json"}

    expected = legacy.open(path, method=method, data=raw, headers=headers)
    got = client.open(path, method=method, data=raw, headers=headers)

    assert expected.status_code in (400, 413), expected.data
    assert (got.status_code, got.data) == (expected.status_code, expected.data)
    assert got.headers["X-Served-By"] == "facade"
    assert write_path.decisions == []
    assert len(upstream.calls) == 0


def test_a_body_declared_larger_than_legacy_takes_is_refused_unread(
    client: FlaskClient, table: RouteTable, engine: Engine, write_path: FakeWritePath
) -> None:
    move(table, engine, "new")

    declared = {"CONTENT_LENGTH": str(2 * 1024 * 1024)}
    got = client.post("/allocate", data=b"{}", environ_overrides=declared)

    assert answer(got) == (
        413,
        {
            "error": "request entity too large",
            "detail": "request body is larger than 1048576 bytes",
        },
    )
    assert write_path.decisions == []


# -- canary: products by the sku's bucket ---------------------------------------------


def test_canary_gives_new_the_products_whose_sku_hashes_below_the_share_sticky_as_it_grows(
    client: FlaskClient,
    table: RouteTable,
    engine: Engine,
    upstream: responses.RequestsMock,
    write_path: FakeWritePath,
) -> None:
    move(table, engine, "canary 10")

    served = {sku: allocate(client, sku).headers["X-Served-By"] for sku in IN_10 + IN_10_TO_60}
    assert served == {**dict.fromkeys(IN_10, "new"), **dict.fromkeys(IN_10_TO_60, "legacy")}
    again = {sku: allocate(client, sku).headers["X-Served-By"] for sku in IN_10}
    assert again == dict.fromkeys(IN_10, "new")

    move(table, engine, "canary 60")
    grown = {
        sku: allocate(client, sku).headers["X-Served-By"]
        for sku in IN_10 + IN_10_TO_60 + OUTSIDE_60
    }
    assert grown == {
        **dict.fromkeys(IN_10 + IN_10_TO_60, "new"),
        **dict.fromkeys(OUTSIDE_60, "legacy"),
    }
    assert [c[2] for c in write_path.decisions] == IN_10 * 3 + IN_10_TO_60
    assert len(upstream.calls) == len(IN_10_TO_60) + len(OUTSIDE_60)


def test_a_batch_ref_is_resolved_to_its_product_in_the_new_model(
    client: FlaskClient,
    table: RouteTable,
    engine: Engine,
    upstream: responses.RequestsMock,
    write_path: FakeWritePath,
) -> None:
    move(table, engine, "canary 10")
    write_path.batches = {"ours": IN_10[0], "theirs": OUTSIDE_60[0]}

    ours = post(client, "/batches/ours", {"qty": 4}, method="PATCH")
    theirs = post(client, "/batches/theirs", {"qty": 4}, method="PATCH")
    unknown = post(client, "/batches/nobody-knows", {"qty": 4}, method="PATCH")

    assert (ours.status_code, ours.headers["X-Served-By"]) == (200, "new")
    assert ours.get_json()["ref"] == "ours"
    assert answer(theirs) == (299, LEGACY_ANSWER)
    # a batch the new model does not know may be legacy's: legacy answers it in canary
    assert answer(unknown) == (299, LEGACY_ANSWER)
    assert [c.request.url for c in upstream.calls] == [
        f"{LEGACY}/batches/theirs",
        f"{LEGACY}/batches/nobody-knows",
    ]
    assert write_path.decisions == [("change_batch_quantity", "ours", 4)]


def test_in_new_an_unknown_batch_is_the_new_systems_404(
    client: FlaskClient,
    legacy: FlaskClient,
    table: RouteTable,
    engine: Engine,
    upstream: responses.RequestsMock,
    write_path: FakeWritePath,
) -> None:
    move(table, engine, "new")
    write_path.refusal = UnknownBatch("nobody-knows")

    got = post(client, "/batches/nobody-knows", {"qty": 4}, method="PATCH")

    expected = legacy.patch("/batches/nobody-knows", json={"qty": 4})
    assert (got.status_code, got.data) == (404, expected.data)
    assert write_path.decisions == [("change_batch_quantity", "nobody-knows", 4)]
    assert len(upstream.calls) == 0


# -- products changing hands ----------------------------------------------------------


def test_while_a_move_waits_for_its_fence_the_products_changing_hands_get_503(
    client: FlaskClient,
    app: Flask,
    table: RouteTable,
    engine: Engine,
    upstream: responses.RequestsMock,
    write_path: FakeWritePath,
) -> None:
    move(table, engine, "canary 10", settled=False)
    write_path.batches = {"b-7": IN_10[1]}

    changing = allocate(client, IN_10[0])
    by_ref = post(client, "/batches/b-7", {"qty": 1}, method="PATCH")
    staying = allocate(client, OUTSIDE_60[0])

    assert changing.status_code == 503
    assert changing.headers["Retry-After"] == "1"
    assert changing.headers["X-Served-By"] == "facade"
    assert changing.get_json() == {
        "error": "service unavailable",
        "detail": f"product {IN_10[0]} is changing owner; retry",
    }
    assert answer(by_ref) == (
        503,
        {
            "error": "service unavailable",
            "detail": f"product {IN_10[1]} is changing owner; retry",
        },
    )
    assert answer(staying) == (299, LEGACY_ANSWER)  # legacy's before and after
    assert write_path.decisions == []
    assert [c.request.url for c in upstream.calls] == [f"{LEGACY}/allocate"]
    assert (
        metric(
            app,
            "strangler_facade_write_answers_total",
            route="POST /allocate",
            owner="changing",
            status="503",
        )
        == 1
    )


def test_a_hand_back_keeps_the_new_systems_products_waiting_until_its_fence(
    client: FlaskClient, table: RouteTable, engine: Engine, upstream: responses.RequestsMock
) -> None:
    move(table, engine, "canary 10")
    table.rollback(by="oncall", reason="hand back")

    handed_back = allocate(client, IN_10[0])
    legacys = allocate(client, OUTSIDE_60[0])

    assert handed_back.status_code == 503 and handed_back.headers["Retry-After"] == "1"
    assert answer(legacys) == (299, LEGACY_ANSWER)


@pytest.mark.parametrize(
    ("owner", "expected"),
    [
        (Owner.LEGACY, (299, LEGACY_ANSWER)),
        (
            Owner.CHANGING,
            (
                503,
                {"error": "service unavailable", "detail": "product LAMP is changing owner; retry"},
            ),
        ),
    ],
)
def test_a_stale_snapshot_is_corrected_by_the_write_paths_own_check(
    client: FlaskClient,
    table: RouteTable,
    engine: Engine,
    upstream: responses.RequestsMock,
    write_path: FakeWritePath,
    owner: Owner,
    expected: tuple[int, Any],
) -> None:
    move(table, engine, "new")
    # the snapshot says new; the store (which the write path's own check reads) says
    # legacy, or a hand-back waiting for its fence
    stored = {
        Owner.LEGACY: Ownership("allocation", epoch=2),
        Owner.CHANGING: Ownership(
            "allocation",
            previous_rule=OwnershipRule("new"),
            epoch=2,
            state=State.MOVING,
        ),
    }[owner]
    write_path.stored = lambda: stored
    write_path.refusal = NotOwned("LAMP", owner)

    got = allocate(client, "LAMP")

    assert answer(got) == expected
    assert len(upstream.calls) == (1 if owner is Owner.LEGACY else 0)


def test_a_snapshot_still_showing_the_move_is_read_again_before_a_503(
    engine: Engine, upstream: responses.RequestsMock
) -> None:
    """The facade's snapshot of the ownership is only refreshed every interval: when it
    still shows a move whose fence has come back, the write is not refused for it."""
    stale = RouteTable(engine, refresh_interval=3600.0)
    fresh = RouteTable(engine, refresh_interval=0.0, refresh_wait=60.0)
    write_path = FakeWritePath(lambda: fresh.ownership("allocation"))
    app = facade(stale, write_path)
    try:
        move(stale, engine, "canary 10", settled=False)
        client = app.test_client()
        assert allocate(client, IN_10[0], "o-1").status_code == 503
        move(fresh, engine, "canary 10")  # the fence came back; the stale snapshot misses it

        settled = allocate(client, IN_10[0], "o-2")
        legacys = allocate(client, OUTSIDE_60[0], "o-3")
    finally:
        close_app(app)

    assert (settled.status_code, settled.headers["X-Served-By"]) == (201, "new")
    assert answer(legacys) == (299, LEGACY_ANSWER)
    assert [c[1:3] for c in write_path.decisions] == [("o-2", IN_10[0])]


# -- failures -----------------------------------------------------------------------------


def test_a_write_the_new_system_may_have_applied_is_never_sent_to_legacy_too(
    table: RouteTable, engine: Engine, upstream: responses.RequestsMock, write_path: FakeWritePath
) -> None:
    app = facade(table, write_path, settings=FacadeSettings(new_timeout=0.2))
    client = app.test_client()
    move(table, engine, "new")
    released = write_path.block()
    try:
        timed_out = allocate(client, "LAMP")
    finally:
        released.set()
    write_path.gate = None
    write_path.refusal = RuntimeError("database gone")
    failed = allocate(client, "LAMP")
    close_app(app)

    assert answer(timed_out) == (
        504,
        {"error": "gateway timeout", "detail": "the new system did not answer within 0.2 s"},
    )
    assert answer(failed) == (
        502,
        {"error": "bad gateway", "detail": "the new system failed to answer POST /allocate"},
    )
    assert len(upstream.calls) == 0


def test_a_hung_new_database_costs_a_legacy_write_a_503_and_the_late_hold_is_released(
    table: RouteTable, upstream: responses.RequestsMock, write_path: FakeWritePath
) -> None:
    """The ownership row cannot be held in time (a hung new database, a move that
    holds it): nobody decides, and a hold that comes through later is let go at once."""
    app = facade(table, write_path, settings=FacadeSettings(new_timeout=0.2))
    write_path.hold_gate = threading.Event()
    try:
        refused = allocate(app.test_client(), OUTSIDE_60[0])
        assert write_path.calls == [("held",)] and not write_path.holding
        write_path.hold_gate.set()  # the database answers after all
        wait_for(lambda: write_path.released == 1, 10, "the late hold to be released")
    finally:
        write_path.hold_gate.set()
        close_app(app)

    assert refused.status_code == 503 and refused.headers["Retry-After"] == "1"
    assert refused.json == {
        "error": "service unavailable",
        "detail": "the ownership of write group allocation could not be read; retry",
    }
    assert not write_path.holding
    assert len(upstream.calls) == 0


def test_a_hold_that_cannot_be_let_go_costs_one_log_line_and_not_the_answer(
    client: FlaskClient,
    upstream: responses.RequestsMock,
    write_path: FakeWritePath,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The new database went away while legacy decided: its answer stands, and the
    failed release is one warning line (a traceback would read as a crash)."""
    write_path.release_error = RuntimeError("the connection is lost")
    with caplog.at_level(logging.WARNING, logger="skeleton_app.new_system"):
        response = allocate(client, OUTSIDE_60[0])
        wait_for(lambda: write_path.released == 1, 10, "the hold to be let go")
        wait_for(lambda: bool(caplog.records), 10, "the warning")

    assert answer(response) == (299, LEGACY_ANSWER)
    [record] = caplog.records
    assert record.getMessage() == (
        "releasing a hold on the new system failed: the connection is lost"
    )
    assert record.exc_info is None


def test_writes_wait_while_the_ownership_was_never_read(
    tmp_path: Path, upstream: responses.RequestsMock, write_path: FakeWritePath
) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'unmigrated.db'}")  # no tables at all
    app = facade(RouteTable(engine), write_path)

    got = allocate(app.test_client(), "LAMP")
    close_app(app)
    engine.dispose()

    assert got.status_code == 503 and got.headers["Retry-After"] == "1"
    assert got.get_json() == {
        "error": "service unavailable",
        "detail": "the ownership of write group allocation could not be read yet; retry",
    }
    assert len(upstream.calls) == 0 and write_path.calls == []


def test_a_facade_without_a_write_path_cannot_serve_a_group_past_shadow(
    table: RouteTable, engine: Engine, upstream: responses.RequestsMock
) -> None:
    app = create_app(
        LEGACY, "sqlite://", route_table=table, read_model=FakeReadModel(), lag_provider=None
    )
    move(table, engine, "new")

    got = allocate(app.test_client(), "LAMP")
    close_app(app)

    assert got.status_code == 503
    assert got.get_json()["detail"] == (
        "the new system's write path for POST /allocate is not configured"
    )
    assert len(upstream.calls) == 0


# -- metrics -------------------------------------------------------------------------------


class DecisionsReadModel(FakeReadModel):
    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    def decision_parity(self) -> dict[str, Any]:
        from new_domain import DecisionCount

        self.reads += 1
        return {
            "POST /allocate": DecisionCount("POST /allocate", 99, 1),
            "POST /batches": DecisionCount("POST /batches", 10, 0),
            "unclassified": DecisionCount("unclassified", 0, 3),
        }


def test_metrics_show_decision_parity_per_write_route_read_at_most_every_interval(
    table: RouteTable,
) -> None:
    read_model = DecisionsReadModel()
    app = create_app(
        LEGACY,
        "sqlite://",
        route_table=table,
        read_model=read_model,
        lag_provider=None,
        metrics=FacadeMetrics(multiprocess_mode=False),
        settings=FacadeSettings(decision_parity_interval=3600),
    )
    client = app.test_client()

    first = client.get("/metrics").text
    client.get("/metrics")
    close_app(app)

    assert 'strangler_facade_decision_parity_percent{route="POST /allocate"} 99.0' in first
    assert 'strangler_facade_decision_parity_percent{route="POST /batches"} 100.0' in first
    assert "unclassified" not in first.split("decision_parity_samples")[0]
    assert (
        'strangler_facade_decision_parity_samples{route="POST /allocate",verdict="differ"} 1.0'
        in first
    )
    assert (
        'strangler_facade_decision_parity_samples{route="unclassified",verdict="differ"} 3.0'
        in first
    )
    assert read_model.reads == 1
    assert facade_of(app).decisions is not None
