"""``strangler serve --data-plane haproxy`` for real: slow clients, limits, supervision.

The facade (gunicorn gthread, workers x threads) gives a thread to a connection as soon as
its first bytes arrive and keeps it until the request is complete: a few slow clients take
every thread. HAProxy in front buffers each request whole, so the facade only sees
complete requests, and cuts off clients that take longer than the request timeout.
"""

from __future__ import annotations

import json
import os
import resource
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TypeVar

import pytest
import requests

from new_domain import upgrade_database
from skeleton_app.dataplane import find_haproxy
from tests.services import postgres_database

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

T = TypeVar("T")
SLOW = 1000  # slow connections held open while others are served
SLOW_BODIES = 200  # of which: complete headers, partial body
ANSWERED_WITHIN = 5.0  # seconds a normal request may take while they are open


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

    def _answer(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = b""
            while size := int(self.rfile.readline().split(b";")[0], 16):
                body += self.rfile.read(size)
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass
            return body
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def do_GET(self) -> None:
        self._body()
        self._answer(
            json.dumps(
                {"path": self.path, "forwarded_for": self.headers["X-Forwarded-For"]}
            ).encode()
        )

    def do_POST(self) -> None:
        self._answer(json.dumps({"received": len(self._body())}).encode())

    def log_message(self, format: str, *args: object) -> None:
        pass


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # clients the facade gave up on (the slow ones without the data plane)


@pytest.fixture(scope="module")
def haproxy() -> str:
    binary = find_haproxy()
    if binary is None:
        message = "haproxy is not installed (apt-get install haproxy)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{message} (CI=true: a missing service is a failure)", pytrace=False)
        pytest.skip(message)
    return binary


@pytest.fixture(scope="module")
def legacy() -> Iterator[str]:
    server = QuietServer(("127.0.0.1", 0), StubLegacy)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def new_db_url() -> Iterator[str]:
    with postgres_database("strangler_dataplane") as url:
        upgrade_database(url)
        yield url


@pytest.fixture(scope="module", autouse=True)
def enough_file_descriptors() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = SLOW + 500
    if soft != resource.RLIM_INFINITY and soft < wanted:
        assert hard == resource.RLIM_INFINITY or hard >= wanted, f"ulimit -Hn {hard} < {wanted}"
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


