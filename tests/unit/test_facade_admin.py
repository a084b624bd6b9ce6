"""The admin API (bearer token, audit), its OpenAPI document, and the metrics endpoint."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import responses
from flask import Flask
from flask.testing import FlaskClient
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate as validate_spec
from sqlalchemy import Engine, create_engine
from werkzeug.test import TestResponse

from skeleton_app import (
    CutoverGate,
    FacadeSettings,
    Mode,
    RouteTable,
    ShadowResults,
    Window,
    close_app,
    create_app,
)
from skeleton_app.openapi import document, render
from skeleton_app.shadow_results import ShadowResult
from tests.unit.test_facade_fakes import (
    LEGACY,
    ROUTE,
    Allocation,
    BufferedClient,
    FakeReadModel,
    create_new_database,
    legacy_json,
)

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "t0ken-with-enough-entropy"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ANY_LEGACY = re.compile(r"http://legacy\.test:8080/.*")
GATE = CutoverGate(min_parity=99.0, min_samples=10, window=Window(3600, 1000))


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = create_engine(f"sqlite:///{tmp_path / 'new.db'}")
    create_new_database(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def table(engine: Engine) -> RouteTable:
    return RouteTable(engine, refresh_interval=0.0, gate=GATE)


@pytest.fixture
def upstream() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.add_callback(
            responses.GET,
            ANY_LEGACY,
            callback=legacy_json([{"sku": "RED-CHAIR", "batchref": "b-1"}]),
        )
        yield mock


def make_app(table: RouteTable, token: str | None = TOKEN) -> Flask:
    read_model = FakeReadModel({"order-1": [Allocation("RED-CHAIR", "b-1")]})
    settings = FacadeSettings(admin_token=token, gate=GATE, shadow_flush_interval=0.05)
    app = create_app(
        LEGACY,
        "sqlite://",
        route_table=table,
        read_model=read_model,
        settings=settings,
        lag_provider=None,
    )
    app.test_client_class = BufferedClient
    return app


@pytest.fixture
def app(table: RouteTable) -> Iterator[Flask]:
    app = make_app(table)
    yield app
    close_app(app)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def write_results(engine: Engine, outcomes: dict[str, int], kind: str = "shadow") -> None:
    ShadowResults(engine).write(
        [
            ShadowResult(
                at=datetime.now(UTC),
                method="GET",
                pattern=ROUTE,
                kind=kind,
                outcome=outcome,
                path="/allocations/o-1",
                legacy_status=200,
                legacy_ms=1.5,
                new_status=200 if outcome != "error" else None,
                new_ms=0.5 if outcome != "error" else None,
                diff=None if outcome == "match" else f"{outcome} details",
            )
            for outcome, count in outcomes.items()
            for _ in range(count)
        ]
    )


# -- the documented shapes -------------------------------------------------------------

DOC = document()


def _resolve(node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node and len(node) == 1 and node["$ref"].startswith("#/components/res"):
        node = DOC["components"]["responses"][node["$ref"].rsplit("/", 1)[1]]
    return node


def documented(response: TestResponse, path: str, method: str) -> Any:
    """The response's JSON, after checking it against the OpenAPI document."""
    operation = DOC["paths"][path][method.lower()]
    spec = _resolve(operation["responses"][str(response.status_code)])
    schema = spec["content"]["application/json"]["schema"]
    body = response.get_json()
    Draft202012Validator({**schema, "components": DOC["components"]}).validate(body)
    assert response.headers["X-Served-By"] in ("legacy", "new", "facade")
    return body


def test_the_openapi_document_is_valid_and_saved_in_docs() -> None:
    validate_spec(DOC)
    assert (ROOT / "docs" / "openapi.json").read_text() == render()


def test_the_document_is_served_without_a_token(client: FlaskClient) -> None:
    response = client.get("/_strangler/openapi.json")

    assert response.status_code == 200
    assert response.get_json() == DOC
    documented(response, "/_strangler/openapi.json", "GET")


