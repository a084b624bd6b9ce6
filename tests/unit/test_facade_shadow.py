"""Shadow and A/A comparison: off the request path, bounded, sampled, JSON-aware, recorded."""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import responses
from flask import Flask, Response, jsonify
from sqlalchemy import Engine, create_engine, func, select

from skeleton_app import (
    FacadeSettings,
    Mode,
    NewRequest,
    RouteTable,
    ShadowResults,
    close_app,
    create_app,
    facade_of,
)
from skeleton_app import shadow as shadow_module
from skeleton_app.new_routes import NEW_HANDLERS
from skeleton_app.read_model import ReadModel
from skeleton_app.schema import facade_shadow_result
from skeleton_app.shadow_results import ShadowResult
from tests.unit.test_facade_fakes import (
    LEGACY,
    ROUTE,
    Allocation,
    BufferedClient,
    FakeReadModel,
    Lag,
    create_new_database,
    drain,
    legacy_json,
    metric,
)

ORDER_1 = [{"batchref": "b-2", "sku": "BLUE-TABLE"}, {"batchref": "b-1", "sku": "RED-CHAIR"}]
ANY_LEGACY = re.compile(r"http://legacy\.test:8080/.*")


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
    return FakeReadModel(
        {"order-1": [Allocation("BLUE-TABLE", "b-2"), Allocation("RED-CHAIR", "b-1")]}
    )


@pytest.fixture
def upstream() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


class AppFactory:
    """Builds facade apps for a test and closes them after it."""

    def __init__(self, table: RouteTable, read_model: FakeReadModel) -> None:
        self.table = table
        self.read_model = read_model
        self.apps: list[Flask] = []

    def __call__(self, **settings: object) -> Flask:
        extra = {
            k: settings.pop(k)
            for k in ("new_handlers", "lag_provider", "sample", "results")
            if k in settings
        }
        options = {"shadow_flush_interval": 0.05, "new_timeout": 2.0, **settings}
        app = create_app(
            LEGACY,
            "sqlite://",
            route_table=self.table,
            read_model=self.read_model,
            settings=FacadeSettings(**options),  # type: ignore[arg-type]
            **extra,
        )  # type: ignore[arg-type]
        app.test_client_class = BufferedClient
        self.apps.append(app)
        return app


@pytest.fixture
def facade(table: RouteTable, read_model: FakeReadModel) -> Iterator[AppFactory]:
    factory = AppFactory(table, read_model)
    yield factory
    for app in factory.apps:
        close_app(app)


def stored(engine: Engine) -> list[ShadowResult]:
    with engine.connect() as conn:
        rows = conn.execute(select(facade_shadow_result).order_by(facade_shadow_result.c.id))
        return [
            ShadowResult(**{k: v for k, v in row._mapping.items() if k != "id"}) for row in rows
        ]


# -- shadow ----------------------------------------------------------------------------


def test_shadow_serves_legacy_and_records_a_match_with_both_timings(
    facade: AppFactory,
    table: RouteTable,
    upstream: responses.RequestsMock,
    engine: Engine,
    read_model: FakeReadModel,
) -> None:
    upstream.add_callback(
        responses.GET, f"{LEGACY}/allocations/order-1", callback=legacy_json(ORDER_1)
    )
    table.set("GET", ROUTE, "shadow", by="ops")
    app = facade()

    response = app.test_client().get("/allocations/order-1?x=1")

    assert response.status_code == 200
    assert response.headers["X-Served-By"] == "legacy"
    assert json.loads(response.data) == ORDER_1
    drain(app)
    [result] = stored(engine)
    assert (result.kind, result.outcome, result.method, result.pattern, result.path) == (
        "shadow",
        "match",
        "GET",
        ROUTE,
        "/allocations/order-1?x=1",
    )
    assert (result.legacy_status, result.new_status, result.diff) == (200, 200, None)
    assert result.legacy_ms > 0 and result.new_ms is not None and result.new_ms > 0
    assert read_model.asked == ["order-1"]
    assert len(upstream.calls) == 1
    route = f"GET {ROUTE}"
    assert (
        metric(
            app,
            "strangler_facade_shadow_results_total",
            route=route,
            kind="shadow",
            outcome="match",
        )
        == 1
    )
    assert (
        metric(
            app, "strangler_facade_requests_total", route=route, mode="shadow", served_by="legacy"
        )
        == 1
    )
    assert metric(app, "strangler_facade_upstream_seconds_count", system="new", route=route) == 1


