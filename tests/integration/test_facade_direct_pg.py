"""The read model bounds its own reads on PostgreSQL, so the facade's direct path can serve a
moved read route without a thread and still give up on a slow read."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import pytest
import responses
from flask import Flask
from sqlalchemy import Engine, create_engine, text

from new_domain import ReadTimeout, open_read_model, upgrade_database
from skeleton_app import FacadeSettings, RouteTable, close_app, create_app
from skeleton_app.direct import DirectPath
from tests.unit.test_facade_fakes import LEGACY, ROUTE, BufferedClient, legacy_json, metric

pytestmark = pytest.mark.postgres

LEGACY_ANSWER = [{"sku": "FROM-LEGACY", "batchref": "b-legacy"}]
TIME_LIMIT = 0.5


@pytest.fixture
def new_db(pg_url: str) -> Iterator[str]:
    upgrade_database(pg_url)
    engine = create_engine(pg_url)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO allocations_view (orderid, sku, batchref) VALUES "
                "('o-1', 'RED-CHAIR', 'b-2'), ('o-1', 'BLUE-SOFA', 'b-1')"
            )
        )
    engine.dispose()
    yield pg_url


@pytest.fixture
def locker(new_db: str) -> Iterator[Engine]:
    engine = create_engine(new_db)
    yield engine
    engine.dispose()


@pytest.fixture
def app(new_db: str) -> Iterator[Flask]:
    settings = FacadeSettings(new_timeout=TIME_LIMIT, max_lag=None)
    app = create_app(LEGACY, new_db, settings=settings)
    app.test_client_class = BufferedClient
    RouteTable(new_db).set("GET", ROUTE, "new", by="ops", force=True)
    with responses.RequestsMock(assert_all_requests_are_fired=False) as upstream:
        upstream.add_callback(
            responses.GET,
            re.compile(r"http://legacy\.test:8080/.*"),
            callback=legacy_json(LEGACY_ANSWER),
        )
        yield app
    close_app(app)


def test_a_read_blocked_past_the_time_limit_raises_read_timeout(
    new_db: str, locker: Engine
) -> None:
    with open_read_model(new_db, time_limit=0.2) as read_model:
        assert [a.sku for a in read_model.allocations_for("o-1")] == ["BLUE-SOFA", "RED-CHAIR"]
        with locker.begin() as conn:
            conn.execute(text("LOCK TABLE allocations_view IN ACCESS EXCLUSIVE MODE"))
            started = time.monotonic()
            with pytest.raises(ReadTimeout):
                read_model.allocations_for("o-1")
            assert time.monotonic() - started < 5  # the database gave up, not a hang
        # the cancelled connection went back to the pool in a usable state
        assert len(read_model.allocations_for("o-1")) == 2


def test_the_moved_route_is_served_on_the_direct_path_and_falls_back_on_a_slow_read(
    app: Flask, locker: Engine
) -> None:
    assert isinstance(app.wsgi_app, DirectPath)
    client = app.test_client()

    served = client.get("/allocations/o-1")
    assert served.headers["X-Served-By"] == "new"
    assert served.get_json() == [
        {"batchref": "b-1", "sku": "BLUE-SOFA"},
        {"batchref": "b-2", "sku": "RED-CHAIR"},
    ]

    with locker.begin() as conn:
        conn.execute(text("LOCK TABLE allocations_view IN ACCESS EXCLUSIVE MODE"))
        slow = client.get("/allocations/o-1")

    assert (slow.headers["X-Served-By"], slow.get_json()) == ("legacy", LEGACY_ANSWER)
    assert (
        metric(app, "strangler_facade_fallbacks_total", route=f"GET {ROUTE}", reason="timeout") == 1
    )
    assert client.get("/allocations/o-1").headers["X-Served-By"] == "new"
