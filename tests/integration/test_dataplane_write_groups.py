"""``strangler serve --data-plane haproxy`` and a write group: its routes always go through
the facade, which gives legacy the writes legacy owns while it holds the group's ownership
row (so a move waits for them), and decides or refuses the others.

A request HAProxy sends straight to legacy reaches it with one address in
``X-Forwarded-For`` (the client's); through the facade it carries two (the facade's
proxy adds the hop from HAProxy).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
import requests
from sqlalchemy import create_engine, update

from new_domain import upgrade_database
from new_domain.adapters import orm
from skeleton_app import RouteTable
from tests.integration.test_dataplane import QuietServer, haproxy, serving, wait_for
from tests.services import postgres_database

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

__all__ = ["haproxy"]  # the fixture, shared

SEEN: list[dict[str, str]] = []


class RecordingLegacy(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        SEEN.append({"path": self.path, "forwarded_for": self.headers.get("X-Forwarded-For", "")})
        body = json.dumps({"legacy": "decided"}).encode()
        self.send_response(201)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def legacy() -> Iterator[str]:
    SEEN.clear()
    server = QuietServer(("127.0.0.1", 0), RecordingLegacy)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def new_db_url() -> Iterator[str]:
    with postgres_database("strangler_dp_writes") as url:
        upgrade_database(url)
        yield url


def _allocate(url: str) -> requests.Response:
    return requests.post(
        f"{url}/allocate", json={"orderid": "o-1", "sku": "LAMP", "qty": 1}, timeout=10
    )


def _legacy_through_the_facade(url: str) -> bool:
    before = len(SEEN)
    answer = _allocate(url)
    return (
        answer.status_code == 201
        and answer.headers["X-Served-By"] == "legacy"
        and len(SEEN) == before + 1
        and "," in SEEN[-1]["forwarded_for"]  # HAProxy's hop and the facade's
    )


def _answered(url: str, status: int) -> list[requests.Response]:
    """``[answer]`` when ``POST /allocate`` answers ``status`` (a Response of an error
    status is falsy itself)."""
    answer = _allocate(url)
    return [answer] if answer.status_code == status else []


def _settle(new_db_url: str) -> None:
    """The move's fence came back (back-sync and the consumer are not running here)."""
    engine = create_engine(new_db_url)
    with engine.begin() as conn:
        conn.execute(update(orm.write_ownership).values(state="active", previous_rule=None))
    engine.dispose()


def test_a_write_group_goes_through_the_facade_whoever_owns_its_products(
    haproxy: str, legacy: str, new_db_url: str, tmp_path: Path
) -> None:
    table = RouteTable(new_db_url)
    try:
        with serving(
            legacy, new_db_url, tmp_path, "--data-plane", "haproxy", "--refresh-interval", "0.2"
        ) as served:
            url = served.url
            assert _legacy_through_the_facade(url)  # legacy owns every product
            metrics = requests.get(f"{url}/metrics", timeout=5).text
            assert 'route="POST /allocate",status="201"' in metrics.replace('owner="legacy",', "")

            table.set("POST", "/allocate", "canary 100", by="test", reason="takeover")
            [changing] = wait_for(
                lambda: _answered(url, 503), 10, "the facade to answer the products changing hands"
            )
            assert changing.headers["Retry-After"] == "1"
            assert changing.json()["detail"] == "product LAMP is changing owner; retry"

            _settle(new_db_url)
            [decided] = wait_for(lambda: _answered(url, 400), 10, "the new system to decide")
            assert decided.headers["X-Served-By"] == "new"
            assert decided.json() == {"error": "unknown sku", "detail": "unknown sku LAMP"}

            before = len(SEEN)
            table.rollback(by="test", reason="hand back")
            [handing_back] = wait_for(
                lambda: _answered(url, 503), 10, "the hand-back to wait for its fence"
            )
            assert handing_back.headers["X-Served-By"] == "facade"
            assert len(SEEN) == before  # nobody decided about LAMP meanwhile

            _settle(new_db_url)
            wait_for(lambda: _legacy_through_the_facade(url), 10, "legacy to decide again")
            assert "Traceback" not in served.output()
    finally:
        table.close()
