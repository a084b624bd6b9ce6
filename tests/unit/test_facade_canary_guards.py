"""Canary splits that stick, and the guards that send requests back to legacy."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import responses
from flask import Flask, Response, jsonify
from sqlalchemy import Engine, create_engine

from skeleton_app import FacadeSettings, NewRequest, RouteTable, close_app, create_app
from skeleton_app.canary import BUCKETS, bucket, request_key, serves_new
from skeleton_app.new_routes import NEW_HANDLERS
from skeleton_app.read_model import ReadModel
from tests.unit.test_facade_fakes import (
    LEGACY,
    ROUTE,
    Allocation,
    BufferedClient,
    FakeReadModel,
    Lag,
    create_new_database,
    legacy_json,
    metric,
)

ANY_LEGACY = re.compile(r"http://legacy\.test:8080/.*")
ORDERS = [f"order-{n}" for n in range(200)]


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = create_engine(f"sqlite:///{tmp_path / 'new.db'}")
    create_new_database(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def table(engine: Engine) -> RouteTable:
    return RouteTable(engine, refresh_interval=0.0)


@pytest.fixture
def read_model() -> FakeReadModel:
    return FakeReadModel({o: [Allocation("RED-CHAIR", "b-1")] for o in ORDERS})


@pytest.fixture
def upstream() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.add_callback(
            responses.GET,
            ANY_LEGACY,
            callback=legacy_json([{"sku": "RED-CHAIR", "batchref": "b-1"}]),
        )
        yield mock


@pytest.fixture
def lag() -> Lag:
    return Lag(0.0)


@pytest.fixture
def app(table: RouteTable, read_model: FakeReadModel, lag: Lag) -> Iterator[Flask]:
    settings = FacadeSettings(new_timeout=0.3, max_lag=5.0, lag_check_interval=0.0)
    app = create_app(
        LEGACY,
        "sqlite://",
        route_table=table,
        read_model=read_model,
        settings=settings,
        lag_provider=lag,
    )
    app.test_client_class = BufferedClient
    yield app
    close_app(app)


def served_by(app: Flask, orders: list[str], **headers: str) -> dict[str, str]:
    client = app.test_client()
    return {
        o: client.get(f"/allocations/{o}", headers=headers).headers["X-Served-By"] for o in orders
    }


# -- the split -------------------------------------------------------------------------


def test_the_bucket_is_a_stable_hash_of_route_and_key() -> None:
    digest = hashlib.sha256(b"GET /allocations/<orderid>\norder-1").digest()
    expected = int.from_bytes(digest[:8], "big") % BUCKETS

    assert bucket("GET", ROUTE, "order-1") == expected
    keys = [f"o-{n}" for n in range(5)]
    assert [bucket("GET", "/other/<id>", k) for k in keys] != [
        bucket("GET", ROUTE, k) for k in keys
    ]
    assert not serves_new("GET", ROUTE, "order-1", 0)
    assert serves_new("GET", ROUTE, "order-1", 100)
    assert serves_new("GET", ROUTE, "order-1", expected / 100 + 0.01)
    assert not serves_new("GET", ROUTE, "order-1", expected / 100)


def test_canary_sends_about_its_share_to_new_and_a_key_stays_where_it_is(
    app: Flask, table: RouteTable, upstream: responses.RequestsMock
) -> None:
    table.set("GET", ROUTE, "canary 10", by="ops")
    at_10 = served_by(app, ORDERS)
    again = served_by(app, ORDERS)
    table.set("GET", ROUTE, "canary 50", by="ops")
    at_50 = served_by(app, ORDERS)

    new_at_10 = {o for o, who in at_10.items() if who == "new"}
    new_at_50 = {o for o, who in at_50.items() if who == "new"}
    assert at_10 == again  # sticky
    assert 6 <= len(new_at_10) <= 40  # 10% of 200, loosely
    assert 70 <= len(new_at_50) <= 130
    assert new_at_10 <= new_at_50  # served by new at 10% -> still new at 50%
    assert set(at_50.values()) == {"legacy", "new"}
    route = f"GET {ROUTE}"
    assert metric(
        app, "strangler_facade_requests_total", route=route, mode="canary", served_by="new"
    ) == len(new_at_10) * 2 + len(new_at_50)


def test_canary_0_and_100_are_all_legacy_and_all_new(
    app: Flask, table: RouteTable, upstream: responses.RequestsMock
) -> None:
    table.set("GET", ROUTE, "canary 0", by="ops")
    assert set(served_by(app, ORDERS[:50]).values()) == {"legacy"}
    table.set("GET", ROUTE, "canary 100", by="ops")
    assert set(served_by(app, ORDERS[:50]).values()) == {"new"}


def test_the_canary_key_can_come_from_a_header(
    app: Flask, table: RouteTable, upstream: responses.RequestsMock
) -> None:
    table.set("GET", ROUTE, "canary 50", by="ops", options={"canary_key": "header:X-Customer"})
    customers = [f"c-{n}" for n in range(60)]
    sides = {c: set(served_by(app, ORDERS[:5], **{"X-Customer": c}).values()) for c in customers}

    assert all(len(side) == 1 for side in sides.values())  # one customer, one side
    assert {next(iter(s)) for s in sides.values()} == {"legacy", "new"}


def test_request_keys() -> None:
    from werkzeug.datastructures import Headers, MultiDict

    headers = Headers({"X-Customer": "c-1", "Cookie": "session=s-9; theme=dark"})
    query = MultiDict({"tenant": "t-3"})
    args = {"region": "eu", "orderid": "o-1"}

    assert request_key("path", "/p", args, headers, query) == "eu/o-1"
    assert request_key("path:orderid", "/p", args, headers, query) == "o-1"
    assert request_key("header:X-Customer", "/p", args, headers, query) == "c-1"
    assert request_key("query:tenant", "/p", args, headers, query) == "t-3"
    assert request_key("cookie:session", "/p", args, headers, query) == "s-9"
    assert request_key("header:X-Missing", "/p", args, headers, query) == "/p"


# -- guards ----------------------------------------------------------------------------


def test_a_failing_new_system_falls_back_to_legacy_and_is_counted(
    app: Flask, table: RouteTable, upstream: responses.RequestsMock, read_model: FakeReadModel
) -> None:
    table.set("GET", ROUTE, "new", by="ops")
    read_model.fail = True

    response = app.test_client().get("/allocations/order-1")

    assert (response.status_code, response.headers["X-Served-By"]) == (200, "legacy")
    assert response.get_json() == [{"sku": "RED-CHAIR", "batchref": "b-1"}]
    assert (
        metric(app, "strangler_facade_fallbacks_total", route=f"GET {ROUTE}", reason="error") == 1
    )


def test_a_slow_new_system_falls_back_to_legacy_after_its_timeout(
    app: Flask, table: RouteTable, upstream: responses.RequestsMock, read_model: FakeReadModel
) -> None:
    table.set("GET", ROUTE, "canary 100", by="ops")
    release = read_model.block()

    response = app.test_client().get("/allocations/order-1")

    release.set()
    assert (response.status_code, response.headers["X-Served-By"]) == (200, "legacy")
    assert (
        metric(app, "strangler_facade_fallbacks_total", route=f"GET {ROUTE}", reason="timeout") == 1
    )


@pytest.mark.parametrize("mode", ["new", "canary 100"])
def test_new_and_canary_serve_from_legacy_while_the_lag_is_too_high(
    app: Flask,
    table: RouteTable,
    upstream: responses.RequestsMock,
    lag: Lag,
    mode: str,
    read_model: FakeReadModel,
) -> None:
    table.set("GET", ROUTE, mode, by="ops", force=True)
    client = app.test_client()
    assert client.get("/allocations/order-1").headers["X-Served-By"] == "new"

    lag.value = 5.5
    lagging = client.get("/allocations/order-1")
    assert metric(app, "strangler_facade_lag_guard_tripped") == 1
    assert metric(app, "strangler_facade_lag_seconds") == 5.5
    lag.value = 4.0
    recovered = client.get("/allocations/order-1")
    assert metric(app, "strangler_facade_lag_guard_tripped") == 0

    assert lagging.headers["X-Served-By"] == "legacy"
    assert recovered.headers["X-Served-By"] == "new"
    assert read_model.asked == ["order-1", "order-1"]
    assert metric(app, "strangler_facade_fallbacks_total", route=f"GET {ROUTE}", reason="lag") == 1


def test_an_unreadable_lag_counts_as_too_high_and_an_unknown_one_does_not(
    app: Flask, table: RouteTable, upstream: responses.RequestsMock, lag: Lag
) -> None:
    table.set("GET", ROUTE, "new", by="ops")
    client = app.test_client()

    lag.error = RuntimeError("lag table missing")
    assert client.get("/allocations/order-1").headers["X-Served-By"] == "legacy"
    lag.error, lag.value = None, None
    assert client.get("/allocations/order-1").headers["X-Served-By"] == "new"


def test_the_lag_is_read_at_most_once_per_check_interval(
    table: RouteTable, read_model: FakeReadModel, upstream: responses.RequestsMock
) -> None:
    calls: list[int] = []

    def lag() -> float:
        calls.append(1)
        return 0.0

    app = create_app(
        LEGACY,
        "sqlite://",
        route_table=table,
        read_model=read_model,
        settings=FacadeSettings(lag_check_interval=60.0),
        lag_provider=lag,
    )
    table.set("GET", ROUTE, "new", by="ops")
    client = app.test_client()
    for _ in range(5):
        assert client.get("/allocations/order-1").headers["X-Served-By"] == "new"
    assert len(calls) == 1
    close_app(app)


def test_the_lag_guard_defaults_to_the_read_models_lag_seconds(
    table: RouteTable, upstream: responses.RequestsMock
) -> None:
    class LaggingReadModel(FakeReadModel):
        def lag_seconds(self) -> float | None:
            return 600.0

    app = create_app(
        LEGACY,
        "sqlite://",
        route_table=table,
        read_model=LaggingReadModel({"order-1": [Allocation("A", "b")]}),
    )
    table.set("GET", ROUTE, "new", by="ops")

    assert app.test_client().get("/allocations/order-1").headers["X-Served-By"] == "legacy"
    close_app(app)


def test_without_lag_seconds_there_is_no_lag_guard(
    table: RouteTable, read_model: FakeReadModel, upstream: responses.RequestsMock
) -> None:
    app = create_app(LEGACY, "sqlite://", route_table=table, read_model=read_model)
    table.set("GET", ROUTE, "new", by="ops")

    assert app.test_client().get("/allocations/order-1").headers["X-Served-By"] == "new"
    close_app(app)


def test_a_failed_write_on_the_new_system_is_not_retried_on_legacy(
    engine: Engine, read_model: FakeReadModel, upstream: responses.RequestsMock
) -> None:
    def failing(read_model: ReadModel, request: NewRequest) -> Response:
        raise RuntimeError("half applied")

    def fine(read_model: ReadModel, request: NewRequest) -> Response:
        return jsonify({"echo": request.body.decode()})

    table = RouteTable(
        engine,
        refresh_interval=0.0,
        movable=[("POST", "/orders/<orderid>"), ("PUT", "/orders/<orderid>")],
    )
    handlers = {
        **NEW_HANDLERS,
        ("POST", "/orders/<orderid>"): failing,
        ("PUT", "/orders/<orderid>"): fine,
    }
    app = create_app(
        LEGACY,
        "sqlite://",
        route_table=table,
        read_model=read_model,
        new_handlers=handlers,
        lag_provider=None,
    )
    table.set("POST", "/orders/<orderid>", "new", by="ops")
    table.set("PUT", "/orders/<orderid>", "new", by="ops")
    client = app.test_client()

    failed = client.post("/orders/o-1", json={"qty": 1})
    put = client.put("/orders/o-1", data=b"payload")

    assert (failed.status_code, failed.headers["X-Served-By"]) == (502, "new")
    assert failed.get_json() == {
        "error": "bad gateway",
        "detail": "the new system failed to answer POST /orders/o-1",
    }
    assert put.get_json() == {"echo": "payload"}
    assert len(upstream.calls) == 0
    close_app(app)
