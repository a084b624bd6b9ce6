"""HAProxy routes like the facade matches: for generated route tables and requests, where
the real HAProxy sends a request is where the facade's matcher says it belongs.

HAProxy runs with the data plane's configuration in front of two stand-ins that say who
they are (the facade and legacy); every example replaces the routes map through the
runtime API, as ``strangler serve`` does, and sends its requests.
"""

from __future__ import annotations

import http.client
import re
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from skeleton_app.dataplane import Backend, render_haproxy_config
from skeleton_app.dataplane.routing import (
    FACADE,
    LEGACY,
    LegacyUpstream,
    RuntimeAPI,
    map_lines,
)
from skeleton_app.metrics import scrape_unix_socket
from skeleton_app.modes import Mode
from skeleton_app.patterns import SAFE_PATH_CHARACTERS, PatternMatcher, RouteKey, is_reserved
from skeleton_app.routes_table import Routing
from tests.integration.test_dataplane import QuietServer, free_port, haproxy, wait_for

pytestmark = [pytest.mark.e2e]

__all__ = ["haproxy"]  # the fixture, shared

RELEASE = threading.Event()
ARRIVED = threading.Event()


class Who(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    name = "?"

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        if self.path.startswith("/hold"):
            ARRIVED.set()
            RELEASE.wait(30)
        body = f"{self.name} {self.command} {self.path}".encode()
        self.send_response(200)
        self.send_header("X-Served-By", self.name)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass


class Legacy(Who):
    name = "legacy-stand-in"


class Facade(Who):
    name = FACADE


def _server(handler: type[Who]) -> Iterator[int]:
    server = QuietServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield int(server.server_address[1])
    server.shutdown()
    server.server_close()


class Proxy:
    def __init__(self, port: int, api: RuntimeAPI, map_path: Path) -> None:
        self.port = port
        self.api = api
        self.map_path = map_path

    def route(self, modes: dict[RouteKey, Mode]) -> None:
        routing = Routing(modes, {}, {}, PatternMatcher(modes))
        self.api.replace_map(str(self.map_path), map_lines(routing))

    def who(self, method: str, target: str) -> str:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request(method, target, body=b"x" if method in ("POST", "PUT") else None)
            answer = conn.getresponse()
            answer.read()
            assert answer.status == 200, (method, target, answer.status)
            served = answer.headers["X-Served-By"]
        finally:
            conn.close()
        return {LEGACY: LEGACY, FACADE: FACADE}[served]


@pytest.fixture(scope="module")
def proxy(haproxy: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    folder = tmp_path_factory.mktemp("routing")
    legacy_servers, facade_servers = _server(Legacy), _server(Facade)
    legacy_port, facade_port = next(legacy_servers), next(facade_servers)
    port = free_port()
    map_path = folder / "routes.map"
    map_path.write_text("")
    config = folder / "haproxy.cfg"
    config.write_text(
        render_haproxy_config(
            f"127.0.0.1:{port}",
            Backend("127.0.0.1", facade_port, 16),
            runtime_socket=str(folder / "runtime.sock"),
            legacy=LegacyUpstream.from_url(f"http://127.0.0.1:{legacy_port}"),
            routes_map=str(map_path),
            metrics_socket=str(folder / "metrics.sock"),
        )
    )
    process = subprocess.Popen(
        [haproxy, "-db", "-f", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        api = RuntimeAPI(str(folder / "runtime.sock"))
        wait_for(lambda: "New version" in api.command(f"prepare map {map_path}"), 10, "HAProxy")
        yield Proxy(port, api, map_path)
    finally:
        process.terminate()
        process.wait(10)
        for servers in (legacy_servers, facade_servers):
            next(servers, None)


PATTERNS = [
    "/allocations/<orderid>",
    "/allocations/special",
    "/allocations/<orderid>/lines",
    "/orders/<int:n>",
    "/orders/<int(max=9):n>",
    "/files/<path:rest>",
    "/x<y>.json",
    "/a/(b)'$",
    "/",
]
METHODS = ["GET", "HEAD", "POST", "PUT"]
MODES = [Mode.LEGACY, Mode.LEGACY, Mode.SHADOW, Mode.AA, Mode.NEW]
SEGMENTS = ["allocations", "special", "o-1", "lines", "orders", "7", "12", "files", "a"]
SEGMENTS += ["(b)'$", "xq.json", "~", "", ".", "..", "%41", "_strangler", "metrics", "b;c"]

tables = st.dictionaries(
    st.tuples(st.sampled_from(["GET", "GET", "POST", "HEAD"]), st.sampled_from(PATTERNS)),
    st.sampled_from(MODES),
    min_size=1,
    max_size=6,
)
INSTANCES = [  # paths the patterns match, several of them each
    "/allocations/special",
    "/allocations/o-1",
    "/allocations/o-1/lines",
    "/allocations/special/lines",
    "/orders/7",
    "/orders/12",
    "/files/a/b",
    "/x1.json",
    "/a/(b)'$",
    "/",
]
targets = st.tuples(
    st.one_of(
        st.sampled_from(INSTANCES),
        st.lists(st.sampled_from(SEGMENTS), min_size=1, max_size=4).map(
            lambda s: "/" + "/".join(s)
        ),
    ),
    st.sampled_from(["", "", "?q=1", "?a=<b>", "?%20"]),
)


def _facades_own_or_odd(path: str, query: str) -> bool:
    """What HAProxy must leave to the facade whatever the table says."""
    return (
        is_reserved(path)
        or path == "/metrics"
        or not set(path) <= SAFE_PATH_CHARACTERS
        or path.startswith("//")
        or any(segment in (".", "..") for segment in path.split("/"))
        or "<" in query
    )


def _where_the_facade_puts_it(
    matcher: PatternMatcher, modes: dict[RouteKey, Mode], method: str, path: str
) -> str:
    found = matcher.match(method, path)
    if found is None or modes[(found.method, found.pattern)] is Mode.LEGACY:
        return LEGACY
    return FACADE


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(tables, st.lists(st.tuples(st.sampled_from(METHODS), targets), min_size=1, max_size=12))
@example(  # the more specific route first, whatever the modes
    {("GET", "/allocations/<orderid>"): Mode.SHADOW, ("GET", "/allocations/special"): Mode.LEGACY},
    [("GET", ("/allocations/special", "")), ("HEAD", ("/allocations/o-1", ""))],
)
@example(
    {("GET", "/allocations/<orderid>"): Mode.LEGACY, ("GET", "/allocations/special"): Mode.NEW},
    [("GET", ("/allocations/special", "")), ("GET", ("/allocations/o-1", ""))],
)
@example(  # a route of another method does not hide a route of this one
    {("POST", "/allocations/special"): Mode.LEGACY, ("GET", "/allocations/<orderid>"): Mode.AA},
    [("GET", ("/allocations/special", "")), ("POST", ("/allocations/special", ""))],
)
@example(  # a path spanning variable after fixed ones; a pattern with quote, dollar, brackets
    {("GET", "/files/<path:rest>"): Mode.SHADOW, ("GET", "/a/(b)'$"): Mode.NEW},
    [("GET", ("/files/a/b", "")), ("GET", ("/a/(b)'$", "?q=1")), ("GET", ("/a/(b)'x", ""))],
)
def test_haproxy_sends_each_request_where_the_facades_matcher_says(
    proxy: Proxy,
    modes: dict[RouteKey, Mode],
    requests: list[tuple[str, tuple[str, str]]],
) -> None:
    proxy.route(modes)
    matcher = PatternMatcher(modes)
    for method, (path, query) in requests:
        served = proxy.who(method, path + query)
        if _facades_own_or_odd(path, query):
            assert served == FACADE, (method, path, query)
            continue
        expected = _where_the_facade_puts_it(matcher, modes, method, path)
        if expected == FACADE:
            assert served == FACADE, (method, path)
        elif served == FACADE:  # only where the facade may refuse a match it decides
            first = next(
                c
                for c in matcher.search_order()
                if method in c.methods and re.fullmatch(c.path_regex, path)
            )
            assert not first.exact, (method, path)


def test_a_request_in_flight_finishes_where_it_went_when_the_routing_changes(
    proxy: Proxy,
) -> None:
    route = ("GET", "/hold/<x>")
    proxy.route({route: Mode.LEGACY})
    ARRIVED.clear()
    RELEASE.clear()
    answers: list[str] = []
    held = threading.Thread(target=lambda: answers.append(proxy.who("GET", "/hold/1")))
    held.start()
    try:
        assert ARRIVED.wait(10), "the held request did not reach legacy"
        proxy.route({route: Mode.SHADOW})
        ARRIVED.clear()
        second = threading.Thread(target=lambda: answers.append(proxy.who("GET", "/hold/2")))
        second.start()
        assert ARRIVED.wait(10), "the second request did not arrive"
    finally:
        RELEASE.set()
        held.join(10)
    second.join(10)
    assert sorted(answers) == [FACADE, LEGACY]


def test_haproxys_prometheus_exporter_answers_on_its_socket(proxy: Proxy) -> None:
    proxy.who("GET", "/anything")
    text = scrape_unix_socket(str(proxy.map_path.parent / "metrics.sock")).decode()
    assert 'haproxy_backend_http_responses_total{proxy="legacy",code="2xx"}' in text
    assert 'haproxy_backend_http_responses_total{proxy="facade",code="2xx"}' in text