def test_every_admin_path_is_documented() -> None:
    from skeleton_app.admin import ADMIN_ENDPOINTS

    for path, views in ADMIN_ENDPOINTS.items():
        for method in views:
            operation = DOC["paths"][path][method.lower()]
            assert operation["security"] == [{"bearerAuth": []}], (path, method)


def test_the_read_route_answers_as_documented_from_both_systems(
    app: Flask, client: FlaskClient, table: RouteTable, upstream: responses.RequestsMock
) -> None:
    legacy = client.get("/allocations/order-1")
    table.set("GET", ROUTE, "new", by="ops", reason="test", force=True)
    new = client.get("/allocations/order-1")
    missing = client.get("/allocations/nobody")

    path = "/allocations/{orderid}"
    assert documented(legacy, path, "GET") == documented(new, path, "GET")
    assert new.headers["X-Served-By"] == "new"
    assert documented(missing, path, "GET")["error"] == "not found"


# -- token -----------------------------------------------------------------------------


ADMIN_CALLS = [
    ("GET", "/_strangler/routes", None),
    ("PUT", "/_strangler/routes", {"method": "GET", "pattern": ROUTE, "mode": "shadow"}),
    ("GET", "/_strangler/routes/history", None),
    ("GET", f"/_strangler/routes/mismatches?method=GET&pattern={ROUTE}", None),
    ("POST", "/_strangler/routes/rollback", {}),
    ("GET", "/_strangler/status", None),
]


@pytest.mark.parametrize(("method", "path", "body"), ADMIN_CALLS)
def test_without_a_configured_token_the_admin_api_is_off(
    table: RouteTable, method: str, path: str, body: object
) -> None:
    app = make_app(table, token=None)

    response = app.test_client().open(path, method=method, json=body, headers=AUTH)

    assert response.status_code == 404
    assert response.get_json() == {
        "error": "not found",
        "detail": "the admin API is off: no admin token is configured (ADMIN_TOKEN)",
    }
    assert app.test_client().get("/_strangler/health").status_code == 200
    assert table.history() == []
    close_app(app)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": TOKEN},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": "Bearer "},
    ],
)
@pytest.mark.parametrize(("method", "path", "body"), ADMIN_CALLS)
def test_a_request_without_a_valid_token_gets_401_and_changes_nothing(
    client: FlaskClient,
    table: RouteTable,
    headers: dict[str, str],
    method: str,
    path: str,
    body: object,
) -> None:
    table.set("GET", ROUTE, "canary 10", by="ops", reason="test", force=True)

    response = client.open(path, method=method, json=body, headers=headers)

    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="strangler"'
    assert documented(response, "/_strangler/routes", "GET") == {
        "error": "unauthorized",
        "detail": "a valid admin bearer token is required",
    }
    assert len(table.history()) == 1
    assert table.get("GET", ROUTE).setting == "canary 10"


