"""``strangler serve`` for real: gunicorn workers, a stub legacy server, a route switch."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TypeVar

import pytest
import requests

from new_domain import upgrade_database
from skeleton_app import Mode, RouteTable, ShadowResults

pytestmark = pytest.mark.e2e

T = TypeVar("T")
ROUTE = "/allocations/<orderid>"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(condition: Callable[[], T], timeout: float, what: str) -> T:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = condition()
            if result:
                return result
        except Exception as exc:
            last = exc
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what} (last error: {last})")


class StubLegacy(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = f"legacy saw {self.path} host={self.headers['Host']}".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Set-Cookie", "a=1")
        self.send_header("Set-Cookie", "b=2")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def legacy() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), StubLegacy)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def new_db_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'new.db'}"
    upgrade_database(url)
    return url


def test_serve_proxies_switches_without_restart_and_stops_on_sigterm(
    legacy: str, new_db_url: str, tmp_path: Path
) -> None:
    port = free_port()
    facade = f"http://127.0.0.1:{port}"
    log = (tmp_path / "serve.log").open("wb")
    env = {**os.environ, "LEGACY_URL": legacy, "NEW_DB_URL": new_db_url, "ADMIN_TOKEN": "tk"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from skeleton_app.commands import serve; serve()",
            "--port",
            str(port),
            "--workers",
            "2",
            "--threads",
            "4",
            "--refresh-interval",
            "0.2",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        health = wait_for(
            lambda: requests.get(f"{facade}/_strangler/health", timeout=2),
            30,
            "the facade to start",
        )
        assert health.json() == {"status": "ok"}

        proxied = requests.get(f"{facade}/hello?x=1", timeout=5)
        assert proxied.status_code == 200
        assert proxied.text == f"legacy saw /hello?x=1 host={legacy.removeprefix('http://')}"
        assert proxied.headers["X-Served-By"] == "legacy"
        assert proxied.raw.headers.getlist("Set-Cookie") == ["a=1", "b=2"]
        assert len(proxied.raw.headers.getlist("Date")) == 1

        def served_by_all(expected: str) -> bool:
            return all(
                requests.get(f"{facade}/allocations/o-1", timeout=5).headers["X-Served-By"]
                == expected
                for _ in range(20)
            )

        table = RouteTable(new_db_url)
        table.set("GET", ROUTE, Mode.NEW, by="test")
        wait_for(lambda: served_by_all("new"), 10, "every worker to serve from new")
        table.set("GET", ROUTE, Mode.LEGACY, by="test")
        wait_for(lambda: served_by_all("legacy"), 10, "every worker to serve from legacy")

        # shadow results from every worker land in one table; metrics add up over workers
        def metric_total(name: str, **labels: str) -> float:
            text = requests.get(f"{facade}/metrics", timeout=5).text
            wanted = [f'{k}="{v}"' for k, v in labels.items()]
            return sum(
                float(line.rsplit(" ", 1)[1])
                for line in text.splitlines()
                if line.startswith(name + "{") and all(w in line for w in wanted)
            )

        table.set("GET", ROUTE, Mode.SHADOW, by="test")

        def shadow_traffic() -> bool:
            """Ten more requests; have 40 been served in shadow mode? (Legacy answers in
            both modes: until the workers see the change they serve on legacy.)"""
            for n in range(10):
                answer = requests.get(f"{facade}/allocations/o-{n}", timeout=5)
                assert answer.headers["X-Served-By"] == "legacy"
            return metric_total("strangler_facade_requests_total", mode="shadow") >= 40

        wait_for(shadow_traffic, 15, "40 requests served in shadow mode")
        results = ShadowResults(table.engine)

        def recorded() -> float:
            shadowed = metric_total("strangler_facade_requests_total", mode="shadow")
            samples = results.parity("GET", ROUTE).samples
            return shadowed if shadowed > 0 and samples == shadowed else 0.0

        shadowed = wait_for(recorded, 15, "every worker's shadow results")
        parity = results.parity("GET", ROUTE)
        assert parity.mismatches == shadowed  # legacy's text vs new's JSON: all differ
        assert all(
            metric_total("strangler_facade_shadow_results_total", outcome="mismatch") == shadowed
            for _ in range(10)
        )
        table.close()

        denied = requests.get(f"{facade}/_strangler/status", timeout=5)
        assert denied.status_code == 401

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