class Served:
    def __init__(self, proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.proc = proc
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log = log

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@contextmanager
def serving(legacy: str, new_db_url: str, tmp_path: Path, *args: str) -> Iterator[Served]:
    port = free_port()
    log = tmp_path / f"serve-{port}.log"
    env = {**os.environ, "LEGACY_URL": legacy, "NEW_DB_URL": new_db_url}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.pop("STRANGLER_DATA_PLANE", None)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from skeleton_app.composition.cli import main; main()",
                "serve",
                "--port",
                str(port),
                "--workers",
                "2",
                "--threads",
                "8",
                *args,
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    served = Served(proc, port, log)
    try:
        wait_for(
            lambda: (
                proc.poll() is not None
                or requests.get(f"{served.url}/_strangler/health", timeout=2).ok
            ),
            30,
            "the facade to start",
        )
        assert proc.poll() is None, served.output()
        yield served
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def open_slow_connections(port: int, count: int, bodies: int) -> list[socket.socket]:
    """``count`` connections that stop mid-request: most in the middle of their headers,
    ``bodies`` of them in the middle of a declared body. Each has sent some bytes."""
    held = []
    for n in range(count):
        conn = socket.create_connection(("127.0.0.1", port), timeout=10)
        if n < bodies:
            conn.sendall(
                b"POST /orders HTTP/1.1\r\nHost: shop\r\nContent-Type: text/plain\r\n"
                b"Content-Length: 1000\r\n\r\nthe first bytes of a long body"
            )
        else:
            conn.sendall(b"GET /slow/" + str(n).encode() + b" HTTP/1.1\r\nHost: shop\r\nX-A")
        held.append(conn)
    return held


def timed_get(url: str, timeout: float) -> tuple[float, requests.Response]:
    started = time.monotonic()
    answer = requests.get(url, timeout=timeout)
    return time.monotonic() - started, answer


def test_the_facade_keeps_serving_with_1000_slow_connections_open(
    haproxy: str, legacy: str, new_db_url: str, tmp_path: Path
) -> None:
    with serving(
        legacy, new_db_url, tmp_path, "--data-plane", "haproxy", "--request-timeout", "60"
    ) as served:
        slow = open_slow_connections(served.port, SLOW, SLOW_BODIES)
        try:
            with ThreadPoolExecutor(10) as pool:
                # half to a legacy path (HAProxy sends it straight to legacy), half to
                # the facade's own endpoint (through gunicorn's threads)
                answers = list(
                    pool.map(
                        lambda n: timed_get(
                            f"{served.url}/orders/{n}"
                            if n % 2
                            else f"{served.url}/_strangler/health",
                            ANSWERED_WITHIN,
                        ),
                        range(50),
                    )
                )
            still_open = sum(1 for conn in slow if _open(conn))
        finally:
            for conn in slow:
                conn.close()

        assert still_open == SLOW
        assert [a.status_code for _, a in answers] == [200] * 50, [
            (a.status_code, a.headers, a.text) for _, a in answers if a.status_code != 200
        ]
        assert [a.headers["X-Served-By"] for _, a in answers[:2]] == ["facade", "legacy"]
        assert {a.headers["X-Served-By"] for _, a in answers[1::2]} == {"legacy"}
        # straight from HAProxy: legacy sees the client's address only
        assert answers[1][1].json()["forwarded_for"] == "127.0.0.1"
        slowest = max(seconds for seconds, _ in answers)
        print(
            f"\n50 requests with {SLOW} slow connections open through HAProxy: "
            f"slowest {slowest * 1000:.0f} ms"
        )
        assert slowest < ANSWERED_WITHIN


def _open(conn: socket.socket) -> bool:
    """True when the peer has neither answered nor closed ``conn``."""
    conn.setblocking(False)
    try:
        conn.recv(1, socket.MSG_PEEK)  # an answer or the end of the stream
        return False
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        conn.setblocking(True)


def test_without_the_data_plane_a_few_slow_clients_stall_the_facade(
    legacy: str, new_db_url: str, tmp_path: Path
) -> None:
    """Why the proxy exists: gunicorn alone, 2 workers x 8 threads, 32 slow clients."""
    with serving(legacy, new_db_url, tmp_path, "--data-plane", "none") as served:
        slow = open_slow_connections(served.port, 32, 8)
        try:
            with pytest.raises(requests.exceptions.ReadTimeout):
                requests.get(f"{served.url}/orders/1", timeout=3)
        finally:
            for conn in slow:
                conn.close()
        # the facade itself is fine: once the slow clients are gone it answers again
        seconds, answer = wait_for(
            lambda: timed_get(f"{served.url}/orders/2", 3), 30, "the facade to answer again"
        )
        assert answer.status_code == 200


def _exchange(
    port: int, request: bytes, *, trickle: bytes = b"", wait: float = 10
) -> tuple[float, bytes]:
    """Send ``request`` (then ``trickle`` a byte at a time, slowly, until cut off); the
    seconds until the answer and the whole answer."""
    conn = socket.create_connection(("127.0.0.1", port), timeout=wait)
    started = time.monotonic()
    answer = b""
    try:
        conn.sendall(request)
        for byte in trickle:
            try:
                conn.sendall(bytes([byte]))
            except OSError:
                break
            if _readable(conn, 0.3):  # answered (or cut off): stop sending
                break
        while chunk := conn.recv(65536):
            answer += chunk
    except ConnectionResetError:
        pass
    finally:
        conn.close()
    return time.monotonic() - started, answer


def _readable(conn: socket.socket, seconds: float) -> bool:
    readable, _, _ = select.select([conn], [], [], seconds)
    return bool(readable)


def _status_and_json(answer: bytes) -> tuple[int, dict[str, str], dict[str, str]]:
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    return int(lines[0].split()[1]), headers, json.loads(body)


def _haproxy_version(binary: str) -> tuple[int, int]:
    out = subprocess.run([binary, "-v"], capture_output=True, text=True).stdout
    major, minor = out.split()[2].split(".")[:2]
    return int(major), int(minor)


def test_slow_clients_are_cut_off_after_the_request_timeout(
    haproxy: str, legacy: str, new_db_url: str, tmp_path: Path
) -> None:
    with serving(
        legacy, new_db_url, tmp_path, "--data-plane", "haproxy", "--request-timeout", "1"
    ) as served:
        seconds, answer = _exchange(
            served.port,
            b"POST /orders HTTP/1.1\r\nHost: shop\r\nContent-Length: 1000\r\n\r\n",
            trickle=b"x" * 1000,
        )
        status, headers, body = _status_and_json(answer)
        assert (status, body["error"]) == (408, "request timeout")
        assert headers["content-type"] == "application/json"
        assert headers["x-served-by"] == "proxy"
        assert 0.9 < seconds < 5

        seconds, answer = _exchange(
            served.port,
            b"GET /orders/1 HTTP/1.1\r\nHost: shop\r\n",
            trickle=b"X-Slow: " + b"y" * 1000,
        )
        assert answer.startswith(b"HTTP/1.1 408 ")
        assert 0.9 < seconds < 5
        if _haproxy_version(haproxy) >= (3, 2):
            # before 3.2, HAProxy answers errors of unfinished headers with its own page
            assert _status_and_json(answer)[2]["error"] == "request timeout"

        assert requests.get(f"{served.url}/orders/3", timeout=5).status_code == 200


def test_oversized_requests_get_the_proxys_json_errors(
    haproxy: str, legacy: str, new_db_url: str, tmp_path: Path
) -> None:
    with serving(
        legacy, new_db_url, tmp_path, "--data-plane", "haproxy", "--max-body", "65536"
    ) as served:
        url = f"{served.url}/orders"

        def refused(answer: requests.Response, status: int, error: str) -> None:
            assert answer.status_code == status, answer.text
            assert answer.headers["Content-Type"] == "application/json"
            assert answer.headers["X-Served-By"] == "proxy"
            assert answer.json()["error"] == error
            assert answer.json()["detail"]

        allowed = requests.post(url, data=b"x" * 65536, timeout=5)
        assert allowed.json() == {"received": 65536}
        refused(requests.post(url, data=b"x" * 65537, timeout=5), 413, "request entity too large")
        refused(
            requests.post(url, data=iter([b"x" * 40000, b"x" * 40000]), timeout=5),
            413,
            "request entity too large",
        )
        refused(
            requests.get(url, headers={"X-Big": "b" * 40000}, timeout=5),
            431,
            "request header fields too large",
        )
        many = {f"X-H{n}": "1" for n in range(101)}
        refused(requests.get(url, headers=many, timeout=5), 431, "request header fields too large")
        refused(requests.get(f"{url}/{'a' * 9000}", timeout=5), 414, "request uri too large")
        # the facade's own answers pass through with its X-Served-By
        assert (
            requests.get(f"{served.url}/_strangler/status", timeout=5).headers["X-Served-By"]
            == "facade"
        )


def test_serve_stops_both_on_sigterm_and_fails_when_haproxy_dies(
    haproxy: str, legacy: str, new_db_url: str, tmp_path: Path
) -> None:
    with serving(legacy, new_db_url, tmp_path, "--data-plane", "haproxy") as served:
        children = _children(served.proc.pid)
        served.proc.send_signal(signal.SIGTERM)
        assert served.proc.wait(timeout=30) == 0, served.output()
        assert not [pid for pid in children if _alive(pid)]

    with serving(legacy, new_db_url, tmp_path, "--data-plane", "haproxy") as served:
        [haproxy_pid] = [
            pid
            for pid in _children(served.proc.pid)
            if Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].endswith(b"haproxy")
        ]
        children = _children(served.proc.pid)
        os.kill(haproxy_pid, signal.SIGKILL)
        assert served.proc.wait(timeout=30) == 1
        last = served.output().strip().splitlines()[-1]
        assert last.startswith("strangler: error: the data plane (haproxy) exited with status")
        assert not [pid for pid in children if _alive(pid)]


def _children(pid: int) -> list[int]:
    found = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(child) for child in found]


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False