def test_the_token_is_compared_in_constant_time(
    client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    compared: list[tuple[bytes, bytes]] = []

    def compare_digest(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return a == b

    monkeypatch.setattr("skeleton_app.admin.hmac.compare_digest", compare_digest)

    assert (
        client.get("/_strangler/routes", headers={"Authorization": "Bearer nope"}).status_code
        == 401
    )
    assert client.get("/_strangler/routes", headers=AUTH).status_code == 200
    assert compared == [(b"nope", TOKEN.encode()), (TOKEN.encode(), TOKEN.encode())]


# -- routes ----------------------------------------------------------------------------


def test_list_routes_with_parity_and_noise(
    client: FlaskClient, engine: Engine, table: RouteTable
) -> None:
    write_results(engine, {"match": 9, "mismatch": 1})
    write_results(engine, {"match": 4}, kind="aa")
    table.set("GET", ROUTE, "shadow", by="ops", options={"ignore_fields": ["ts"]})

    body = documented(client.get("/_strangler/routes", headers=AUTH), "/_strangler/routes", "GET")

    [route] = [r for r in body["routes"] if r["pattern"] == ROUTE]
    assert (route["method"], route["pattern"], route["mode"], route["setting"]) == (
        "GET",
        ROUTE,
        "shadow",
        "shadow",
    )
    assert route["options"]["ignore_fields"] == ["ts"]
    assert route["parity"] == {
        "matches": 9,
        "mismatches": 1,
        "errors": 0,
        "samples": 10,
        "percent": 90.0,
    }
    assert route["noise"]["percent"] == 100.0


def test_set_a_route_through_the_api_is_audited(client: FlaskClient, table: RouteTable) -> None:
    response = client.put(
        "/_strangler/routes",
        headers=AUTH,
        json={
            "method": "get",
            "pattern": ROUTE,
            "mode": "canary",
            "percent": 25,
            "reason": "first quarter",
            "by": "alice",
            "force": True,
            "options": {"canary_key": "header:X-Customer", "unordered_lists": True},
        },
    )

    body = documented(response, "/_strangler/routes", "PUT")
    assert (body["route"]["mode"], body["route"]["percent"]) == ("canary", 25)
    assert body["route"]["options"]["canary_key"] == "header:X-Customer"
    audit = body["audit"]
    assert (
        audit["from_mode"],
        audit["to_mode"],
        audit["by"],
        audit["reason"],
        audit["forced"],
    ) == (None, "canary 25", "shared token, claimed: alice", "first quarter", True)
    match = table.match("GET", "/allocations/o-1")
    assert match is not None and (match.mode, match.percent) == (Mode.CANARY, 25)

    default_by = client.put(
        "/_strangler/routes",
        headers=AUTH,
        json={"method": "GET", "pattern": ROUTE, "mode": "shadow"},
    )
    assert default_by.get_json()["audit"]["by"] == "shared token"


def test_the_gate_refuses_new_with_409_unless_forced(
    client: FlaskClient, engine: Engine, table: RouteTable
) -> None:
    write_results(engine, {"match": 5, "error": 1})

    refused = client.put(
        "/_strangler/routes", headers=AUTH, json={"method": "GET", "pattern": ROUTE, "mode": "new"}
    )

    body = documented(refused, "/_strangler/routes", "PUT")
    assert refused.status_code == 409
    assert body["error"] == "cutover refused"
    assert body["detail"].startswith(
        "refusing to serve GET /allocations/<orderid> from new: shadow parity 83.33% over 6 samples"
    )
    assert body["parity"]["errors"] == 1
    assert table.history() == []

    forced = client.put(
        "/_strangler/routes",
        headers=AUTH,
        json={"method": "GET", "pattern": ROUTE, "mode": "new", "force": True, "reason": "hotfix"},
    )

    audit = documented(forced, "/_strangler/routes", "PUT")["audit"]
    assert audit["forced"] is True
    assert audit["gate"].startswith("forced past the gate: shadow parity 83.33%")


def test_the_gate_lets_new_through_with_enough_parity(client: FlaskClient, engine: Engine) -> None:
    write_results(engine, {"match": 10})

    response = client.put(
        "/_strangler/routes", headers=AUTH, json={"method": "GET", "pattern": ROUTE, "mode": "new"}
    )

    audit = documented(response, "/_strangler/routes", "PUT")["audit"]
    assert (audit["to_mode"], audit["forced"]) == ("new", False)
    assert audit["gate"].startswith("shadow parity 100.00% over 10 samples")


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({"pattern": ROUTE, "mode": "new"}, "field 'method' is required"),
        (
            {"method": "GET", "pattern": ROUTE, "mode": "shadow", "colour": 1},
            "unknown field(s): colour",
        ),
        ({"method": "GET", "pattern": ROUTE, "mode": 3}, "field 'mode' has the wrong type"),
        (
            {"method": "GET", "pattern": ROUTE, "mode": "shadow", "force": "yes"},
            "field 'force' has the wrong type",
        ),
        (
            {"method": "GET", "pattern": ROUTE, "mode": "canary", "percent": True},
            "field 'percent' has the wrong type",
        ),
        ({"method": "GET", "pattern": ROUTE, "mode": "sideways"}, "unknown mode 'sideways'"),
        (
            {"method": "GET", "pattern": ROUTE, "mode": "canary", "percent": 101},
            "canary percentage must be 0-100",
        ),
        (
            {"method": "GET", "pattern": "/batches/<ref>", "mode": "shadow"},
            "cannot be served by the new system",
        ),
        (
            {"method": "GET", "pattern": ROUTE, "mode": "shadow", "options": {"x": 1}},
            "unknown route option 'x'",
        ),
        (
            {
                "method": "GET",
                "pattern": ROUTE,
                "mode": "shadow",
                "options": {"ignore_fields": [1]},
            },
            "must be a list of strings",
        ),
        (
            {
                "method": "GET",
                "pattern": ROUTE,
                "mode": "shadow",
                "options": {"unordered_lists": "yes"},
            },
            "route option 'unordered_lists' has the wrong",
        ),
        ([1, 2], "the body must be a JSON object"),
    ],
)
def test_bad_changes_are_400_and_change_nothing(
    client: FlaskClient, table: RouteTable, body: object, detail: str
) -> None:
    response = client.put("/_strangler/routes", headers=AUTH, json=body)

    assert response.status_code == 400
    assert detail in documented(response, "/_strangler/routes", "PUT")["detail"]
    assert table.history() == []


