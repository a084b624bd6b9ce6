"""Bad input at the facade's edge: schema-driven fuzzing of its OpenAPI document
(docs/openapi.json) and property-based requests with odd paths, absolute-form targets,
Host headers and encoded dot segments.

The facade runs in-process over a migrated SQLite new database (route table and read
model). Its legacy upstream is ``responses`` registered for ``LEGACY_URL`` only, answering
with the real legacy shop (in-process, SQLite): a request for any other host raises in
``responses`` and is recorded, so "no request leaves for another host" is checked on
every example. The facade's own answers must never be a 500.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import responses
import schemathesis
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from requests import PreparedRequest
from schemathesis import checks

from examples.legacy_shop import create_app as create_shop
from examples.legacy_shop.app import MAX_BODY_BYTES
from skeleton_app import Mode, RouteTable, close_app, create_app
from skeleton_app.settings import FacadeSettings
from tests.integration.consumer_streams import migrated_sqlite_url

pytestmark = pytest.mark.chaos

ROOT = Path(__file__).resolve().parents[2]
LEGACY = "http://legacy.test:8080"
TOKEN = "chaos-admin-token"
ROUTE = "/allocations/<orderid>"
FUZZ = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
SCHEMA = schemathesis.openapi.from_dict(json.loads((ROOT / "docs" / "openapi.json").read_text()))


class _AnyMethod(responses.CallbackResponse):
    """A callback for every HTTP method the facade may forward (QUERY, TRACE, ...)."""

    def matches(self, request: PreparedRequest) -> tuple[bool, str]:
        self.method = request.method or "GET"
        return super().matches(request)


class Upstream:
    """``responses`` for LEGACY only, answered by the in-process legacy shop."""

    def __init__(self, shop: Flask) -> None:
        self.shop = shop.test_client()
        self.mock = responses.RequestsMock(assert_all_requests_are_fired=False)
        self.mock.add(_AnyMethod("GET", re.compile(re.escape(LEGACY) + "/.*"), self.answer))

    def answer(self, request: PreparedRequest) -> tuple[int, dict[str, str], bytes]:
        split = urlsplit(request.url or "")
        response = self.shop.open(
            split.path,
            method=request.method or "GET",
            query_string=split.query,
            data=_read(request.body),
            headers={k: v for k, v in request.headers.items() if k.lower() not in _FRAMING},
        )
        headers = {k: v for k, v in response.headers.items() if k.lower() not in _FRAMING}
        return response.status_code, headers, response.get_data()

    def hosts(self) -> set[str]:
        """Every scheme://host:port the facade sent a request to."""
        return {
            "{0.scheme}://{0.netloc}".format(urlsplit(call.request.url or ""))
            for call in self.mock.calls
        }

    def forget(self) -> None:
        self.mock.calls.reset()


_FRAMING = {"content-length", "transfer-encoding"}  # the body is handed over whole


def _read(body: Any) -> bytes:
    if body is None:
        return b""
    if isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode()
    if hasattr(body, "read"):
        return bytes(body.read())
    return b"".join(bytes(chunk) for chunk in body)


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    shop = create_shop(f"sqlite:///{tmp_path_factory.mktemp('shop') / 'shop.db'}")
    client = shop.test_client()
    assert (
        client.post(
            "/batches", json={"ref": "b-1", "sku": "RED-CHAIR", "qty": 50, "eta": None}
        ).status_code
        == 201
    )
    assert (
        client.post("/allocate", json={"orderid": "o-1", "sku": "RED-CHAIR", "qty": 3}).status_code
        == 201
    )
    upstream = Upstream(shop)
    with upstream.mock:
        yield upstream


@pytest.fixture(scope="module")
def facade(tmp_path_factory: pytest.TempPathFactory, upstream: Upstream) -> Iterator[Flask]:
    new_db = migrated_sqlite_url(tmp_path_factory.mktemp("new"))
    table = RouteTable(new_db, refresh_interval=0.0)
    table.set("GET", ROUTE, Mode.SHADOW, by="chaos", reason="fuzz both systems")
    app = create_app(
        LEGACY,
        new_db,
        route_table=table,
        settings=FacadeSettings(admin_token=TOKEN),
        lag_provider=None,
    )
    yield app
    close_app(app)
    table.close()


@pytest.fixture
def client(facade: Flask, upstream: Upstream) -> FlaskClient:
    upstream.forget()
    return facade.test_client()


def _assert_only_legacy_was_called(upstream: Upstream) -> None:
    assert upstream.hosts() <= {LEGACY}, upstream.hosts()


# -- the OpenAPI document --------------------------------------------------------------


@SCHEMA.parametrize()
@FUZZ
def test_facade_answers_generated_requests_without_a_server_error(
    facade: Flask, upstream: Upstream, case: schemathesis.Case[Any]
) -> None:
    upstream.forget()
    response = case.call_and_validate(
        app=facade,
        headers={"Authorization": f"Bearer {TOKEN}"},
        checks=[checks.not_a_server_error, checks.content_type_conformance],
    )
    assert response.status_code < 500, response.text
    _assert_only_legacy_was_called(upstream)


