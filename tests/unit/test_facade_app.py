"""The facade in front of a mocked legacy system: faithful proxying, switching routes."""

from __future__ import annotations

import gzip
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
import responses
from flask import Flask
from flask.testing import FlaskClient
from requests import PreparedRequest
from sqlalchemy import Engine, create_engine

from skeleton_app import Mode, RouteTable, create_app, facade_of
from tests.unit.test_facade_fakes import create_new_database

LEGACY = "http://legacy.test:8080"
ANY_LEGACY_URL = re.compile(r"http://legacy\.test:8080/.*")
ROUTE = "/allocations/<orderid>"
NOT_FOUND_BODY = {"error": "not found", "detail": "no allocations for order order-404"}


@dataclass(frozen=True)
class Allocation:
    sku: str
    batchref: str


class FakeReadModel:
    def __init__(self, allocations: dict[str, list[Allocation]]) -> None:
        self.allocations = allocations
        self.asked: list[str] = []
        self.fail = False

    def allocations_for(self, orderid: str) -> list[Allocation]:
        self.asked.append(orderid)
        if self.fail:
            raise RuntimeError("read model database is down")
        return list(self.allocations.get(orderid, []))

    def close(self) -> None:
        pass


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = create_engine(f"sqlite:///{tmp_path / 'new.db'}")
    create_new_database(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def table(engine: Engine, clock: Clock) -> RouteTable:
    return RouteTable(engine, clock=clock)


@pytest.fixture
def read_model() -> FakeReadModel:
    return FakeReadModel(
        {
            "order-1": [Allocation("BLUE-TABLE", "b-2"), Allocation("RED-CHAIR", "b-1")],
        }
    )


@pytest.fixture
def app(table: RouteTable, read_model: FakeReadModel) -> Flask:
    return create_app(
        LEGACY, "sqlite://", route_table=table, read_model=read_model, upstream_timeout=2.5
    )


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def upstream() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


def legacy_not_found(request: PreparedRequest) -> tuple[int, dict[str, str], bytes]:
    orderid = (request.path_url or "").rsplit("/", 1)[-1]
    body = {"error": "not found", "detail": f"no allocations for order {orderid}"}
    # What Flask's jsonify writes, as the legacy shop does.
    text = json.dumps(body, separators=(",", ":"), sort_keys=True) + "\n"
    return 404, {"Content-Type": "application/json"}, text.encode()


# -- legacy mode: the proxy ------------------------------------------------------------


def test_request_reaches_legacy_with_method_path_query_and_body(
    client: FlaskClient, upstream: responses.RequestsMock
) -> None:
    upstream.add(responses.POST, f"{LEGACY}/batches", status=201, json={"ref": "b-1"})

    response = client.post(
        "/batches?dry=1&tag=a%20b",
        data=b'{"ref": "b-1"}',
        headers={"Content-Type": "application/json"},
    )

    assert response.status_code == 201
    assert response.get_json() == {"ref": "b-1"}
    assert response.headers["X-Served-By"] == "legacy"
    sent = upstream.calls[0].request
    assert sent.method == "POST"
    assert sent.url == f"{LEGACY}/batches?dry=1&tag=a%20b"
    assert sent.body == b'{"ref": "b-1"}'
    assert sent.headers["Content-Type"] == "application/json"
    assert sent.headers["Content-Length"] == "14"


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"])
def test_every_method_is_proxied_as_is(
    client: FlaskClient, upstream: responses.RequestsMock, method: str
) -> None:
    upstream.add(method, f"{LEGACY}/things/7", status=200, body=b"")

    response = client.open("/things/7", method=method)

    assert response.status_code == 200
    assert upstream.calls[0].request.method == method
    assert response.headers["X-Served-By"] == "legacy"


def test_root_path_is_proxied(client: FlaskClient, upstream: responses.RequestsMock) -> None:
    upstream.add(responses.GET, f"{LEGACY}/", body=b"home")

    assert client.get("/").data == b"home"


def test_hop_by_hop_request_headers_stay_and_host_is_the_legacy_one(
    client: FlaskClient, upstream: responses.RequestsMock
) -> None:
    upstream.add(responses.GET, f"{LEGACY}/batches/b-1", json={})

    client.get(
        "/batches/b-1",
        headers={
            "Host": "shop.example.com",
            "X-Request-Id": "r-42",
            "Accept": "application/json",
            "Connection": "keep-alive, X-Private-Hop",
            "X-Private-Hop": "secret",
            "Keep-Alive": "timeout=5",
            "Proxy-Authorization": "Basic Zm9vOmJhcg==",
            "TE": "trailers",
            "Trailer": "X-Checksum",
            "Upgrade": "websocket",
        },
    )

    sent = upstream.calls[0].request.headers
    assert sent["X-Request-Id"] == "r-42"
    assert sent["Accept"] == "application/json"
    for hop in (
        "Connection",
        "X-Private-Hop",
        "Keep-Alive",
        "Proxy-Authorization",
        "TE",
        "Trailer",
        "Upgrade",
        "Transfer-Encoding",
    ):
        assert hop not in sent, hop
    assert "Host" not in sent or sent["Host"] == "legacy.test:8080"
    assert urlsplit(upstream.calls[0].request.url).netloc == "legacy.test:8080"
    assert sent["X-Forwarded-Host"] == "shop.example.com"
    assert sent["X-Forwarded-Proto"] == "http"
    assert sent["X-Forwarded-For"] == "127.0.0.1"


def test_hop_by_hop_response_headers_are_dropped_the_rest_passed_back(
    client: FlaskClient, upstream: responses.RequestsMock
) -> None:
    headers = [
        ("Content-Type", "application/json"),
        ("Connection", "X-Private-Hop"),
        ("X-Private-Hop", "1"),
        ("Keep-Alive", "timeout=5"),
        ("Proxy-Authenticate", "Basic"),
        ("Upgrade", "h2c"),
        ("X-Served-By", "someone-else"),
        ("Cache-Control", "no-store"),
        ("ETag", '"v1"'),
    ]
    upstream.add_callback(
        responses.GET, f"{LEGACY}/batches/b-1", callback=lambda request: (200, headers, b"{}")
    )

    response = client.get("/batches/b-1")

    for hop in ("Connection", "X-Private-Hop", "Keep-Alive", "Proxy-Authenticate", "Upgrade"):
        assert hop not in response.headers, hop
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["ETag"] == '"v1"'
    assert response.headers["Content-Type"] == "application/json"
    assert response.headers.getlist("X-Served-By") == ["legacy"]


def test_cookies_go_both_ways_and_are_never_kept_by_the_facade(
    app: Flask, upstream: responses.RequestsMock
) -> None:
    client = app.test_client(use_cookies=False)
    cookies = [("Set-Cookie", "session=abc; Path=/; HttpOnly"), ("Set-Cookie", "theme=dark")]
    upstream.add_callback(
        responses.GET, f"{LEGACY}/login", callback=lambda request: (200, cookies, b"ok")
    )
    upstream.add(responses.GET, f"{LEGACY}/me", body=b"me")

    response = client.get("/login", headers={"Cookie": "tracking=1; lang=en"})
    assert upstream.calls[0].request.headers["Cookie"] == "tracking=1; lang=en"
    assert response.headers.getlist("Set-Cookie") == [
        "session=abc; Path=/; HttpOnly",
        "theme=dark",
    ]

    client.get("/me")
    assert "Cookie" not in upstream.calls[1].request.headers


def test_redirects_are_passed_back_not_followed(
    client: FlaskClient, upstream: responses.RequestsMock
) -> None:
    upstream.add(responses.POST, f"{LEGACY}/old", status=303, headers={"Location": "/new"})
    upstream.add(responses.GET, f"{LEGACY}/new", body=b"followed")

    response = client.post("/old")

    assert response.status_code == 303
    assert response.headers["Location"] == "/new"
    assert len(upstream.calls) == 1


def test_a_redirect_into_legacy_points_at_the_facade_instead(
    client: FlaskClient, upstream: responses.RequestsMock
) -> None:
    upstream.add(responses.GET, f"{LEGACY}/a", status=302, headers={"Location": f"{LEGACY}/b?x=1"})
    upstream.add(
        responses.GET,
        f"{LEGACY}/c",
        status=301,
        headers={"Location": "https://elsewhere.example/d"},
    )

    assert client.get("/a").headers["Location"] == "/b?x=1"
    assert client.get("/c").headers["Location"] == "https://elsewhere.example/d"


@pytest.mark.parametrize(
    ("status", "body"), [(400, b'{"error":"bad request"}'), (409, b"conflict"), (500, b"boom")]
)
def test_status_and_body_pass_back_unchanged(
    client: FlaskClient, upstream: responses.RequestsMock, status: int, body: bytes
) -> None:
    upstream.add(responses.POST, f"{LEGACY}/allocate", status=status, body=body)

    response = client.post("/allocate", json={})

    assert response.status_code == status
    assert response.data == body
    assert response.headers["X-Served-By"] == "legacy"


def test_no_content_stays_without_a_content_type(
    client: FlaskClient, upstream: responses.RequestsMock
) -> None:
    upstream.add_callback(
        responses.DELETE,
        f"{LEGACY}/things/1",
        callback=lambda request: (204, {}, b""),
        content_type=None,
    )

    response = client.delete("/things/1")

    assert response.status_code == 204
    assert "Content-Type" not in response.headers
    assert response.data == b""


def test_compressed_bodies_pass_through_undecoded(
    client: FlaskClient, upstream: responses.RequestsMock
) -> None:
    compressed = gzip.compress(b'{"big": "' + b"x" * 5000 + b'"}')
    upstream.add(
        responses.GET,
        f"{LEGACY}/report",
        body=compressed,
        headers={"Content-Encoding": "gzip", "Content-Length": str(len(compressed))},
        content_type="application/json",
    )

    response = client.get("/report", headers={"Accept-Encoding": "gzip"})

    assert upstream.calls[0].request.headers["Accept-Encoding"] == "gzip"
    assert response.headers["Content-Encoding"] == "gzip"
    assert response.headers["Content-Length"] == str(len(compressed))
    assert response.data == compressed


def test_large_bodies_are_streamed_in_chunks(
    client: FlaskClient, upstream: responses.RequestsMock
) -> None:
    body = bytes(range(256)) * 4096  # 1 MiB
    upstream.add(responses.GET, f"{LEGACY}/export", body=body)

    response = client.get("/export", buffered=False)
    chunks = list(response.response)
    response.close()

    assert len(chunks) > 1
    assert b"".join(chunks) == body


def test_legacy_timeout_is_a_504_json(
    client: FlaskClient, upstream: responses.RequestsMock
) -> None:
    upstream.add(responses.GET, f"{LEGACY}/slow", body=requests.exceptions.ReadTimeout("slow"))

    response = client.get("/slow")

    assert response.status_code == 504
    assert response.get_json() == {
        "error": "gateway timeout",
        "detail": "the legacy system did not answer within 2.5 s",
    }
    assert response.headers["X-Served-By"] == "legacy"


def test_legacy_refusing_connections_is_a_502_json(
    client: FlaskClient, upstream: responses.RequestsMock
) -> None:
    upstream.add(
        responses.GET,
        f"{LEGACY}/down",
        body=requests.exceptions.ConnectionError("Connection refused"),
    )

    response = client.get("/down")

    assert response.status_code == 502
    assert response.get_json() == {
        "error": "bad gateway",
        "detail": "the legacy system could not be reached",
    }
    assert response.headers["X-Served-By"] == "legacy"


@pytest.mark.parametrize(
    ("target", "host"),
    [
        ("http://evil.example/steal", None),
        ("/steal", "evil.example"),
        ("//evil.example/steal", None),
        ("/@evil.example/steal", None),
        ("/%2F%2Fevil.example/steal", None),
        ("/a?next=http://evil.example/", None),
        ("/%68ttp://evil.example", None),
    ],
)
def test_no_request_can_make_the_facade_call_another_host(
    client: FlaskClient, upstream: responses.RequestsMock, target: str, host: str | None
) -> None:
    upstream.add(responses.GET, ANY_LEGACY_URL, body=b"legacy")

    headers = {"Host": host} if host else {}
    response = client.get(target, headers=headers)

    assert response.status_code == 200, response.data
    assert response.data == b"legacy"
    assert [urlsplit(call.request.url).netloc for call in upstream.calls] == ["legacy.test:8080"]


def test_request_bodies_are_streamed_to_legacy_not_buffered(
    app: Flask, upstream: responses.RequestsMock, monkeypatch: pytest.MonkeyPatch
) -> None:
    session = facade_of(app).proxy._session
    sent_data: list[object] = []
    real_send = session.send

    def spy(request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        sent_data.append(request.body)
        return real_send(request, **kwargs)

    monkeypatch.setattr(session, "send", spy)
    upstream.add(responses.PUT, f"{LEGACY}/upload", status=201, body=b"stored")
    payload = bytes(range(256)) * 4096  # 1 MiB

    response = app.test_client().put(
        "/upload", data=payload, headers={"Content-Type": "application/octet-stream"}
    )

    assert (response.status_code, response.data) == (201, b"stored")
    [data] = sent_data
    assert not isinstance(data, bytes | bytearray)  # handed over as a stream
    assert len(data) == len(payload)  # type: ignore[arg-type]
    sent = upstream.calls[0].request
    assert sent.body == payload
    assert sent.headers["Content-Length"] == str(len(payload))
    assert "Transfer-Encoding" not in sent.headers


def test_a_chunked_request_body_is_streamed_chunked(
    client: FlaskClient, upstream: responses.RequestsMock
) -> None:
    upstream.add(responses.POST, f"{LEGACY}/events", body=b"ok")

    # what a server hands over for a chunked request: no length, input terminated
    client.post(
        "/events",
        input_stream=io.BytesIO(b"a" * 100_000),
        environ_overrides={
            "wsgi.input_terminated": True,
            "CONTENT_LENGTH": "",
            "HTTP_TRANSFER_ENCODING": "chunked",
        },
    )

    sent = upstream.calls[0].request
    assert sent.headers["Transfer-Encoding"] == "chunked"
    assert "Content-Length" not in sent.headers
    assert b"".join(sent.body) == b"a" * 100_000  # type: ignore[arg-type]


def test_connect_is_refused_and_never_reaches_legacy(
    client: FlaskClient, upstream: responses.RequestsMock
) -> None:
    response = client.open(
        "/", method="CONNECT", environ_overrides={"REQUEST_URI": "evil.example:443"}
    )

    assert response.status_code == 405
    assert response.get_json() == {
        "error": "method not allowed",
        "detail": "the facade is not a forward proxy",
    }
    assert len(upstream.calls) == 0


@pytest.mark.parametrize(
    "target", ["/a/../b", "/a/%2e%2e/b", "/..%2F..%2Fevil", "/./x", "/shop/%2E%2E"]
)
def test_dot_segments_are_refused_so_nothing_climbs_out_of_the_legacy_base_path(
    upstream: responses.RequestsMock,
    table: RouteTable,
    read_model: FakeReadModel,
    target: str,
) -> None:
    app = create_app(
        "http://legacy.test:8080/shop", "sqlite://", route_table=table, read_model=read_model
    )
    upstream.add(responses.GET, ANY_LEGACY_URL, body=b"ok")

    response = app.test_client().get(target)

    assert response.status_code == 400
    assert response.get_json() == {
        "error": "bad request",
        "detail": "paths with '.' or '..' segments are not forwarded",
    }
    assert len(upstream.calls) == 0


def test_dots_inside_segments_are_fine(
    client: FlaskClient, upstream: responses.RequestsMock
) -> None:
    upstream.add(responses.GET, f"{LEGACY}/a..b/..c/v1.2", body=b"ok")

    assert client.get("/a..b/..c/v1.2").data == b"ok"


# -- switching a route to the new system -----------------------------------------------


def test_a_route_set_to_new_is_answered_by_the_read_model(
    client: FlaskClient,
    table: RouteTable,
    upstream: responses.RequestsMock,
    read_model: FakeReadModel,
) -> None:
    table.set("GET", ROUTE, Mode.NEW, by="ops", reason="cutover")

    response = client.get("/allocations/order-1")

    assert response.status_code == 200
    assert response.headers["X-Served-By"] == "new"
    assert response.mimetype == "application/json"
    assert response.get_json() == [
        {"sku": "BLUE-TABLE", "batchref": "b-2"},
        {"sku": "RED-CHAIR", "batchref": "b-1"},
    ]
    assert read_model.asked == ["order-1"]
    assert len(upstream.calls) == 0


def test_the_new_not_found_is_byte_for_byte_the_legacy_one(
    client: FlaskClient, table: RouteTable, upstream: responses.RequestsMock
) -> None:
    upstream.add_callback(responses.GET, ANY_LEGACY_URL, callback=legacy_not_found)
    legacy = client.get("/allocations/order-404")

    table.set("GET", ROUTE, "new", by="ops")
    new = client.get("/allocations/order-404")

    assert legacy.headers["X-Served-By"] == "legacy"
    assert new.headers["X-Served-By"] == "new"
    assert (new.status_code, new.mimetype, new.data) == (
        legacy.status_code,
        legacy.mimetype,
        legacy.data,
    )
    assert new.get_json() == NOT_FOUND_BODY


def test_switching_back_to_legacy_proxies_again(
    client: FlaskClient, table: RouteTable, upstream: responses.RequestsMock
) -> None:
    upstream.add(responses.GET, f"{LEGACY}/allocations/order-1", json=[{"from": "legacy"}])
    table.set("GET", ROUTE, "new", by="ops")
    assert client.get("/allocations/order-1").headers["X-Served-By"] == "new"

    table.set("GET", ROUTE, "legacy", by="ops", reason="rollback")
    response = client.get("/allocations/order-1")

    assert response.headers["X-Served-By"] == "legacy"
    assert response.get_json() == [{"from": "legacy"}]


def test_a_change_made_elsewhere_takes_effect_after_the_refresh_interval(
    client: FlaskClient, engine: Engine, clock: Clock, upstream: responses.RequestsMock
) -> None:
    upstream.add(responses.GET, ANY_LEGACY_URL, json=[])
    assert client.get("/allocations/order-1").headers["X-Served-By"] == "legacy"

    RouteTable(engine).set("GET", ROUTE, "new", by="another-process")

    clock.now += 0.9
    assert client.get("/allocations/order-1").headers["X-Served-By"] == "legacy"
    clock.now += 0.1
    assert client.get("/allocations/order-1").headers["X-Served-By"] == "new"


def test_only_the_switched_method_and_pattern_go_to_the_new_system(
    client: FlaskClient, table: RouteTable, upstream: responses.RequestsMock
) -> None:
    upstream.add(responses.POST, ANY_LEGACY_URL, status=405, json={})
    upstream.add(responses.GET, ANY_LEGACY_URL, status=404, json={})
    table.set("GET", ROUTE, "new", by="ops")

    assert client.post("/allocations/order-1").headers["X-Served-By"] == "legacy"
    assert client.get("/allocations/order-1/extra").headers["X-Served-By"] == "legacy"
    assert client.get("/allocations/").headers["X-Served-By"] == "legacy"
    assert client.get("/allocations/order-1").headers["X-Served-By"] == "new"


def test_head_follows_get_on_the_new_system(
    client: FlaskClient, table: RouteTable, upstream: responses.RequestsMock
) -> None:
    table.set("GET", ROUTE, "new", by="ops")

    response = client.head("/allocations/order-1")

    assert response.status_code == 200
    assert response.headers["X-Served-By"] == "new"
    assert response.data == b""
    assert len(upstream.calls) == 0


def test_everything_is_legacy_while_the_route_table_cannot_be_read(
    tmp_path: Path, read_model: FakeReadModel, upstream: responses.RequestsMock
) -> None:
    unmigrated = create_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    app = create_app(LEGACY, "sqlite://", route_table=RouteTable(unmigrated), read_model=read_model)
    upstream.add(responses.GET, ANY_LEGACY_URL, json=[{"from": "legacy"}])

    response = app.test_client().get("/allocations/order-1")

    assert response.headers["X-Served-By"] == "legacy"
    assert response.get_json() == [{"from": "legacy"}]
    unmigrated.dispose()


# -- the facade's own endpoints --------------------------------------------------------


def test_health_is_the_facades_own(client: FlaskClient, upstream: responses.RequestsMock) -> None:
    response = client.get("/_strangler/health")

    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}
    assert response.headers["X-Served-By"] == "facade"
    assert len(upstream.calls) == 0


def test_the_reserved_prefix_is_never_proxied(
    client: FlaskClient, upstream: responses.RequestsMock
) -> None:
    missing = client.get("/_strangler/secrets")
    wrong_method = client.post("/_strangler/health")

    assert missing.status_code == 404
    assert missing.get_json() == {
        "error": "not found",
        "detail": "no facade endpoint at /_strangler/secrets",
    }
    assert wrong_method.status_code == 405
    assert wrong_method.get_json()["error"] == "method not allowed"
    assert wrong_method.headers["Allow"] == "GET, HEAD"
    assert len(upstream.calls) == 0


def test_the_bare_reserved_prefix_is_not_proxied_either(
    client: FlaskClient, upstream: responses.RequestsMock
) -> None:
    response = client.get("/_strangler")

    assert response.status_code == 404
    assert response.headers["X-Served-By"] == "facade"
    assert len(upstream.calls) == 0


def test_an_unexpected_facade_failure_is_a_500_json(
    engine: Engine, read_model: FakeReadModel
) -> None:
    class BrokenTable(RouteTable):
        def match(self, method: str, path: str) -> None:
            raise KeyError("bug")

    app = create_app(LEGACY, "sqlite://", route_table=BrokenTable(engine), read_model=read_model)

    response = app.test_client().get("/anything")

    assert response.status_code == 500
    assert response.get_json() == {
        "error": "internal server error",
        "detail": "unexpected KeyError; see the facade's log",
    }


def test_the_real_read_model_is_opened_once_and_only_when_a_new_route_needs_it(
    table: RouteTable,
    read_model: FakeReadModel,
    upstream: responses.RequestsMock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    opened: list[str] = []

    def open_read_model(url: str, time_limit: float | None = None) -> FakeReadModel:
        opened.append(url)
        return read_model

    monkeypatch.setattr("skeleton_app.app.open_new_read_model", open_read_model)
    upstream.add(responses.GET, ANY_LEGACY_URL, json=[])
    client = create_app(LEGACY, "sqlite:///new.db", route_table=table).test_client()

    client.get("/allocations/order-1")
    assert opened == []

    table.set("GET", ROUTE, "new", by="ops")
    first = client.get("/allocations/order-1")
    second = client.get("/allocations/order-1")

    assert opened == ["sqlite:///new.db"]
    assert first.headers["X-Served-By"] == second.headers["X-Served-By"] == "new"
    assert first.status_code == second.status_code == 200


def test_a_request_that_cannot_be_forwarded_is_a_502_json(
    client: FlaskClient, upstream: responses.RequestsMock
) -> None:
    upstream.add(
        responses.GET, ANY_LEGACY_URL, body=requests.exceptions.InvalidHeader("bad header value")
    )

    response = client.get("/odd")

    assert response.status_code == 502
    assert response.get_json() == {
        "error": "bad gateway",
        "detail": "the request could not be forwarded to the legacy system",
    }
    assert response.headers["X-Served-By"] == "legacy"
