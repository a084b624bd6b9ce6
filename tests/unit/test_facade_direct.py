"""The direct path: a moved read route answered without Flask, same answer as the general path."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import responses
from flask import Flask, Response
from sqlalchemy import Engine, create_engine

from skeleton_app import FacadeSettings, NewRequest, RouteTable, close_app, create_app
from skeleton_app.direct import DirectPath
from skeleton_app.new_routes import NEW_HANDLERS, json_body
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
LEGACY_ANSWER = [{"sku": "LEGACY-ONLY", "batchref": "b-legacy"}]


class BoundedReadModel(FakeReadModel):
    """A fake that, like the real one on PostgreSQL, gives up by itself after a time limit,
    and remembers on which thread it was asked."""

    time_limit = 0.3

    def __init__(self, allocations: dict[str, list[Allocation]]) -> None:
        super().__init__(allocations)
        self.threads: list[int] = []
        self.error: Exception | None = None

    def allocations_for(self, orderid: str) -> list[Allocation]:
        self.threads.append(threading.get_ident())
        if self.error is not None:
            raise self.error
        return super().allocations_for(orderid)


ALLOCATIONS = {
    "order-1": [Allocation("RED-CHAIR", "b-2"), Allocation("BLUE-SOFA", "b-1")],
    "order-é": [Allocation("TÄBLE", "b-3")],
}


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
def upstream() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.add_callback(responses.GET, ANY_LEGACY, callback=legacy_json(LEGACY_ANSWER))
        mock.add_callback(responses.HEAD, ANY_LEGACY, callback=legacy_json(LEGACY_ANSWER))
        yield mock


@pytest.fixture
def lag() -> Lag:
    return Lag(0.0)


def make_app(table: RouteTable, read_model: ReadModel, lag: Lag, **options: object) -> Flask:
    settings = FacadeSettings(new_timeout=0.3, max_lag=5.0, lag_check_interval=0.0)
    app = create_app(
        LEGACY,
        "sqlite://",
        route_table=table,
        read_model=read_model,
        settings=settings,
        lag_provider=lag,
        **options,
    )  # type: ignore[arg-type]
    app.test_client_class = BufferedClient
    return app


@pytest.fixture
def bounded() -> BoundedReadModel:
    return BoundedReadModel(ALLOCATIONS)


@pytest.fixture
def direct_app(table: RouteTable, bounded: BoundedReadModel, lag: Lag) -> Iterator[Flask]:
    app = make_app(table, bounded, lag)
    yield app
    close_app(app)


def answered_here(read_model: BoundedReadModel) -> bool:
    """Whether the last read ran on the test's own thread (the direct path), not in the
    new system's thread pool (the general path)."""
    return read_model.threads[-1] == threading.get_ident()


@pytest.mark.parametrize(
    "path",
    [
        "/allocations/order-1",
        "/allocations/order-%C3%A9",
        "/allocations/nobody",
        "/allocations/a%20b",
    ],
)
def test_the_direct_path_answers_exactly_as_the_general_path(
    table: RouteTable, lag: Lag, upstream: responses.RequestsMock, path: str
) -> None:
    table.set("GET", ROUTE, "new", by="ops", force=True)
    direct_model = BoundedReadModel(ALLOCATIONS)
    general_model = FakeReadModel(ALLOCATIONS)  # no time limit: the general path
    direct_app, general_app = (
        make_app(table, direct_model, lag),
        make_app(table, general_model, lag),
    )
    try:
        direct = direct_app.test_client().get(path)
        general = general_app.test_client().get(path)
    finally:
        close_app(direct_app)
        close_app(general_app)

    assert answered_here(direct_model)
    assert direct.status == general.status
    assert direct.data == general.data
    assert sorted(direct.headers.items()) == sorted(general.headers.items())
    assert direct.headers["X-Served-By"] == "new"


def test_the_json_is_what_flask_jsonify_writes(direct_app: Flask) -> None:
    value = [{"sku": "TÄBLE", "batchref": "b/3", "n": 1}, {"error": "x", "detail": None}]
    with direct_app.app_context():
        from flask import jsonify

        assert json_body(value) == jsonify(value).get_data()