# -- odd targets -------------------------------------------------------------------------

segments = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=12)
tricky = st.sampled_from(
    [
        "..",
        ".",
        "%2e%2e",
        "%2E%2e",
        "%2e",
        "%252e%252e",
        "",
        "@evil.test",
        "evil.test:80",
        "\\..\\",
        "%2f",
        "%5c",
        "http:",
        "//evil.test",
        "?x=//evil.test",
        "#frag",
    ]
)
paths = st.lists(st.one_of(segments, tricky), min_size=1, max_size=5).map(
    lambda parts: "/" + "/".join(parts)
)
hosts = st.sampled_from(
    [
        "evil.test",
        "evil.test:8080",
        "127.0.0.1:1",
        "legacy.test:8080",
        "localhost",
        "[::1]:22",
        "a@evil.test",
    ]
)
methods = st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"])


def _wsgi(path: str) -> str:
    """``path`` as a WSGI server puts it in PATH_INFO (UTF-8 bytes read as latin-1),
    set directly: the test client would parse '//host' or '@' in a path as a URL."""
    return path.encode("utf-8", "surrogatepass").decode("latin-1")


@given(method=methods, path=paths, host=hosts)
@FUZZ
def test_no_path_or_host_header_sends_a_request_elsewhere(
    client: FlaskClient, upstream: Upstream, method: str, path: str, host: str
) -> None:
    upstream.forget()
    response = client.open(
        "/", method=method, environ_overrides={"PATH_INFO": _wsgi(path), "HTTP_HOST": host}
    )
    assert response.status_code != 500, (method, path, response.get_data()[:300])
    _assert_only_legacy_was_called(upstream)


@given(method=methods, target=st.builds(lambda host, path: f"http://{host}{path}", hosts, paths))
@FUZZ
def test_absolute_form_targets_go_to_legacy_only(
    client: FlaskClient, upstream: Upstream, method: str, target: str
) -> None:
    upstream.forget()
    split = urlsplit(target)
    response = client.open(
        "/",
        method=method,
        environ_overrides={
            "PATH_INFO": _wsgi(split.path or "/"),
            "QUERY_STRING": _wsgi(split.query),
            "REQUEST_URI": _wsgi(target),
            "RAW_URI": _wsgi(target),
            "HTTP_HOST": split.netloc,
        },
    )
    assert response.status_code != 500, (method, target)
    _assert_only_legacy_was_called(upstream)


@pytest.mark.parametrize(
    "path",
    [
        "/%2e%2e/_strangler/routes",
        "/a/%2E%2E/%2e%2e/etc/passwd",
        "/batches/..",
        "/allocations/./o-1",
        "/allocations/%2e%2e%2f%2e%2e",
    ],
)
def test_encoded_dot_segments_are_refused_with_400(
    client: FlaskClient, upstream: Upstream, path: str
) -> None:
    response = client.get(path)
    assert response.status_code == 400, (path, response.status_code)
    assert response.get_json()["error"] == "bad request"
    assert upstream.hosts() == set()  # refused before anything was forwarded


@given(orderid=st.text(min_size=1, max_size=80))
@FUZZ
def test_malformed_order_ids_get_400_or_404_from_both_systems(
    client: FlaskClient, upstream: Upstream, orderid: str
) -> None:
    upstream.forget()
    path = "/allocations/" + orderid
    response = client.get(path)
    if response.status_code == 200:
        assert orderid == "o-1"
    elif response.status_code == 308:  # legacy merged an empty segment (see the shop's test)
        assert "//" in path
    else:
        assert response.status_code in (400, 404), (path, response.status_code)
        assert set(response.get_json()) >= {"error", "detail"}
    _assert_only_legacy_was_called(upstream)


# -- oversized bodies ------------------------------------------------------------------

OVERSIZED = b'{"pad": "' + b"x" * MAX_BODY_BYTES + b'"}'


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/batches"),
        ("POST", "/allocate"),
        ("PATCH", "/batches/b-1"),
        ("PUT", "/_strangler/routes"),
        ("POST", "/_strangler/routes/rollback"),
    ],
)
@pytest.mark.parametrize("chunked", [False, True])
def test_oversized_bodies_get_413(
    client: FlaskClient, method: str, path: str, chunked: bool
) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    if chunked:
        response = client.open(
            path,
            method=method,
            input_stream=io.BytesIO(OVERSIZED),
            headers={**headers, "Transfer-Encoding": "chunked"},
            environ_overrides={"wsgi.input_terminated": True},
        )
    else:
        response = client.open(path, method=method, data=OVERSIZED, headers=headers)
    assert response.status_code == 413, (path, response.status_code, response.get_data()[:200])
    assert response.get_json()["error"] == "request entity too large"