def test_history_and_rollback(client: FlaskClient, table: RouteTable) -> None:
    table.set("GET", ROUTE, "canary 50", by="alice", reason="half", force=True)
    table.set("POST", "/orders", "aa", by="bob")

    rolled = client.post(
        "/_strangler/routes/rollback", headers=AUTH, json={"reason": "incident", "by": "oncall"}
    )
    history = client.get(f"/_strangler/routes/history?method=GET&pattern={ROUTE}", headers=AUTH)

    assert sorted(
        r["pattern"]
        for r in documented(rolled, "/_strangler/routes/rollback", "POST")["rolled_back"]
    ) == [ROUTE, "/orders"]
    entries = documented(history, "/_strangler/routes/history", "GET")["entries"]
    assert [(e["from_mode"], e["to_mode"], e["by"], e["reason"]) for e in entries] == [
        (None, "canary 50", "alice", "half"),
        ("canary 50", "legacy", "shared token, claimed: oncall", "incident"),
    ]
    one = client.post(
        "/_strangler/routes/rollback", headers=AUTH, json={"method": "GET", "pattern": ROUTE}
    )
    assert one.get_json() == {"rolled_back": [{"method": "GET", "pattern": ROUTE}]}
    half = client.post("/_strangler/routes/rollback", headers=AUTH, json={"method": "GET"})
    assert half.status_code == 400


def test_mismatches_show_the_newest_diffs(client: FlaskClient, engine: Engine) -> None:
    write_results(engine, {"match": 3, "mismatch": 2, "error": 1})

    response = client.get(
        f"/_strangler/routes/mismatches?method=get&pattern={ROUTE}&limit=2", headers=AUTH
    )

    body = documented(response, "/_strangler/routes/mismatches", "GET")
    assert body["parity"]["samples"] == 6
    assert [m["outcome"] for m in body["mismatches"]] == ["error", "mismatch"]
    assert body["mismatches"][0]["diff"] == "error details"
    for query in (
        "method=GET",
        f"method=GET&pattern={ROUTE}&kind=bb",
        f"method=GET&pattern={ROUTE}&limit=0",
    ):
        bad = client.get(f"/_strangler/routes/mismatches?{query}", headers=AUTH)
        assert bad.status_code == 400
        documented(bad, "/_strangler/routes/mismatches", "GET")


