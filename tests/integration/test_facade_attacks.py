"""Attacks on a real facade: ``strangler serve`` (gunicorn) on PostgreSQL.

Each test reproduces one way the facade broke (see docs/reliability.md, "Attacks tried and
their results") and shows it holds now.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import requests
from sqlalchemy.engine import make_url

from new_domain import upgrade_database
from skeleton_app import Mode, RouteTable, ShadowResults
from tests.e2e.processes import wait_for
from tests.integration.facade_process import (
    Blackhole,
    RecordingLegacy,
    TcpRelay,
    raw_exchange,
    serve,
)
from tests.services import postgres_database

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

ROUTE = "/allocations/<orderid>"
TOKEN = "attack-token"


@pytest.fixture
def legacy() -> Iterator[RecordingLegacy]:
    server = RecordingLegacy()
    yield server
    server.close()


@pytest.fixture
def new_db() -> Iterator[str]:
    with postgres_database() as url:
        upgrade_database(url)
        yield url


def _libpq(url: str) -> str:
    parts = make_url(url)
    return f"host={parts.host} port={parts.port} user={parts.username} dbname={parts.database}"


# -- item 8: bodyless requests are forwarded without a body and without framing ---------


def test_bodyless_get_and_head_reach_legacy_without_body_or_framing(
    legacy: RecordingLegacy, new_db: str, tmp_path: Path
) -> None:
    with serve(legacy.url, new_db, tmp_path) as facade:
        for method in ("GET", "HEAD", "DELETE"):
            answer = requests.request(method, f"{facade.url}/things/1", timeout=5)
            assert answer.status_code == 200
        posted = requests.post(f"{facade.url}/things", data=b"abc", timeout=5)
        assert posted.status_code == 200
        # a chunked body from the client is still forwarded (chunked: its length is unknown)
        streamed = requests.post(f"{facade.url}/things", data=iter([b"ab", b"cd"]), timeout=5)
        assert streamed.status_code == 200
    received = legacy.received()
    heads = [r.split(b"\r\n\r\n")[0] for r in legacy.requests]
    bodyless = [h for h in heads if h.split(b" ")[0] in (b"GET", b"HEAD", b"DELETE")]
    assert len(bodyless) == 3, received
    for head in bodyless:
        assert b"transfer-encoding" not in head.lower(), head
        if not head.startswith(b"DELETE"):  # requests sends DELETE with Content-Length: 0
            assert b"content-length" not in head.lower(), head
    # nothing but whole requests: no stray "0\r\n\r\n" read as the start of another one
    assert all(r.split(b" ")[0] in (b"GET", b"HEAD", b"DELETE", b"POST") for r in legacy.requests)
    posts = [r for r in legacy.requests if r.startswith(b"POST")]
    assert len(posts) == 2
    assert posts[0].endswith(b"\r\n\r\nabc")
    assert b"transfer-encoding: chunked" in posts[1].lower()
    assert posts[1].endswith(b"\r\n0\r\n\r\n") and b"ab" in posts[1].split(b"\r\n\r\n", 1)[1]


# -- item 4: a hung new database never stalls legacy routes ----------------------------


def test_legacy_routes_are_served_while_the_new_database_accepts_and_never_answers(
    legacy: RecordingLegacy, tmp_path: Path
) -> None:
    hole = Blackhole()
    url = f"postgresql+psycopg://postgres@127.0.0.1:{hole.port}/hung"
    try:
        with serve(
            legacy.url, url, tmp_path, "--upstream-timeout", "3", "--refresh-interval", "0.2"
        ) as facade:
            deadline = time.monotonic() + 4
            while time.monotonic() < deadline:
                started = time.monotonic()
                answer = requests.get(f"{facade.url}/hello", timeout=10)
                assert answer.status_code == 200
                assert answer.headers["X-Served-By"] == "legacy"
                assert time.monotonic() - started < 3, "a legacy request waited on the database"
    finally:
        hole.close()


def test_a_lock_on_the_route_table_does_not_stall_legacy_requests(
    legacy: RecordingLegacy, new_db: str, tmp_path: Path
) -> None:
    with serve(legacy.url, new_db, tmp_path, "--refresh-interval", "0.2") as facade:
        assert requests.get(f"{facade.url}/hello", timeout=5).status_code == 200
        with psycopg.connect(_libpq(new_db)) as locker:
            locker.execute("LOCK TABLE facade_route IN ACCESS EXCLUSIVE MODE")
            deadline = time.monotonic() + 3  # many refresh intervals
            slowest = 0.0
            while time.monotonic() < deadline:
                started = time.monotonic()
                answer = requests.get(f"{facade.url}/hello", timeout=8)
                slowest = max(slowest, time.monotonic() - started)
                assert answer.status_code == 200
            locker.rollback()
        assert slowest < 1.0, f"a legacy request waited {slowest:.1f} s on the lock"


def test_a_frozen_database_keeps_the_last_known_route_table(new_db: str) -> None:
    parts = make_url(new_db)
    relay = TcpRelay((parts.host or "127.0.0.1", parts.port or 5432))
    relayed = parts.set(port=relay.port).render_as_string(hide_password=False)
    writer = RouteTable(new_db)
    table = RouteTable(relayed, refresh_interval=0.1)
    try:
        writer.set("GET", ROUTE, Mode.SHADOW, by="test")
        assert table.mode_for("GET", "/allocations/o1") is Mode.SHADOW
        relay.freeze()
        deadline = time.monotonic() + 2  # many refresh intervals
        slowest = 0.0
        while time.monotonic() < deadline:
            started = time.monotonic()
            assert table.mode_for("GET", "/allocations/o1") is Mode.SHADOW
            slowest = max(slowest, time.monotonic() - started)
            time.sleep(0.02)  # pacing only: requests arrive over time
        assert slowest < 0.5, f"a lookup waited {slowest:.2f} s on the frozen database"
        relay.thaw()
        writer.set("GET", ROUTE, Mode.LEGACY, by="test")
    finally:
        relay.close()
        writer.close()
        table.close()


# -- item 7: NUL and invalid bytes in paths --------------------------------------------


def test_a_nul_in_a_shadowed_path_drops_no_other_results(
    legacy: RecordingLegacy, new_db: str, tmp_path: Path
) -> None:
    table = RouteTable(new_db)
    table.set("GET", ROUTE, Mode.SHADOW, by="test")
    results = ShadowResults(table.engine)
    try:
        with serve(legacy.url, new_db, tmp_path, "--refresh-interval", "0.2") as facade:
            sent = 0
            for n in range(30):
                if n % 3 == 0:
                    bad = requests.get(f"{facade.url}/allocations/o{n}%00", timeout=5)
                    assert bad.status_code in (400, 404)
                    assert set(bad.json()) == {"error", "detail"}
                    bad = requests.get(f"{facade.url}/allocations/o{n}%ff%0a", timeout=5)
                    assert bad.status_code in (400, 404)
                answer = requests.get(f"{facade.url}/allocations/o{n}", timeout=5)
                assert answer.status_code == 200
                sent += 1
            wait_for(
                lambda: results.parity("GET", ROUTE).samples >= sent,
                15,
                "every good request's shadow result",
            )
            assert results.parity("GET", ROUTE).samples == sent
            log = facade.log_text()
        assert "\x00" not in log and "Traceback" not in log
    finally:
        table.close()


def test_a_nul_in_a_path_on_a_new_route_is_a_json_error_and_one_escaped_log_line(
    legacy: RecordingLegacy, new_db: str, tmp_path: Path
) -> None:
    table = RouteTable(new_db)
    table.set("GET", ROUTE, Mode.NEW, by="test")
    try:
        with serve(legacy.url, new_db, tmp_path, "--refresh-interval", "0.2") as facade:
            for path in (
                "/allocations/o1%00",
                "/allocations/o1%0d%0aforged%20line",
                "/allocations/%ff%fe",
            ):
                answer = requests.get(f"{facade.url}{path}", timeout=5)
                assert answer.status_code in (400, 404), path
                body = answer.json()
                assert set(body) == {"error", "detail"}
            good = requests.get(f"{facade.url}/allocations/o1", timeout=5)
            assert good.status_code == 404 and good.headers["X-Served-By"] == "new"
            metrics = requests.get(f"{facade.url}/metrics", timeout=5).text
            log = facade.log_text()
        assert not [
            line
            for line in metrics.splitlines()
            if line.startswith("strangler_facade_fallbacks_total{") and not line.endswith(" 0.0")
        ]
        assert "\x00" not in log and "Traceback" not in log
        assert "\nforged line" not in log
    finally:
        table.close()


# -- item 10: every answer the facade gives is JSON -------------------------------------


def _json_answer(answer: bytes) -> tuple[int, dict[str, object]]:
    import json

    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    assert b"content-type: application/json" in head.lower(), answer
    return status, json.loads(body)


def test_errors_of_the_http_server_itself_are_json(
    legacy: RecordingLegacy, new_db: str, tmp_path: Path
) -> None:
    with serve(legacy.url, new_db, tmp_path) as facade:
        bad_chunk = (
            b"POST /things HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3;a\x01b\r\nabc\r\n0\r\n\r\n"
        )
        status, body = _json_answer(raw_exchange(facade.port, bad_chunk))
        assert status == 400 and set(body) == {"error", "detail"}
        bad_line = b"GET /x HTTP/1.1 extra\r\nHost: x\r\n\r\n"
        status, body = _json_answer(raw_exchange(facade.port, bad_line))
        assert status == 400 and set(body) == {"error", "detail"}
        huge = b"GET /x HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n"
        status, body = _json_answer(raw_exchange(facade.port, huge))
        assert status in (400, 431) and set(body) == {"error", "detail"}
        many = b"GET /x HTTP/1.1\r\nHost: x\r\n" + b"X-A: b\r\n" * 200 + b"\r\n"
        status, body = _json_answer(raw_exchange(facade.port, many))
        assert status in (400, 431) and set(body) == {"error", "detail"}
        log = facade.log_text()
    assert "Traceback" not in log


def test_concurrent_good_requests_are_not_affected_by_bad_ones(
    legacy: RecordingLegacy, new_db: str, tmp_path: Path
) -> None:
    with serve(legacy.url, new_db, tmp_path) as facade:
        failures: list[str] = []

        def good() -> None:
            for _ in range(20):
                answer = requests.get(f"{facade.url}/fine", timeout=5)
                if answer.status_code != 200:
                    failures.append(str(answer.status_code))

        threads = [threading.Thread(target=good) for _ in range(3)]
        for thread in threads:
            thread.start()
        for _ in range(20):
            raw_exchange(facade.port, b"GET /a%00b HTTP/1.1\r\nHost: x\r\n\r\n")
        for thread in threads:
            thread.join()
        assert failures == []