def test_shadow_records_a_mismatch_with_a_readable_diff(
    facade: AppFactory, table: RouteTable, upstream: responses.RequestsMock, engine: Engine
) -> None:
    changed = [{"batchref": "b-9", "sku": "BLUE-TABLE"}, ORDER_1[1]]
    upstream.add_callback(
        responses.GET, f"{LEGACY}/allocations/order-1", callback=legacy_json(changed)
    )
    upstream.add_callback(
        responses.GET,
        f"{LEGACY}/allocations/nobody",
        callback=legacy_json([{"sku": "X", "batchref": "y"}]),
    )
    table.set("GET", ROUTE, "shadow", by="ops")
    app = facade()
    client = app.test_client()

    assert json.loads(client.get("/allocations/order-1").data) == changed
    client.get("/allocations/nobody")
    drain(app)

    first, second = stored(engine)
    assert first.outcome == second.outcome == "mismatch"
    assert first.diff == (
        'body (legacy -> new):\n  Value of root[0][\'batchref\'] changed from "b-9" to "b-2".'
    )
    assert second.new_status == 404
    assert second.diff is not None and second.diff.startswith("status: legacy 200, new 404\n")
    parity = ShadowResults(engine).parity("GET", ROUTE)
    assert (parity.matches, parity.mismatches, parity.percent) == (0, 2, 0.0)
    assert [r.path for r in ShadowResults(engine).recent("GET", ROUTE)] == [
        "/allocations/nobody",
        "/allocations/order-1",
    ]


def test_new_system_errors_in_shadow_are_recorded_and_legacy_still_answers(
    facade: AppFactory,
    table: RouteTable,
    upstream: responses.RequestsMock,
    engine: Engine,
    read_model: FakeReadModel,
) -> None:
    upstream.add_callback(responses.GET, ANY_LEGACY, callback=legacy_json(ORDER_1))
    table.set("GET", ROUTE, "shadow", by="ops")
    read_model.fail = True
    app = facade()

    response = app.test_client().get("/allocations/order-1")

    assert (response.status_code, response.headers["X-Served-By"]) == (200, "legacy")
    drain(app)
    [result] = stored(engine)
    assert (result.outcome, result.new_status, result.new_ms) == ("error", None, None)
    assert result.diff == "RuntimeError: read model database is down"
    assert result.legacy_ms > 0


def test_a_slow_new_system_never_slows_legacy_and_times_out_in_shadow(
    facade: AppFactory,
    table: RouteTable,
    upstream: responses.RequestsMock,
    engine: Engine,
    read_model: FakeReadModel,
) -> None:
    upstream.add_callback(responses.GET, ANY_LEGACY, callback=legacy_json(ORDER_1))
    table.set("GET", ROUTE, "shadow", by="ops")
    release = read_model.block()
    app = facade(new_timeout=0.2)

    response = app.test_client().get("/allocations/order-1")

    # legacy's answer is out while the new system is still stuck
    assert response.status_code == 200
    assert read_model.entered.wait(5)
    drain(app)
    release.set()
    [result] = stored(engine)
    assert result.outcome == "error"
    assert result.diff == "NewSystemTimeout: the new system did not answer within 0.2 s"


def test_head_requests_are_not_compared(
    facade: AppFactory, table: RouteTable, upstream: responses.RequestsMock, engine: Engine
) -> None:
    upstream.add(responses.HEAD, ANY_LEGACY, status=200)
    table.set("GET", ROUTE, "shadow", by="ops")
    app = facade()

    assert app.test_client().head("/allocations/order-1").headers["X-Served-By"] == "legacy"
    drain(app)
    assert stored(engine) == []


# -- mutating requests -----------------------------------------------------------------

WRITE_ROUTE = "/orders/<orderid>"


def _writes_handler(seen: list[NewRequest]) -> dict[tuple[str, str], object]:
    def handle(read_model: ReadModel, request: NewRequest) -> Response:
        seen.append(request)
        response = jsonify({"ok": True})
        response.status_code = 201
        return response

    return {**NEW_HANDLERS, ("POST", WRITE_ROUTE): handle}


