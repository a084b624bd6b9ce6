"""Bad input at the legacy shop's edge: schema-driven fuzzing of its HTTP API (its OpenAPI
document, examples/legacy_shop/openapi.json) and property-based requests outside it.

The shop runs in-process over a SQLite database; schemathesis generates valid and invalid
requests per operation. Whatever comes in: no 500, every status and body as documented,
every error JSON ``{"error", "detail"}``, bodies over 1 MiB refused with 413, malformed
ids answered 400 or 404.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import checks

from examples.legacy_shop import create_app
from examples.legacy_shop.app import MAX_BODY_BYTES

pytestmark = pytest.mark.chaos

ROOT = Path(__file__).resolve().parents[2]
DOCUMENT = ROOT / "examples" / "legacy_shop" / "openapi.json"
FUZZ = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
]


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flask]:
    app = create_app(f"sqlite:///{tmp_path_factory.mktemp('shop') / 'shop.db'}")
    client = app.test_client()
    for ref, sku, qty in (("b-1", "RED-CHAIR", 50), ("b-2", "RED-CHAIR", 5), ("b-3", "LAMP", 9)):
        assert (
            client.post(
                "/batches", json={"ref": ref, "sku": sku, "qty": qty, "eta": None}
            ).status_code
            == 201
        )
    assert (
        client.post("/allocate", json={"orderid": "o-1", "sku": "RED-CHAIR", "qty": 3}).status_code
        == 201
    )
    yield app


SCHEMA = schemathesis.openapi.from_dict(json.loads(DOCUMENT.read_text()))


@SCHEMA.parametrize()
@FUZZ
def test_shop_answers_every_generated_request_as_documented(
    shop: Flask, case: schemathesis.Case[Any]
) -> None:
    response = case.call_and_validate(app=shop, checks=CHECKS)  # in-process, over WSGI
    assert response.status_code < 500
    if response.status_code >= 400:
        body = response.json()
        assert set(body) >= {"error", "detail"}, body


@pytest.fixture
def client(shop: Flask) -> FlaskClient:
    return shop.test_client()


WRITES = [
    ("POST", "/batches"),
    ("POST", "/allocate"),
    ("POST", "/deallocate"),
    ("PATCH", "/batches/b-1"),
]


@pytest.mark.parametrize(("method", "path"), WRITES)
@pytest.mark.parametrize("chunked", [False, True])
def test_oversized_bodies_get_413(
    client: FlaskClient, method: str, path: str, chunked: bool
) -> None:
    body = b'{"qty": 1, "pad": "' + b"x" * MAX_BODY_BYTES + b'"}'
    if chunked:  # no Content-Length: the limit must hold on the stream too
        response = client.open(
            path,
            method=method,
            input_stream=io.BytesIO(body),
            headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
            environ_overrides={"wsgi.input_terminated": True},
        )
    else:
        response = client.open(path, method=method, data=body, content_type="application/json")
    assert response.status_code == 413
    assert response.get_json()["error"] == "request entity too large"


# any text, including '/', '%', '..', control characters and non-ASCII
ids = st.text(min_size=1, max_size=80)


@given(orderid=ids)
@FUZZ
def test_malformed_order_ids_get_400_or_404(client: FlaskClient, orderid: str) -> None:
    response = client.get("/allocations/" + orderid)
    if response.status_code == 200:  # the one order the fixture allocated
        assert orderid == "o-1"
        return
    _assert_refused("/allocations/" + orderid, response, {400, 404})


@given(ref=ids, qty=st.one_of(st.integers(), st.text(), st.none(), st.floats()))
@FUZZ
def test_malformed_batch_refs_get_400_or_404(client: FlaskClient, ref: str, qty: Any) -> None:
    get = client.get("/batches/" + ref)
    if get.status_code != 200:
        _assert_refused("/batches/" + ref, get, {400, 404})
    patch = client.patch("/batches/" + ref + "-missing", json={"qty": qty})
    _assert_refused("/batches/" + ref + "-missing", patch, {400, 404, 405})


def _assert_refused(path: str, response: Any, allowed: set[int]) -> None:
    """A JSON error with an allowed status; or a redirect that merges an empty path
    segment (Werkzeug's routing does that for ``//``) to a path without it."""
    if response.status_code == 308:
        assert "//" in path, path
        assert "//" not in response.headers["Location"].split("://", 1)[-1]
        return
    assert response.status_code in allowed, (path, response.status_code)
    assert set(response.get_json()) >= {"error", "detail"}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=70),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@given(
    path=st.sampled_from(["/batches", "/allocate", "/deallocate"]),
    body=st.one_of(
        json_values,
        st.dictionaries(st.sampled_from(["ref", "sku", "qty", "eta", "orderid"]), json_values),
    ),
    raw=st.binary(max_size=64),
)
@FUZZ
def test_arbitrary_bodies_never_cause_a_server_error(
    client: FlaskClient, path: str, body: Any, raw: bytes
) -> None:
    for response in (
        client.post(path, json=body),
        client.post(path, data=raw, content_type="application/json"),
    ):
        assert response.status_code in (200, 201, 400, 404, 409), response.get_json()
        assert response.is_json
