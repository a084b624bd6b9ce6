"""``strangler serve`` with the data plane: a legacy route goes from HAProxy straight to
legacy, and follows the route table.

A request HAProxy sends straight to legacy reaches it with one address in
``X-Forwarded-For`` (the client's); through the facade it carries two (the facade's
proxy adds the hop from HAProxy), and the facade counts it in its metrics.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
import requests

from new_domain import upgrade_database
from skeleton_app import RouteTable
from tests.integration.test_dataplane import QuietServer, haproxy, serving, wait_for
from tests.services import postgres_database

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

__all__ = ["haproxy"]  # the fixture, shared

ROUTE = ("GET", "/allocations/<orderid>")
HELD = threading.Event()
RELEASE = threading.Event()


class Legacy(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        if self.path.startswith("/hold"):
            HELD.set()
            RELEASE.wait(30)
        body = json.dumps(
            {"path": self.path, "forwarded_for": self.headers.get("X-Forwarded-For", "")}
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def legacy() -> Iterator[str]:
    server = QuietServer(("127.0.0.1", 0), Legacy)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    RELEASE.set()
    server.shutdown()
    server.server_close()


@pytest.fixture
def new_db_url() -> Iterator[str]:
    with postgres_database("strangler_dp_routes") as url:
        upgrade_database(url)
        yield url


def _straight(url: str, path: str = "/allocations/o-1") -> bool:
    """Answered by legacy without the facade (one hop in X-Forwarded-For)."""
    answer = requests.get(url + path, timeout=10)
    return (
        answer.ok
        and answer.headers["X-Served-By"] == "legacy"
        and "," not in answer.json()["forwarded_for"]
    )


def _through_the_facade(url: str) -> bool:
    answer = requests.get(f"{url}/allocations/o-1", timeout=10)
    return (
        answer.ok
        and answer.headers["X-Served-By"] == "legacy"
        and "," in answer.json()["forwarded_for"]
    )


def _facade_counted(url: str) -> bool:
    metrics = requests.get(f"{url}/metrics", timeout=5).text
    return 'route="GET /allocations/<orderid>"' in metrics


def test_a_legacy_route_goes_straight_to_legacy_and_follows_the_route_table(
    haproxy: str, legacy: str, new_db_url: str, tmp_path: Path
) -> None:
    table = RouteTable(new_db_url)
    HELD.clear()
    RELEASE.clear()
    try:
        with serving(legacy, new_db_url, tmp_path, "--data-plane", "haproxy") as served:
            url = served.url
            assert _straight(url) and _straight(url, "/not/a/route")
            metrics = requests.get(f"{url}/metrics", timeout=5).text
            assert not _facade_counted(url) and 'route="other"' not in metrics
            # HAProxy's own counters are in the facade's /metrics
            assert "strangler_data_plane_metrics_up 1" in metrics
            legacy_2xx = 'haproxy_backend_http_responses_total{proxy="legacy",code="2xx"}'
            assert legacy_2xx in metrics
            assert 'haproxy_frontend_http_requests_total{proxy="public"}' in metrics

            # a request in flight on legacy while the routing changes finishes there
            held: list[requests.Response] = []
            holder = threading.Thread(
                target=lambda: held.append(requests.get(f"{url}/hold/1", timeout=30))
            )
            holder.start()
            assert HELD.wait(10), "the held request did not reach legacy"

            table.set(*ROUTE, "shadow", by="test", reason="compare")
            changed = time.monotonic()
            wait_for(lambda: _through_the_facade(url), 10, "the route to go through the facade")
            took = time.monotonic() - changed
            print(f"\nthe data plane followed the route table in {took:.2f} s")
            assert took < 2.0, f"the data plane took {took:.2f} s to follow the table"
            assert _facade_counted(url)

            RELEASE.set()
            holder.join(30)
            assert [(a.status_code, a.headers["X-Served-By"]) for a in held] == [(200, "legacy")]
            assert "," not in held[0].json()["forwarded_for"]

            table.rollback(by="test", reason="back")
            wait_for(lambda: _straight(url), 10, "the rollback to send it straight to legacy")

            table.set(*ROUTE, "shadow", by="test", reason="again")
            served.proc.send_signal(signal.SIGTERM)
            assert served.proc.wait(30) == 0, served.output()
            assert "Traceback" not in served.output()

        # started cold, HAProxy routes by the table as it is now: the first request
        with serving(legacy, new_db_url, tmp_path, "--data-plane", "haproxy") as served:
            assert _through_the_facade(served.url)
            table.rollback(by="test", reason="back")
            wait_for(lambda: _straight(served.url), 10, "the rollback")
    finally:
        RELEASE.set()
        table.close()
