"""The operator console: its static page and the admin endpoints it reads (pipeline, dead
letters, replay, anomalies, the gate's verdict per route), and the lag history behind
its chart."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import Engine, func, insert, select

from skeleton_app import FacadeSettings, RouteTable, ShadowResults, close_app, create_app
from skeleton_app.console import FILES
from skeleton_app.lag_history import LagHistory
from skeleton_app.operations import OperationsUnavailable
from skeleton_app.schema import facade_lag_sample
from skeleton_app.shadow_results import ShadowResult
from tests.unit.test_facade_admin import AUTH, GATE, ROUTE, TOKEN, documented, engine, table
from tests.unit.test_facade_fakes import LEGACY, Allocation, BufferedClient, FakeReadModel

__all__ = ["engine", "table"]  # fixtures shared with the admin API's tests

STATIC = Path(__file__).resolve().parents[2] / "skeleton_app" / "static"


class FakeOperations:
    """What the composition root's operations answer, recorded."""

    def __init__(self, failing: bool = False) -> None:
        self.failing = failing
        self.replayed: list[list[str]] = []
        self.closed = False

    def _maybe_fail(self) -> None:
        if self.failing:
            raise OperationsUnavailable("cannot reach the broker: connection refused")

    def pipeline(self) -> dict[str, Any]:
        return {
            "bridge": None,
            "consumer": {
                "sources": [
                    {
                        "source": "legacy/shop",
                        "current_as_of": "2026-12-01T10:00:00+00:00",
                        "newest_commit_at": None,
                        "heartbeat_at": "2026-12-01T10:00:00+00:00",
                        "heartbeat_age_seconds": 1.5,
                        "applied_at": "2026-12-01T10:00:01+00:00",
                        "lag_seconds": 1.5,
                    }
                ],
                "lag_seconds": 1.5,
                "outbox_backlog": 0,
                "dead_in_database": 1,
            },
            "queue": {
                "name": "q",
                "depth": 3,
                "dead_letter_queue": "q.dlq",
                "dead_letters": 1,
            },
            "anomalies": {"negative_stock": 2},
            "errors": {"bridge": "the facade was started without the legacy database"},
        }

    def dead_letters(self, limit: int) -> dict[str, Any]:
        self._maybe_fail()
        return {
            "queue": "q.dlq",
            "depth": 1,
            "dead_letters": [
                {
                    "message_id": "m-1",
                    "routing_key": "stock_lot.c",
                    "seq": 7,
                    "attempts": 3,
                    "first_failed_at": "2026-12-01T10:00:00+00:00",
                    "error_type": "MalformedChange",
                    "error": "<script>alert(1)</script>",
                }
            ][:limit],
        }

    def replay(self, ids: Sequence[str]) -> dict[str, Any]:
        self._maybe_fail()
        self.replayed.append(list(ids))
        return {
            "applied": [i for i in ids if i == "m-1"],
            "already_applied": [],
            "failed": [],
            "not_found": [i for i in ids if i != "m-1"],
        }

    def anomalies(self, limit: int, kind: str | None) -> dict[str, Any]:
        self._maybe_fail()
        return {
            "counts": {"negative_stock": 2},
            "total": 2,
            "anomalies": [
                {
                    "recorded_at": "2026-12-01T10:00:00+00:00",
                    "kind": "negative_stock",
                    "sku": "RED-CHAIR",
                    "detail": "qty -1",
                    "message_id": "m-9",
                }
            ][:limit],
        }

    def close(self) -> None:
        self.closed = True


def make_app(table: RouteTable, operations: FakeOperations | None) -> Flask:
    read_model = FakeReadModel({"order-1": [Allocation("RED-CHAIR", "b-1")]})
    settings = FacadeSettings(admin_token=TOKEN, gate=GATE, lag_sample_interval=0)
    app = create_app(
        LEGACY,
        "sqlite://",
        route_table=table,
        read_model=read_model,
        settings=settings,
        lag_provider=None,
        operations=operations,
    )
    app.test_client_class = BufferedClient
    return app


@pytest.fixture
def operations() -> FakeOperations:
    return FakeOperations()


@pytest.fixture
def client(table: RouteTable, operations: FakeOperations) -> Iterator[FlaskClient]:
    app = make_app(table, operations)
    yield app.test_client()
    close_app(app)


@pytest.fixture
def bare_client(table: RouteTable) -> Iterator[FlaskClient]:
    app = make_app(table, None)
    yield app.test_client()
    close_app(app)


