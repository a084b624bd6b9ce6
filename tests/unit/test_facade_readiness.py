"""``/_strangler/ready`` says what is degraded (503), while ``/_strangler/health`` stays a
liveness check: a new database unreachable or not migrated, a route table gone stale."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import create_engine, text

from new_domain import upgrade_database
from skeleton_app import RouteTable, close_app
from tests.unit.test_facade_admin import documented, make_app
from tests.unit.test_facade_fakes import create_new_database


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def migrated(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'new.db'}"
    upgrade_database(url)
    return url


def facade(url: str, clock: Clock | None = None) -> Iterator[Flask]:
    table = RouteTable(url, refresh_interval=1.0, clock=clock or Clock(), refresh_wait=5.0)
    app = make_app(table)
    yield app
    close_app(app)
    table.close()


def ready(app: Flask) -> tuple[int, dict[str, Any]]:
    client = app.test_client()
    assert client.get("/_strangler/health").status_code == 200  # liveness, whatever happens
    response = client.get("/_strangler/ready")
    return response.status_code, documented(response, "/_strangler/ready", "GET")


def test_a_migrated_reachable_database_and_a_fresh_route_table_are_ready(migrated: str) -> None:
    for app in facade(migrated):
        status, body = ready(app)

        assert status == 200
        assert body["status"] == "ready"
        assert body["checks"]["new_database"] == {"ok": True, "detail": "reachable and migrated"}
        assert body["checks"]["route_table"]["ok"] is True


def test_a_database_without_migrations_is_degraded(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'bare.db'}"
    engine = create_engine(url)
    create_new_database(engine)  # the tables, but not through `strangler db upgrade`
    engine.dispose()
    for app in facade(url):
        status, body = ready(app)

        assert status == 503
        assert body["status"] == "degraded"
        assert body["checks"]["new_database"] == {
            "ok": False,
            "detail": "not migrated (no schema revision): run 'strangler db upgrade'",
        }


def test_an_unreachable_database_is_degraded_and_the_route_table_never_read(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'no-such-folder' / 'new.db'}"
    for app in facade(url):
        status, body = ready(app)

        assert status == 503
        database = body["checks"]["new_database"]
        assert database["ok"] is False
        assert database["detail"].startswith("unreachable: unable to open database file")
        assert body["checks"]["route_table"] == {
            "ok": False,
            "age_seconds": None,
            "detail": "never read: every route is served by legacy",
        }


def test_a_route_table_unread_for_too_long_is_stale(migrated: str) -> None:
    clock = Clock()
    for app in facade(migrated, clock):
        assert ready(app)[0] == 200
        engine = create_engine(migrated)
        with engine.begin() as conn:
            conn.execute(text("ALTER TABLE facade_route RENAME TO facade_route_away"))
        engine.dispose()
        clock.now += 2.0  # due for a reload, which fails: still within the limit
        assert ready(app)[0] == 200

        clock.now += 10.0
        status, body = ready(app)

        assert status == 503
        assert body["checks"]["new_database"]["ok"] is True
        assert body["checks"]["route_table"] == {
            "ok": False,
            "age_seconds": 12.0,
            "detail": "stale: last read 12 s ago (limit 5 s)",
        }