def test_status_shows_lag_guard_shadow_queue_and_gate(client: FlaskClient) -> None:
    body = documented(client.get("/_strangler/status", headers=AUTH), "/_strangler/status", "GET")

    assert body["lag"] == {
        "enabled": False,
        "max_lag_seconds": 15.0,
        "lag_seconds": None,
        "tripped": False,
        "error": None,
    }
    assert body["shadow"]["capacity"] == 1000
    assert body["gate"] == {
        "min_parity": 99.0,
        "min_samples": 10,
        "window_seconds": 3600,
        "window_samples": 1000,
    }


def test_admin_methods_are_checked_after_the_token(client: FlaskClient) -> None:
    response = client.patch("/_strangler/routes", headers=AUTH)

    assert response.status_code == 405
    assert response.headers["Allow"] == "DELETE, GET, PUT"


@pytest.mark.parametrize(
    ("method", "path"), [("PUT", "/_strangler/routes"), ("POST", "/_strangler/routes/rollback")]
)
@pytest.mark.parametrize("chunked", [False, True])
def test_admin_bodies_over_the_limit_get_413(
    client: FlaskClient, method: str, path: str, chunked: bool
) -> None:
    import io

    from skeleton_app.admin import MAX_BODY_BYTES

    body = json.dumps(
        {"method": "GET", "pattern": ROUTE, "mode": "legacy", "reason": "x" * MAX_BODY_BYTES}
    ).encode()
    headers = {**AUTH, "Content-Type": "application/json"}
    if chunked:  # no Content-Length: the limit must hold on the stream
        response = client.open(
            path,
            method=method,
            input_stream=io.BytesIO(body),
            headers={**headers, "Transfer-Encoding": "chunked"},
            environ_overrides={"wsgi.input_terminated": True},
        )
    else:
        response = client.open(path, method=method, data=body, headers=headers)

    assert response.status_code == 413
    assert response.get_json() == {
        "error": "request entity too large",
        "detail": f"request body is larger than {MAX_BODY_BYTES} bytes",
    }


# -- metrics ---------------------------------------------------------------------------


def test_metrics_are_served_in_prometheus_format_and_never_proxied(
    app: Flask, client: FlaskClient, table: RouteTable, upstream: responses.RequestsMock
) -> None:
    table.set("GET", ROUTE, "shadow", by="ops")
    client.get("/allocations/order-1")
    client.get("/elsewhere")
    assert app.extensions["strangler"].shadow.drain(10)

    response = client.get("/metrics")

    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    assert response.headers["X-Served-By"] == "facade"
    text = response.get_data(as_text=True)
    route = 'route="GET /allocations/<orderid>"'
    assert (
        f'strangler_facade_requests_total{{mode="shadow",{route},served_by="legacy"}} 1.0' in text
    )
    assert (
        'strangler_facade_requests_total{mode="legacy",route="other",served_by="legacy"} 1.0'
        in text
    )
    assert (
        f'strangler_facade_shadow_results_total{{kind="shadow",outcome="match",{route}}} '
        "1.0" in text
    )
    assert f'strangler_facade_upstream_seconds_count{{{route},system="new"}} 1.0' in text
    assert "strangler_facade_fallbacks_total" in text
    assert [c.request.url for c in upstream.calls] == [
        f"{LEGACY}/allocations/order-1",
        f"{LEGACY}/elsewhere",
    ]
    assert client.get("/_strangler/metrics").get_data(as_text=True).startswith("# HELP")
    assert json.loads(client.post("/metrics").data)["error"] == "method not allowed"


# -- write groups ---------------------------------------------------------------------------


def _decisions(engine: Engine, agree: int, differ: int) -> None:
    from sqlalchemy import insert

    from new_domain.adapters import orm

    with engine.begin() as conn:
        conn.execute(
            insert(orm.decision_parity).values(route="POST /allocate", agree=agree, differ=differ)
        )


