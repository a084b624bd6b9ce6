"""Attacks on the admin API and the route patterns, on PostgreSQL (which, unlike SQLite,
enforces column lengths and refuses NUL in text)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
from flask import Flask
from flask.testing import FlaskClient

from new_domain import upgrade_database
from skeleton_app import CutoverGate, FacadeSettings, RouteTable, Window, close_app, create_app
from skeleton_app.patterns import PatternMatcher, RouteError, validate_pattern
from skeleton_app.schema import facade_route
from tests.unit.test_facade_fakes import FakeReadModel

pytestmark = pytest.mark.postgres

ROUTE = "/allocations/<orderid>"
SHARED = "shared-t0ken-with-enough-entropy"
ALICE = "alice-t0ken-with-enough-entropy"
GATE = CutoverGate(min_parity=99.0, min_samples=10, window=Window(3600, 1000))


@pytest.fixture
def new_db(pg_url: str) -> str:
    upgrade_database(pg_url)
    return pg_url


@pytest.fixture
def table(new_db: str) -> Iterator[RouteTable]:
    table = RouteTable(new_db, refresh_interval=0.0, gate=GATE)
    yield table
    table.close()


@pytest.fixture
def app(table: RouteTable, new_db: str) -> Iterator[Flask]:
    settings = FacadeSettings(admin_token=SHARED, admin_tokens=(("alice", ALICE),), gate=GATE)
    app = create_app(
        "http://legacy.invalid",
        new_db,
        route_table=table,
        read_model=FakeReadModel({}),
        settings=settings,
        lag_provider=None,
    )
    yield app
    close_app(app)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def auth(token: str = SHARED) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_json_400(response: object) -> dict[str, str]:
    assert response.status_code == 400, response.get_data(as_text=True)  # type: ignore[attr-defined]
    body = response.get_json()  # type: ignore[attr-defined]
    assert set(body) == {"error", "detail"}
    return body  # type: ignore[no-any-return]


# -- item 9: every field validated and bounded ----------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        {"method": "GET", "pattern": ROUTE, "mode": "shadow", "by": "a" * 129},
        {"method": "GET", "pattern": ROUTE, "mode": "shadow", "by": "al\x00ice"},
        {"method": "GET", "pattern": ROUTE, "mode": "shadow", "reason": "ok\x00"},
        {"method": "GET", "pattern": ROUTE, "mode": "shadow", "reason": "fine\r\nforged line"},
        {"method": "GET", "pattern": ROUTE, "mode": "shadow", "reason": "\x1b[2Jcleared"},
        {"method": "GET", "pattern": ROUTE, "mode": "shadow", "reason": "r" * 1001},
        {"method": "GET", "pattern": "/allocations/<orderid>\x00", "mode": "shadow"},
        {"method": "GET", "pattern": "/" + "a" * 300, "mode": "shadow"},
        {"method": "GET\x00", "pattern": ROUTE, "mode": "shadow"},
        {"method": "GET", "pattern": ROUTE, "mode": "shadow\x00"},
    ],
)
def test_bad_fields_are_400_and_change_nothing(
    client: FlaskClient, table: RouteTable, body: dict[str, str]
) -> None:
    assert_json_400(client.put("/_strangler/routes", headers=auth(), json=body))
    assert table.history() == []


def test_bad_query_parameters_are_400(client: FlaskClient) -> None:
    for query in ("pattern=%00", "pattern=a%0d%0ab", "method=G%00", f"pattern={'a' * 300}"):
        assert_json_400(client.get(f"/_strangler/routes/history?{query}", headers=auth()))
        assert_json_400(
            client.get(f"/_strangler/routes/mismatches?method=GET&{query}", headers=auth())
        )


@pytest.mark.parametrize("depth", [33, 30_000])
def test_deeply_nested_bodies_are_400(client: FlaskClient, depth: int) -> None:
    deep = "[" * depth + "]" * depth
    body = f'{{"method": "GET", "pattern": "/x", "mode": "legacy", "options": {deep}}}'
    for method, path in (
        ("PUT", "/_strangler/routes"),
        ("POST", "/_strangler/routes/rollback"),
        ("DELETE", "/_strangler/routes"),
    ):
        response = client.open(
            path, method=method, headers=auth(), data=body, content_type="application/json"
        )
        assert "nested deeper" in assert_json_400(response)["detail"]


def test_a_body_with_brackets_inside_strings_is_not_deep(client: FlaskClient) -> None:
    response = client.put(
        "/_strangler/routes",
        headers=auth(),
        json={"method": "GET", "pattern": ROUTE, "mode": "shadow", "reason": "[" * 500 + '\\"{'},
    )
    assert response.status_code == 200, response.get_json()


# -- item 9: who acted comes from the credential ---------------------------------------


def test_the_audit_records_the_credential_not_the_claim(
    client: FlaskClient, table: RouteTable
) -> None:
    named = client.put(
        "/_strangler/routes",
        headers=auth(ALICE),
        json={"method": "GET", "pattern": ROUTE, "mode": "shadow", "by": "mallory"},
    )
    shared = client.put(
        "/_strangler/routes",
        headers=auth(),
        json={"method": "GET", "pattern": ROUTE, "mode": "aa", "by": "bob"},
    )
    anonymous = client.put(
        "/_strangler/routes",
        headers=auth(),
        json={"method": "GET", "pattern": ROUTE, "mode": "legacy"},
    )
    longest = client.put(
        "/_strangler/routes",
        headers=auth(),
        json={"method": "GET", "pattern": ROUTE, "mode": "shadow", "by": "b" * 128},
    )

    assert named.get_json()["audit"]["by"] == "alice"
    assert shared.get_json()["audit"]["by"] == "shared token, claimed: bob"
    assert anonymous.get_json()["audit"]["by"] == "shared token"
    by = longest.get_json()["audit"]["by"]
    assert len(by) == 128 and by.startswith("shared token, claimed: bbb") and by.endswith("...")
    wrong = client.put(
        "/_strangler/routes",
        headers=auth("alice"),
        json={"method": "GET", "pattern": ROUTE, "mode": "legacy"},
    )
    assert wrong.status_code == 401
    assert [e.by for e in table.history()][0] == "alice"


# -- item 6: linear-time patterns, and deleting a route --------------------------------


@pytest.mark.parametrize(
    "pattern",
    [
        "/<path:a>/<path:b>/<path:c>/<path:d>/<path:e>/<path:f>",
        "/x/<path:a>/y",
        "/<a>-<b>-<c>-<d>",
    ],
)
def test_patterns_that_would_backtrack_are_refused(
    client: FlaskClient, table: RouteTable, pattern: str
) -> None:
    body = assert_json_400(
        client.put(
            "/_strangler/routes",
            headers=auth(),
            json={"method": "GET", "pattern": pattern, "mode": "aa"},
        )
    )
    assert "linear time" in body["detail"]
    with pytest.raises(RouteError, match="linear time"):
        validate_pattern(pattern)
    assert table.history() == []


def test_accepted_patterns_match_long_paths_in_linear_time() -> None:
    matcher = PatternMatcher(
        [
            ("GET", "/<a>/<b>/<c>/<path:rest>"),
            ("GET", "/x/<int:n>"),
            ("GET", ROUTE),
            ("GET", "/<path:anything>"),
        ]
    )
    path = "/" + "/".join(["a-b-c-d-e-f-g-h"] * 400) + "/"
    started = time.perf_counter()
    for _ in range(10):
        assert matcher.match("GET", path) is not None
    assert time.perf_counter() - started < 1.0


def test_a_stored_pattern_that_would_backtrack_is_skipped_and_can_be_deleted(
    client: FlaskClient, table: RouteTable, new_db: str
) -> None:
    evil = "/<path:a>/<path:b>/<path:c>/<path:d>/<path:e>/<path:f>"
    from datetime import UTC, datetime

    with table.engine.begin() as conn:  # stored before the rule was tightened
        conn.execute(
            facade_route.insert().values(
                method="GET",
                pattern=evil,
                mode="aa",
                updated_at=datetime.now(UTC),
                updated_by="old",
                reason="",
                options="{}",
            )
        )
    reader = RouteTable(new_db, refresh_interval=0.0)
    try:
        started = time.perf_counter()
        assert reader.match("GET", "/a" * 75) is None
        assert time.perf_counter() - started < 1.0
    finally:
        reader.close()

    missing = client.delete(
        "/_strangler/routes",
        headers=auth(ALICE),
        json={"method": "GET", "pattern": "/nothing/here"},
    )
    assert missing.status_code == 404 and set(missing.get_json()) == {"error", "detail"}
    deleted = client.delete(
        "/_strangler/routes",
        headers=auth(ALICE),
        json={"method": "GET", "pattern": evil, "reason": "backtracks"},
    )
    assert deleted.status_code == 200, deleted.get_json()
    audit = deleted.get_json()["audit"]
    assert (audit["from_mode"], audit["to_mode"], audit["by"], audit["reason"]) == (
        "aa",
        "deleted",
        "alice",
        "backtracks",
    )
    assert all(r.pattern != evil for r in table.list())
    history = client.get("/_strangler/routes/history", headers=auth()).get_json()["entries"]
    assert [e["to_mode"] for e in history] == ["deleted"]
    json.dumps(history)
