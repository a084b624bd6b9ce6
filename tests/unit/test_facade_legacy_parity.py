"""Against the real legacy shop, in-process: the new answers are legacy's, byte for byte."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import responses
from flask.testing import FlaskClient
from requests import PreparedRequest
from sqlalchemy import create_engine

from examples.legacy_shop.app import create_app as create_legacy_app
from skeleton_app import Mode, RouteTable, create_app
from tests.unit.test_facade_fakes import create_new_database

LEGACY = "http://legacy.test:5001"
ROUTE = "/allocations/<orderid>"


@dataclass(frozen=True)
class Allocation:
    sku: str
    batchref: str


class FakeReadModel:
    def __init__(self, allocations: dict[str, list[Allocation]]) -> None:
        self.allocations = allocations

    def allocations_for(self, orderid: str) -> list[Allocation]:
        return self.allocations.get(orderid, [])

    def close(self) -> None:
        pass


@pytest.fixture
def facade(tmp_path: Path) -> Iterator[tuple[FlaskClient, RouteTable]]:
    legacy = create_legacy_app(f"sqlite:///{tmp_path / 'legacy.db'}").test_client()

    def via_legacy(request: PreparedRequest) -> tuple[int, list[tuple[str, str]], bytes]:
        url = urlsplit(request.url or "")
        answer = legacy.open(
            url.path,
            query_string=url.query,
            method=request.method,
            headers=dict(request.headers),
            data=request.body,
        )
        return answer.status_code, list(answer.headers.items()), answer.get_data()

    engine = create_engine(f"sqlite:///{tmp_path / 'new.db'}")
    create_new_database(engine)
    table = RouteTable(engine)
    read_model = FakeReadModel(
        {
            "order-1": [Allocation("BLUE-TABLE", "early"), Allocation("RED-CHAIR", "late")],
            "order 2 é": [Allocation("RED-CHAIR", "late")],
        }
    )
    app = create_app(LEGACY, "sqlite://", route_table=table, read_model=read_model)
    with responses.RequestsMock(assert_all_requests_are_fired=False) as upstream:
        for method in ("GET", "POST"):
            upstream.add_callback(
                method,
                re.compile(r"http://legacy\.test:5001/.*"),
                callback=via_legacy,
                content_type=None,
            )
        yield app.test_client(), table
    engine.dispose()


def test_new_answers_equal_legacy_answers(facade: tuple[FlaskClient, RouteTable]) -> None:
    client, table = facade
    writes = [
        ("/batches", {"ref": "early", "sku": "BLUE-TABLE", "qty": 10, "eta": None}),
        ("/batches", {"ref": "late", "sku": "RED-CHAIR", "qty": 10, "eta": "2027-01-01"}),
        ("/allocate", {"orderid": "order-1", "sku": "RED-CHAIR", "qty": 2}),
        ("/allocate", {"orderid": "order-1", "sku": "BLUE-TABLE", "qty": 2}),
        ("/allocate", {"orderid": "order 2 é", "sku": "RED-CHAIR", "qty": 1}),
    ]
    for path, body in writes:
        response = client.post(path, json=body)
        assert response.status_code == 201, response.data
        assert response.headers["X-Served-By"] == "legacy"

    paths = [
        "/allocations/order-1",
        "/allocations/order%202%20%C3%A9",
        "/allocations/nobody",
        "/allocations/%22quoted%22",
    ]
    legacy = [client.get(path) for path in paths]
    table.set("GET", ROUTE, Mode.NEW, by="test")
    new = [client.get(path) for path in paths]

    assert [r.headers["X-Served-By"] for r in legacy] == ["legacy"] * len(paths)
    assert [r.headers["X-Served-By"] for r in new] == ["new"] * len(paths)
    assert [r.status_code for r in legacy] == [200, 200, 404, 404]
    for old, now in zip(legacy, new, strict=True):
        assert (now.status_code, now.content_type, now.data) == (
            old.status_code,
            old.content_type,
            old.data,
        )