def test_setting_a_write_route_through_the_api_moves_its_group(
    client: FlaskClient, engine: Engine
) -> None:
    _decisions(engine, agree=10, differ=0)

    response = client.put(
        "/_strangler/routes",
        headers=AUTH,
        json={"method": "PATCH", "pattern": "/batches/<ref>", "mode": "canary 20", "by": "al"},
    )

    body = documented(response, "/_strangler/routes", "PUT")
    assert body["moved"] == [
        {"method": "POST", "pattern": "/allocate"},
        {"method": "POST", "pattern": "/batches"},
        {"method": "PATCH", "pattern": "/batches/<ref>"},
        {"method": "POST", "pattern": "/deallocate"},
    ]
    assert (body["route"]["method"], body["route"]["setting"], body["route"]["group"]) == (
        "PATCH",
        "canary 20",
        "allocation",
    )
    assert body["group"]["name"] == "allocation" and body["group"]["forced"] is False
    assert body["group"]["gate"].startswith("decision parity of write group allocation 100.00%")
    ownership = body["group"]["ownership"]
    assert (ownership["rule"], ownership["previous_rule"], ownership["epoch"]) == (
        "canary 20",
        "legacy",
        1,
    )
    assert (ownership["state"], ownership["changed_by"]) == ("moving", "shared token, claimed: al")

    listed = documented(client.get("/_strangler/routes", headers=AUTH), "/_strangler/routes", "GET")
    write_routes = [r for r in listed["routes"] if "group" in r]
    assert len(write_routes) == 4
    assert {(r["setting"], r["ownership"]["epoch"]) for r in write_routes} == {("canary 20", 1)}
    assert listed["groups"]["allocation"]["ownership"]["rule"] == "canary 20"


@pytest.mark.parametrize(
    ("method", "body", "detail"),
    [
        ("PUT", {"method": "POST", "pattern": "/allocate", "mode": "aa"}, "cannot be in aa"),
        (
            "PUT",
            {
                "method": "POST",
                "pattern": "/allocate",
                "mode": "shadow",
                "options": {"sample_rate": 0.1},
            },
            "route options do not apply",
        ),
        ("DELETE", {"method": "POST", "pattern": "/allocate"}, "moves only with it"),
    ],
)
def test_a_write_route_never_moves_alone_through_the_api(
    client: FlaskClient, table: RouteTable, method: str, body: dict[str, Any], detail: str
) -> None:
    table.set("POST", "/batches", "shadow", by="ops")

    response = client.open("/_strangler/routes", method=method, headers=AUTH, json=body)

    assert response.status_code == 400
    assert detail in documented(response, "/_strangler/routes", method)["detail"]
    assert {r.setting for r in table.list() if r.group} == {"shadow"}


def test_the_gate_refuses_a_group_move_with_409_and_its_decision_parity(
    client: FlaskClient, engine: Engine, table: RouteTable
) -> None:
    _decisions(engine, agree=5, differ=5)

    response = client.put(
        "/_strangler/routes",
        headers=AUTH,
        json={"method": "POST", "pattern": "/allocate", "mode": "new"},
    )

    body = documented(response, "/_strangler/routes", "PUT")
    assert response.status_code == 409
    assert body["parity"]["samples"] == 10 and body["parity"]["percent"] == 50.0
    assert body["detail"].startswith("refusing to move write group allocation to new")
    assert table.history() == []


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/_strangler/routes/rollback", {"method": "GET", "pattern": "/allocation/<id>"}),
        ("GET", "/_strangler/routes/history?method=GET&pattern=/allocation/<id>", None),
        ("GET", "/_strangler/routes/mismatches?method=GET&pattern=/allocation/<id>", None),
    ],
)
def test_a_pattern_the_table_does_not_know_is_404(
    client: FlaskClient, table: RouteTable, method: str, path: str, body: Any
) -> None:
    table.set("GET", ROUTE, "shadow", by="alice")

    response = client.open(path, method=method, headers=AUTH, json=body)

    assert response.status_code == 404
    error = documented(response, path.split("?")[0], method)
    assert error["detail"].startswith("unknown route GET '/allocation/<id>' (known: ")
    assert f"GET {ROUTE}" in error["detail"]
    assert table.get("GET", ROUTE).mode is Mode.SHADOW
