"""The data plane's (HAProxy's) metrics appended to the facade's /metrics."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from skeleton_app.metrics import scrape_unix_socket, with_data_plane

FACADE = b"# TYPE strangler_facade_requests_total counter\nstrangler_facade_requests_total 3.0\n"
HAPROXY = b'# TYPE haproxy_backend_http_responses_total counter\nhaproxy_backend_http_responses_total{proxy="legacy",code="2xx"} 7\n'  # noqa: E501


def _serve_once(path: Path, answer: bytes) -> Iterator[list[bytes]]:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)
    asked: list[bytes] = []

    def run() -> None:
        conn, _ = listener.accept()
        with conn:
            asked.append(conn.recv(4096))
            conn.sendall(answer)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    yield asked
    thread.join(5)
    listener.close()


@pytest.fixture
def short_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return Path(tmp_path_factory.mktemp("m"))


def test_the_exporters_metrics_follow_the_facades(short_tmp: Path) -> None:
    path = short_tmp / "metrics.sock"
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(HAPROXY), HAPROXY)
    served = _serve_once(
        path,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n" + chunked,
    )
    asked = next(served)

    text = with_data_plane(FACADE, str(path)).decode()

    next(served, None)
    assert asked[0].startswith(b"GET /metrics HTTP/1.0\r\n")
    assert text.startswith(FACADE.decode())
    assert "\nstrangler_data_plane_metrics_up 1\n" in text
    assert text.endswith(HAPROXY.decode())


def test_a_data_plane_that_does_not_answer_is_said_and_the_facades_metrics_stay(
    short_tmp: Path,
) -> None:
    text = with_data_plane(FACADE, str(short_tmp / "absent.sock")).decode()

    assert text.startswith(FACADE.decode())
    assert text.endswith("strangler_data_plane_metrics_up 0\n")


def test_an_error_answer_is_not_taken_for_metrics(short_tmp: Path) -> None:
    path = short_tmp / "metrics.sock"
    served = _serve_once(path, b"HTTP/1.1 503 Service Unavailable\r\n\r\nbusy")
    next(served)

    with pytest.raises(ValueError, match="503"):
        scrape_unix_socket(str(path))
    next(served, None)


def test_without_a_data_plane_the_metrics_are_the_facades_alone() -> None:
    assert with_data_plane(FACADE, None) == FACADE