@pytest.fixture
def write_table(engine: Engine) -> RouteTable:
    return RouteTable(engine, refresh_interval=0.0, movable=[("GET", ROUTE), ("POST", WRITE_ROUTE)])


def test_shadow_never_sends_a_mutating_request_unless_the_route_allows_it(
    write_table: RouteTable,
    read_model: FakeReadModel,
    upstream: responses.RequestsMock,
    engine: Engine,
) -> None:
    upstream.add_callback(responses.POST, ANY_LEGACY, callback=legacy_json({"ok": True}, 201))
    seen: list[NewRequest] = []
    app = AppFactory(write_table, read_model)(new_handlers=_writes_handler(seen))
    client = app.test_client()
    write_table.set("POST", WRITE_ROUTE, "shadow", by="ops")

    client.post("/orders/o-1", json={"qty": 1})
    drain(app)
    assert seen == [] and stored(engine) == []

    write_table.set(
        "POST", WRITE_ROUTE, "shadow", by="ops", options={"allow_mutating_shadow": True}
    )
    response = client.post(
        "/orders/o-2?dry=0", data=b'{"qty": 2}', headers={"Content-Type": "application/json"}
    )
    drain(app)

    assert (response.status_code, response.headers["X-Served-By"]) == (201, "legacy")
    assert upstream.calls[-1].request.body == b'{"qty": 2}'
    [request] = seen
    assert (request.method, request.path, request.query_string, request.body) == (
        "POST",
        "/orders/o-2",
        b"dry=0",
        b'{"qty": 2}',
    )
    assert dict(request.args) == {"orderid": "o-2"}
    [result] = stored(engine)
    assert (result.method, result.pattern, result.outcome) == ("POST", WRITE_ROUTE, "match")
    close_app(app)


@pytest.mark.parametrize("method", ["PUT", "PATCH", "DELETE"])
def test_no_mutating_method_is_shadowed_by_default(
    engine: Engine, read_model: FakeReadModel, upstream: responses.RequestsMock, method: str
) -> None:
    upstream.add(method, ANY_LEGACY, status=204)
    seen: list[NewRequest] = []
    table = RouteTable(engine, refresh_interval=0.0, movable=[(method, WRITE_ROUTE)])

    def handle(read_model: ReadModel, request: NewRequest) -> Response:
        seen.append(request)
        return Response(status=204)

    app = AppFactory(table, read_model)(new_handlers={(method, WRITE_ROUTE): handle})
    table.set(method, WRITE_ROUTE, "shadow", by="ops")

    assert app.test_client().open("/orders/o-1", method=method).status_code == 204
    drain(app)
    assert seen == []
    close_app(app)


# -- bounded, sampled ------------------------------------------------------------------


def test_a_full_shadow_queue_drops_and_counts_without_touching_legacy(
    facade: AppFactory,
    table: RouteTable,
    upstream: responses.RequestsMock,
    read_model: FakeReadModel,
    engine: Engine,
) -> None:
    upstream.add_callback(responses.GET, ANY_LEGACY, callback=legacy_json(ORDER_1))
    table.set("GET", ROUTE, "shadow", by="ops")
    release = read_model.block()
    app = facade(shadow_queue_size=1)
    client = app.test_client()

    assert client.get("/allocations/order-1").status_code == 200
    assert read_model.entered.wait(5)  # the worker holds job 1; the queue is empty
    answers = [client.get("/allocations/order-1") for _ in range(3)]  # 1 queued, 2 dropped

    assert [a.status_code for a in answers] == [200, 200, 200]
    assert all(json.loads(a.data) == ORDER_1 for a in answers)
    release.set()
    drain(app)
    assert len(stored(engine)) == 2
    assert (
        metric(
            app, "strangler_facade_shadow_dropped_total", route=f"GET {ROUTE}", reason="queue_full"
        )
        == 2
    )
    assert facade_of(app).shadow.stats()["dropped"] == 2