# -- the page ----------------------------------------------------------------------------


class _Markup(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[dict[str, str | None]] = []
        self.styles: list[dict[str, str | None]] = []
        self.inline_script = False
        self.attributes: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.attributes.extend(name for name, _ in attrs)
        if tag == "script":
            self.scripts.append(dict(attrs))
            self._in_script = True
        if tag == "link":
            self.styles.append(dict(attrs))
        if tag == "style":
            self.inline_script = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline_script = True


def test_the_page_loads_without_a_token_with_a_strict_policy(bare_client: FlaskClient) -> None:
    response = bare_client.get("/_strangler/ui")
    assert response.status_code == 200
    assert response.content_type.startswith("text/html")
    policy = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "default-src 'none'" in policy
    assert "unsafe-inline" not in policy and "frame-ancestors 'none'" in policy
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert TOKEN not in response.get_data(as_text=True)


def test_the_page_has_no_inline_script_or_style_and_loads_only_its_own_files(
    bare_client: FlaskClient,
) -> None:
    markup = _Markup()
    markup.feed(bare_client.get("/_strangler/ui").get_data(as_text=True))
    assert not markup.inline_script
    assert "style" not in markup.attributes
    assert not [a for a in markup.attributes if a.startswith("on")]  # no inline handlers
    sources = [s["src"] for s in markup.scripts] + [s["href"] for s in markup.styles]
    assert len(sources) == 4
    for source in sources:
        assert source is not None and source.startswith("/_strangler/ui/")
        served = bare_client.get(source)
        assert served.status_code == 200, source
        assert served.headers["X-Content-Type-Options"] == "nosniff"
        assert served.get_data() == (STATIC / source.removeprefix("/_strangler/ui/")).read_bytes()


def test_the_script_writes_data_as_text_only() -> None:
    script = (STATIC / "console.js").read_text()
    assert "innerHTML" not in script and "outerHTML" not in script
    assert "insertAdjacentHTML" not in script and "document.write" not in script
    assert "eval(" not in script and "new Function" not in script
    assert "localStorage" not in script  # the token lives in sessionStorage only
    assert "sessionStorage" in script and "Authorization" in script


def test_only_the_listed_files_are_served(bare_client: FlaskClient) -> None:
    for path in FILES:
        assert bare_client.get(f"/_strangler/ui{path}").status_code == 200, path
    for path in ("/../admin.py", "/console.html", "/vendor/uplot/uPlot.js", "/x"):
        response = bare_client.get(f"/_strangler/ui{path}")
        assert response.status_code in (400, 404), path
        assert response.is_json
    assert bare_client.post("/_strangler/ui").status_code == 405
    assert (STATIC / "vendor" / "uplot" / "LICENSE").read_text().startswith("The MIT License")


# -- the endpoints it reads --------------------------------------------------------------

ADMIN_READS = ["/_strangler/pipeline", "/_strangler/dead-letters", "/_strangler/anomalies"]


@pytest.mark.parametrize("path", ADMIN_READS)
def test_reads_need_the_token(client: FlaskClient, path: str) -> None:
    assert client.get(path).status_code == 401
    assert client.get(path, headers={"Authorization": "Bearer nope"}).status_code == 401
    assert client.get(path, headers=AUTH).status_code == 200


def test_a_replay_needs_the_token_and_changes_nothing_without_it(
    client: FlaskClient, operations: FakeOperations
) -> None:
    response = client.post(
        "/_strangler/dead-letters/replay", json={"ids": ["m-1"], "reason": "fixed"}
    )
    assert response.status_code == 401
    assert operations.replayed == []


def test_pipeline_joins_the_lag_history_and_the_rest_of_the_pipeline(
    client: FlaskClient, engine: Engine
) -> None:
    now = datetime.now(UTC)
    with engine.begin() as conn:
        conn.execute(
            insert(facade_lag_sample),
            [
                {"at": now - timedelta(minutes=90), "lag_seconds": 9.0},
                {"at": now - timedelta(minutes=2), "lag_seconds": 1.25},
                {"at": now - timedelta(minutes=1), "lag_seconds": None},
            ],
        )
    body = documented(
        client.get("/_strangler/pipeline", headers=AUTH), "/_strangler/pipeline", "GET"
    )
    assert [s["lag_seconds"] for s in body["history"]["samples"]] == [1.25, None]
    assert body["queue"]["depth"] == 3 and body["consumer"]["sources"][0]["lag_seconds"] == 1.5
    assert body["anomalies"] == {"negative_stock": 2}
    assert body["errors"] == {"bridge": "the facade was started without the legacy database"}
    longer = client.get("/_strangler/pipeline?minutes=120", headers=AUTH).get_json()
    assert [s["lag_seconds"] for s in longer["history"]["samples"]] == [9.0, 1.25, None]


def test_pipeline_without_operations_says_what_it_cannot_show(bare_client: FlaskClient) -> None:
    response = bare_client.get("/_strangler/pipeline", headers=AUTH)
    body = documented(response, "/_strangler/pipeline", "GET")
    assert body["bridge"] is None and body["queue"] is None
    assert "pipeline" in body["errors"]


@pytest.mark.parametrize("query", ["minutes=0", "minutes=abc", "minutes=100000", "minutes=-1"])
def test_pipeline_refuses_bad_parameters(client: FlaskClient, query: str) -> None:
    response = client.get(f"/_strangler/pipeline?{query}", headers=AUTH)
    documented(response, "/_strangler/pipeline", "GET")
    assert response.status_code == 400


def test_dead_letters_are_listed_as_data(client: FlaskClient) -> None:
    response = client.get("/_strangler/dead-letters?limit=5", headers=AUTH)
    body = documented(response, "/_strangler/dead-letters", "GET")
    assert body["depth"] == 1
    assert body["dead_letters"][0]["error"] == "<script>alert(1)</script>"  # data, as given
    assert client.get("/_strangler/dead-letters?limit=0", headers=AUTH).status_code == 400


def test_anomalies_are_listed(client: FlaskClient) -> None:
    response = client.get("/_strangler/anomalies?limit=1&kind=negative_stock", headers=AUTH)
    body = documented(response, "/_strangler/anomalies", "GET")
    assert body["total"] == 2 and body["anomalies"][0]["sku"] == "RED-CHAIR"
    bad = client.get("/_strangler/anomalies?kind=a%0Ab", headers=AUTH)
    assert bad.status_code == 400 and bad.is_json


def test_a_replay_names_its_dead_letters_and_its_reason(
    client: FlaskClient, operations: FakeOperations
) -> None:
    response = client.post(
        "/_strangler/dead-letters/replay",
        json={"ids": ["m-1", "m-2", "m-1"], "reason": "handler fixed", "by": "alice"},
        headers=AUTH,
    )
    body = documented(response, "/_strangler/dead-letters/replay", "POST")
    assert operations.replayed == [["m-1", "m-2"]]
    assert body["applied"] == ["m-1"] and body["not_found"] == ["m-2"]
    assert body["by"] == "shared token, claimed: alice" and body["reason"] == "handler fixed"


@pytest.mark.parametrize(
    "payload",
    [
        {"ids": ["m-1"]},
        {"ids": ["m-1"], "reason": "   "},
        {"ids": [], "reason": "r"},
        {"ids": "m-1", "reason": "r"},
        {"ids": [1], "reason": "r"},
        {"ids": [""], "reason": "r"},
        {"ids": ["m\r\n-1"], "reason": "r"},
        {"ids": ["m"] * 101, "reason": "r"},
        {"ids": ["m-1"], "reason": "r", "all": True},
        ["m-1"],
    ],
)
def test_a_bad_replay_is_a_400_and_replays_nothing(
    client: FlaskClient, operations: FakeOperations, payload: Any
) -> None:
    response = client.post("/_strangler/dead-letters/replay", json=payload, headers=AUTH)
    documented(response, "/_strangler/dead-letters/replay", "POST")
    assert response.status_code == 400
    assert operations.replayed == []


def test_an_unreachable_pipeline_is_a_503_with_the_cause(table: RouteTable) -> None:
    app = make_app(table, FakeOperations(failing=True))
    client = app.test_client()
    try:
        for method, path, payload in [
            ("GET", "/_strangler/dead-letters", None),
            ("GET", "/_strangler/anomalies", None),
            ("POST", "/_strangler/dead-letters/replay", {"ids": ["m-1"], "reason": "r"}),
        ]:
            response = client.open(path, method=method, json=payload, headers=AUTH)
            body = documented(response, path, method)
            assert response.status_code == 503
            assert "connection refused" in body["detail"]
    finally:
        close_app(app)


def test_without_operations_the_pipeline_endpoints_are_off(bare_client: FlaskClient) -> None:
    for method, path, payload in [
        ("GET", "/_strangler/dead-letters", None),
        ("GET", "/_strangler/anomalies", None),
        ("POST", "/_strangler/dead-letters/replay", {"ids": ["m-1"], "reason": "r"}),
    ]:
        response = bare_client.open(path, method=method, json=payload, headers=AUTH)
        body = documented(response, path, method)
        assert response.status_code == 404
        assert "BROKER_URL" in body["detail"]


def test_each_route_shows_the_gates_verdict(client: FlaskClient, table: RouteTable) -> None:
    def verdict() -> dict[str, Any]:
        body = documented(
            client.get("/_strangler/routes", headers=AUTH), "/_strangler/routes", "GET"
        )
        [route] = [r for r in body["routes"] if r["pattern"] == ROUTE]
        return route["gate"]

    before = verdict()
    assert before["passed"] is False and "no shadow samples" in before["summary"]
    ShadowResults(table.engine).write(
        [
            ShadowResult(
                at=datetime.now(UTC),
                method="GET",
                pattern=ROUTE,
                kind="shadow",
                outcome="match",
                path="/allocations/o-1",
                legacy_status=200,
                legacy_ms=1.0,
                new_status=200,
                new_ms=1.0,
                diff=None,
            )
            for _ in range(GATE.min_samples)
        ]
    )
    after = verdict()
    assert after["passed"] is True and "100" in after["summary"]


# -- the lag history ---------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 12, 1, 10, 0, 3, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def _rows(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.scalar(select(func.count()).select_from(facade_lag_sample)) or 0)


def test_workers_sampling_the_same_interval_store_one_row(engine: Engine) -> None:
    clock = Clock()
    first = LagHistory(engine, lambda: 2.5, interval=10, clock=clock)
    second = LagHistory(engine, lambda: 3.5, interval=10, clock=clock)
    stored = first.record()
    assert stored is not None and stored.at == datetime(2026, 12, 1, 10, 0, 0, tzinfo=UTC)
    assert second.record() is None
    clock.now += timedelta(seconds=10)
    assert second.record() is not None
    assert [(s.at.second, s.lag_seconds) for s in first.samples()] == [(0, 2.5), (10, 3.5)]


def test_an_unmeasurable_lag_is_stored_as_unknown_and_old_samples_are_pruned(
    engine: Engine,
) -> None:
    clock = Clock()

    def failing() -> float | None:
        raise ConnectionError("new database down")

    history = LagHistory(engine, failing, interval=10, keep=60, clock=clock)
    history.record()
    assert [s.lag_seconds for s in history.samples()] == [None]
    clock.now += timedelta(seconds=61)
    history.record()
    assert _rows(engine) == 1  # the first one is older than keep


def test_the_sampler_thread_records_until_closed(engine: Engine) -> None:
    history = LagHistory(engine, lambda: 1.0, interval=0.05)
    history.start()
    history.start()  # once
    deadline = datetime.now(UTC) + timedelta(seconds=5)
    while _rows(engine) < 2 and datetime.now(UTC) < deadline:
        history._stop.wait(0.02)
    history.close()
    stored = _rows(engine)
    assert stored >= 2
    history._stop.wait(0.2)
    assert _rows(engine) == stored  # closed: no more samples


def test_without_a_lag_provider_nothing_is_sampled(engine: Engine) -> None:
    history = LagHistory(engine, None)
    history.start()
    assert history.record() is None and _rows(engine) == 0


def test_the_page_escapes_nothing_itself_because_it_never_builds_html() -> None:
    # every DOM write in the script goes through textContent or element creation
    script = (STATIC / "console.js").read_text()
    writes = re.findall(r"\.(textContent|innerText|innerHTML|outerHTML)\s*=", script)
    assert set(writes) == {"textContent"}


def test_every_console_file_is_package_data() -> None:
    """The wheel carries the console (pyproject's package-data globs cover its files)."""
    import tomllib
    from fnmatch import fnmatch

    project = tomllib.loads((STATIC.parents[1] / "pyproject.toml").read_text())
    globs = project["tool"]["setuptools"]["package-data"]["skeleton_app"]
    files = [p.relative_to(STATIC.parent).as_posix() for p in STATIC.rglob("*") if p.is_file()]
    assert len(files) == len(FILES)
    for file in files:
        assert any(fnmatch(file, pattern) for pattern in globs), file