def test_a_direct_answer_is_counted_like_any_new_answer(
    direct_app: Flask, table: RouteTable, bounded: BoundedReadModel
) -> None:
    table.set("GET", ROUTE, "new", by="ops", force=True)
    client = direct_app.test_client()

    for _ in range(3):
        assert client.get("/allocations/order-1").status_code == 200

    assert answered_here(bounded)
    assert (
        metric(
            direct_app,
            "strangler_facade_requests_total",
            route=f"GET {ROUTE}",
            mode="new",
            served_by="new",
        )
        == 3
    )
    assert (
        metric(
            direct_app,
            "strangler_facade_upstream_seconds_count",
            system="new",
            route=f"GET {ROUTE}",
        )
        == 3
    )


@pytest.mark.parametrize(
    ("error", "reason"),
    [(RuntimeError("database down"), "error"), (TimeoutError("statement timeout"), "timeout")],
)
def test_a_failed_direct_read_falls_back_to_legacy_and_is_counted(
    direct_app: Flask,
    table: RouteTable,
    bounded: BoundedReadModel,
    upstream: responses.RequestsMock,
    error: Exception,
    reason: str,
) -> None:
    table.set("GET", ROUTE, "new", by="ops", force=True)
    bounded.error = error

    response = direct_app.test_client().get("/allocations/order-1")

    assert (response.status_code, response.headers["X-Served-By"]) == (200, "legacy")
    assert response.get_json() == LEGACY_ANSWER
    assert len(bounded.threads) == 1  # asked once, on the direct path; not again in Flask
    assert (
        metric(direct_app, "strangler_facade_fallbacks_total", route=f"GET {ROUTE}", reason=reason)
        == 1
    )
    assert (
        metric(
            direct_app,
            "strangler_facade_requests_total",
            route=f"GET {ROUTE}",
            mode="new",
            served_by="legacy",
        )
        == 1
    )


def test_a_tripped_lag_guard_sends_the_route_to_legacy(
    direct_app: Flask,
    table: RouteTable,
    bounded: BoundedReadModel,
    lag: Lag,
    upstream: responses.RequestsMock,
) -> None:
    table.set("GET", ROUTE, "new", by="ops", force=True)
    lag.value = 60.0

    response = direct_app.test_client().get("/allocations/order-1")

    assert response.headers["X-Served-By"] == "legacy"
    assert bounded.threads == []
    assert (
        metric(direct_app, "strangler_facade_fallbacks_total", route=f"GET {ROUTE}", reason="lag")
        == 1
    )


@pytest.mark.parametrize("mode", ["canary 100", "shadow", "legacy"])
def test_only_mode_new_takes_the_direct_path(
    direct_app: Flask,
    table: RouteTable,
    bounded: BoundedReadModel,
    upstream: responses.RequestsMock,
    mode: str,
) -> None:
    table.set("GET", ROUTE, mode, by="ops", force=True)

    direct_app.test_client().get("/allocations/order-1")

    assert not bounded.threads or not answered_here(bounded)


def test_head_and_dot_segments_take_the_general_path(
    direct_app: Flask,
    table: RouteTable,
    bounded: BoundedReadModel,
    upstream: responses.RequestsMock,
) -> None:
    table.set("GET", ROUTE, "new", by="ops", force=True)
    client = direct_app.test_client()

    assert client.get("/allocations/..").status_code == 400
    head = client.head("/allocations/order-1")

    assert head.status_code == 200
    assert not answered_here(bounded)


def test_a_replaced_handler_is_never_bypassed(
    table: RouteTable, bounded: BoundedReadModel, lag: Lag
) -> None:
    def replaced(read_model: ReadModel, request: NewRequest) -> Response:
        return Response(b'"replaced"', mimetype="application/json")

    table.set("GET", ROUTE, "new", by="ops", force=True)
    app = make_app(table, bounded, lag, new_handlers={**NEW_HANDLERS, ("GET", ROUTE): replaced})
    try:
        response = app.test_client().get("/allocations/order-1")
    finally:
        close_app(app)

    assert response.data == b'"replaced"'
    assert bounded.threads == []


def test_on_sqlite_reads_are_not_bounded_so_the_general_path_serves() -> None:
    on_sqlite = create_app(LEGACY, "sqlite://", settings=FacadeSettings())
    on_postgres = create_app(
        LEGACY, "postgresql+psycopg://nowhere.invalid/x", settings=FacadeSettings()
    )
    try:
        assert not isinstance(on_sqlite.wsgi_app, DirectPath)
        assert isinstance(on_postgres.wsgi_app, DirectPath)
    finally:
        close_app(on_sqlite)
        close_app(on_postgres)