def test_only_the_sampled_share_is_compared_and_a_route_may_override_it(
    facade: AppFactory, table: RouteTable, upstream: responses.RequestsMock, engine: Engine
) -> None:
    upstream.add_callback(responses.GET, ANY_LEGACY, callback=legacy_json(ORDER_1))
    table.set("GET", ROUTE, "shadow", by="ops")
    draws = itertools.cycle([0.05, 0.3, 0.6, 0.9])
    app = facade(shadow_sample_rate=0.5, sample=lambda: next(draws))
    client = app.test_client()

    for _ in range(8):
        client.get("/allocations/order-1")
    drain(app)
    assert len(stored(engine)) == 4

    table.set("GET", ROUTE, "shadow", by="ops", options={"sample_rate": 0.1})
    for _ in range(8):
        client.get("/allocations/order-1")
    drain(app)
    assert len(stored(engine)) == 6


def test_a_job_that_cannot_be_compared_is_counted_and_the_worker_goes_on(
    facade: AppFactory,
    table: RouteTable,
    upstream: responses.RequestsMock,
    engine: Engine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    upstream.add_callback(responses.GET, ANY_LEGACY, callback=legacy_json(ORDER_1))
    table.set("GET", ROUTE, "shadow", by="ops")
    real_compare = shadow_module.compare
    calls = itertools.count()

    def compare_failing_once(*args: object, **kwargs: object) -> object:
        if next(calls) == 0:
            raise RuntimeError("a comparison bug")
        return real_compare(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(shadow_module, "compare", compare_failing_once)
    app = facade()
    client = app.test_client()

    for _ in range(3):
        assert client.get("/allocations/order-1").status_code == 200
    drain(app)

    assert [r.outcome for r in stored(engine)] == ["match", "match"]
    dropped = metric(
        app, "strangler_facade_shadow_dropped_total", route=f"GET {ROUTE}", reason="compare_failed"
    )
    assert dropped == 1


def test_answers_too_large_to_compare_stream_through_and_are_counted(
    facade: AppFactory, table: RouteTable, upstream: responses.RequestsMock, engine: Engine
) -> None:
    body = b"x" * 5000
    upstream.add(responses.GET, ANY_LEGACY, body=body)
    table.set("GET", ROUTE, "shadow", by="ops")
    app = facade(shadow_max_body=1000)

    response = app.test_client().get("/allocations/order-1")

    assert response.data == body
    drain(app)
    assert stored(engine) == []
    assert (
        metric(
            app, "strangler_facade_shadow_dropped_total", route=f"GET {ROUTE}", reason="too_large"
        )
        == 1
    )


def test_results_are_written_in_batches(
    facade: AppFactory,
    table: RouteTable,
    upstream: responses.RequestsMock,
    engine: Engine,
    read_model: FakeReadModel,
) -> None:
    class Recording(ShadowResults):
        batches: list[int] = []

        def write(self, results: Sequence[ShadowResult]) -> None:
            self.batches.append(len(results))
            super().write(results)

    upstream.add_callback(responses.GET, ANY_LEGACY, callback=legacy_json(ORDER_1))
    table.set("GET", ROUTE, "shadow", by="ops")
    release = read_model.block()
    app = facade(shadow_batch_size=3, shadow_flush_interval=5.0, results=Recording(engine))
    client = app.test_client()

    for _ in range(8):
        client.get("/allocations/order-1")
    release.set()
    drain(app)

    assert sum(Recording.batches) == 8
    assert max(Recording.batches) == 3 and len(Recording.batches) < 8
    assert ShadowResults(engine).parity("GET", ROUTE).matches == 8


def test_a_failing_results_database_is_counted_and_never_reaches_clients(
    facade: AppFactory, table: RouteTable, upstream: responses.RequestsMock, engine: Engine
) -> None:
    class Broken(ShadowResults):
        def write(self, results: Sequence[ShadowResult]) -> None:
            raise RuntimeError("disk full")

    upstream.add_callback(responses.GET, ANY_LEGACY, callback=legacy_json(ORDER_1))
    table.set("GET", ROUTE, "shadow", by="ops")
    app = facade(results=Broken(engine))

    assert app.test_client().get("/allocations/order-1").status_code == 200
    drain(app)
    assert (
        metric(
            app,
            "strangler_facade_shadow_dropped_total",
            route=f"GET {ROUTE}",
            reason="write_failed",
        )
        == 1
    )
    assert facade_of(app).shadow.stats()["write_failures"] == 1


def test_shadow_pauses_while_the_read_model_lags(
    facade: AppFactory, table: RouteTable, upstream: responses.RequestsMock, engine: Engine
) -> None:
    upstream.add_callback(responses.GET, ANY_LEGACY, callback=legacy_json(ORDER_1))
    table.set("GET", ROUTE, "shadow", by="ops")
    lag = Lag(60.0)
    app = facade(lag_provider=lag, lag_check_interval=0.0)
    client = app.test_client()

    client.get("/allocations/order-1")
    drain(app)
    assert stored(engine) == []
    assert (
        metric(app, "strangler_facade_shadow_dropped_total", route=f"GET {ROUTE}", reason="lag")
        == 1
    )

    lag.value = 0.5
    client.get("/allocations/order-1")
    drain(app)
    assert [r.outcome for r in stored(engine)] == ["match"]


# -- comparison rules ------------------------------------------------------------------


def test_ignored_fields_and_unordered_lists_are_per_route(
    facade: AppFactory, table: RouteTable, upstream: responses.RequestsMock, engine: Engine
) -> None:
    reordered = [dict(ORDER_1[1], generated_at="now"), dict(ORDER_1[0], generated_at="now")]
    upstream.add_callback(responses.GET, ANY_LEGACY, callback=legacy_json(reordered))
    table.set("GET", ROUTE, "shadow", by="ops")
    app = facade()
    client = app.test_client()

    client.get("/allocations/order-1")
    drain(app)
    table.set(
        "GET",
        ROUTE,
        "shadow",
        by="ops",
        options={"ignore_fields": ["generated_at"], "unordered_lists": True},
    )
    client.get("/allocations/order-1")
    drain(app)

    before, after = stored(engine)
    assert before.outcome == "mismatch" and before.diff is not None
    assert "generated_at" in before.diff
    assert after.outcome == "match"


def test_aa_compares_legacy_with_itself_to_measure_noise(
    facade: AppFactory,
    table: RouteTable,
    upstream: responses.RequestsMock,
    engine: Engine,
    read_model: FakeReadModel,
) -> None:
    counter = itertools.count()

    def stamped(request: object) -> tuple[int, dict[str, str], bytes]:
        body = {"orders": ["o-1"], "served_at": next(counter)}
        return 200, {"Content-Type": "application/json"}, json.dumps(body).encode()

    upstream.add_callback(responses.GET, ANY_LEGACY, callback=stamped)
    table.set("GET", "/reports/<name>", "aa", by="ops")  # any route, no new system needed
    app = facade()
    client = app.test_client()

    first = client.get("/reports/daily", headers={"X-Request-Id": "r-1"})
    drain(app)
    table.set("GET", "/reports/<name>", "aa", by="ops", options={"ignore_fields": ["served_at"]})
    client.get("/reports/daily")
    drain(app)

    assert first.headers["X-Served-By"] == "legacy"
    assert json.loads(first.data)["served_at"] == 0
    assert len(upstream.calls) == 4  # each request went to legacy twice
    assert upstream.calls[1].request.headers["X-Request-Id"] == "r-1"
    noisy, quiet = stored(engine)
    assert (noisy.kind, noisy.outcome) == ("aa", "mismatch")
    assert noisy.diff is not None and "served_at" in noisy.diff
    assert (quiet.kind, quiet.outcome) == ("aa", "match")
    assert read_model.asked == []
    parity = ShadowResults(engine).parity("GET", "/reports/<name>", kind="aa")
    assert parity.percent == 50.0
    assert ShadowResults(engine).parity("GET", "/reports/<name>").samples == 0


def test_a_route_in_legacy_mode_is_never_compared(
    facade: AppFactory,
    table: RouteTable,
    upstream: responses.RequestsMock,
    engine: Engine,
    read_model: FakeReadModel,
) -> None:
    upstream.add_callback(responses.GET, ANY_LEGACY, callback=legacy_json(ORDER_1))
    table.set("GET", ROUTE, Mode.LEGACY, by="ops")
    app = facade()

    app.test_client().get("/allocations/order-1")
    drain(app)

    assert stored(engine) == [] and read_model.asked == []
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(facade_shadow_result)).scalar() == 0
