"""Bad input at the served facade's edge: the fuzzing of ``test_fuzz_facade.py``, over HTTP
against ``strangler serve`` (gunicorn, two workers) with its route table on PostgreSQL.

The facade runs twice, once with ``GET /allocations/<orderid>`` (the one route the new
system can answer) in shadow mode and once with it in mode new, each on a fresh migrated
PostgreSQL database and with an admin token. Its legacy upstream is ``RecordingLegacy``, a
raw-socket server that answers every request 200 and keeps every byte it receives; a second
one, ``elsewhere``, stands for any other host: its address is used in ``Host`` headers and
absolute-form request targets, and it must never receive a byte.

Every answer, to schemathesis's requests generated from docs/openapi.json and to the
property tests' raw requests (odd paths, invalid UTF-8, control characters, encoded
segments, absolute-form targets, ``Host`` headers), must be below 500 (the legacy is up,
so a 502 or 504 would mean the facade tried somewhere else or broke the exchange); every
error the facade or its server gives is JSON ``{"error", "detail"}``; a redirect never
points at another host. After each facade's run it must still answer its health check,
and its log must hold no traceback, no raw NUL and no raw escape character.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context
from schemathesis import checks

from new_domain import upgrade_database
from skeleton_app import Mode, RouteTable
from tests.integration.facade_process import Facade, RecordingLegacy, raw_exchange, serve
from tests.services import postgres_database

pytestmark = [pytest.mark.chaos, pytest.mark.e2e, pytest.mark.postgres]

ROOT = Path(__file__).resolve().parents[2]
ROUTE = "/allocations/<orderid>"
TOKEN = "served-fuzz-token"
FUZZ = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
SCHEMA = schemathesis.openapi.from_path(ROOT / "docs" / "openapi.json")


@dataclass
class Served:
    mode: Mode
    table: RouteTable
    facade: Facade
    legacy: RecordingLegacy
    elsewhere: RecordingLegacy

    @property
    def elsewhere_host(self) -> str:
        return self.elsewhere.url.removeprefix("http://")

    def assert_up(self) -> None:
        assert self.facade.proc.poll() is None, self.facade.log_text()[-3000:]

    def assert_only_legacy_was_called(self) -> None:
        assert self.elsewhere.received() == b"", self.elsewhere.received()[:500]
        for forwarded in list(self.legacy.requests):
            _, _, rest = forwarded.partition(b" ")
            # origin-form only: an absolute-form target would let legacy's side pick a host
            assert rest.startswith(b"/"), forwarded[:300]


@pytest.fixture(scope="module", params=[Mode.SHADOW, Mode.NEW], ids=["shadow", "new"])
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    mode: Mode = request.param
    legacy, elsewhere = RecordingLegacy(), RecordingLegacy()
    try:
        with postgres_database("fuzz_served") as new_db:
            upgrade_database(new_db)
            table = RouteTable(new_db)
            try:
                table.set("GET", ROUTE, mode, by="fuzz", reason="fuzz the served facade")
                workdir = tmp_path_factory.mktemp(f"served-{mode.value}")
                with serve(
                    legacy.url, new_db, workdir, "--refresh-interval", "0.2", ADMIN_TOKEN=TOKEN
                ) as facade:
                    served = Served(mode, table, facade, legacy, elsewhere)
                    yield served
                    # the run is over: the server is still up and answers
                    served.assert_up()
                    health = requests.get(f"{facade.url}/_strangler/health", timeout=5)
                    assert health.status_code == 200, health.text
                    served.assert_only_legacy_was_called()
                    log = facade.log_text()
                assert "Traceback" not in log, log[-3000:]
                assert "\x00" not in log and "\x1b" not in log  # raw bytes never logged
            finally:
                table.close()
    finally:
        legacy.close()
        elsewhere.close()


@pytest.fixture
def route_as_set(served: Served) -> None:
    """The route is still in the mode it was set to: stored once, by ``served``."""
    changes = served.table.history("GET", ROUTE)
    assert [(c.to_mode, c.by) for c in changes] == [(served.mode.value, "fuzz")], changes


# -- answers -----------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


def _parse(answer: bytes, request: bytes) -> Answer:
    head, sep, body = answer.partition(b"\r\n\r\n")
    assert sep, f"no complete answer to {request[:300]!r}: {answer[:300]!r}"
    status_line, *lines = head.split(b"\r\n")
    version, status, _ = (status_line.split(b" ", 2) + [b""])[:3]
    assert version.startswith(b"HTTP/1."), answer[:300]
    headers = {}
    for line in lines:
        name, _, value = line.partition(b":")
        headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
    return Answer(int(status), headers, body)


def _check(served: Served, answer: Answer, what: object, method: str = "GET") -> None:
    """The facade's promises for one answer (see the module's docstring)."""
    served.assert_up()
    if currently_in_test_context():  # counted in --hypothesis-show-statistics
        event(f"{answer.status} from {answer.headers.get('x-served-by', 'the server')}")
    assert answer.status < 500, (what, answer.status, answer.body[:300])
    if 300 <= answer.status < 400:
        location = answer.headers.get("location", "")
        assert served.elsewhere_host not in location and "evil" not in location, (what, location)
    if answer.status >= 400 and method != "HEAD":
        assert answer.headers.get("content-type", "").startswith("application/json"), (
            what,
            answer.status,
            answer.headers,
        )
        body = json.loads(answer.body)
        assert isinstance(body, dict) and set(body) == {"error", "detail"}, (what, body)
    served.assert_only_legacy_was_called()


# -- odd request targets over a raw socket ------------------------------------------------

segments = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=12)
tricky = st.sampled_from(
    [
        "..",
        ".",
        "%2e%2e",
        "%2E%2e",
        "%2e",
        "%252e%252e",
        "",
        "@evil.test",
        "evil.test:80",
        "\\..\\",
        "%2f",
        "%5c",
        "http:",
        "//evil.test",
        "?x=//evil.test",
        "#frag",
        "%00",
        "o1%00",
        "%ff%fe",
        "%0d%0aX-Forged:%201",
        "%c0%ae%c0%ae",
        "~",
        ";a=b",
        "{ELSEWHERE}",
    ]
)
invalid_bytes = st.binary(min_size=1, max_size=6).filter(
    lambda raw: not any(b in raw for b in b" \r\n")
)  # those split the request line itself
parts = st.one_of(segments, tricky, invalid_bytes)
hosts = st.sampled_from(
    [
        "evil.test",
        "evil.test:8080",
        "127.0.0.1:1",
        "{ELSEWHERE}",
        "localhost",
        "[::1]:22",
        "a@evil.test",
        "",
        "{ELSEWHERE}@x",
    ]
)
methods = st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"])
# how text reaches the request line: percent-encoded, or as raw UTF-8 bytes (space, CR, LF
# and NUL encoded, or the line would not be one line; gunicorn itself refuses most raw
# non-ASCII targets with a 400, so they are the smaller share)
encodings = st.sampled_from(["percent", "percent", "raw"])


def _encode(part: str | bytes, encoding: str, served: Served) -> bytes:
    if isinstance(part, bytes):
        return part
    part = part.replace("{ELSEWHERE}", served.elsewhere_host)
    if encoding == "percent":
        return quote(part, safe="/%?=@:;~").encode("ascii")
    raw = part.encode("utf-8", "surrogatepass")
    for byte in b" \r\n\x00":
        raw = raw.replace(bytes([byte]), b"%%%02X" % byte)
    return raw


def _target(served: Served, pieces: list[str | bytes], encoding: str) -> bytes:
    return b"/" + b"/".join(_encode(piece, encoding, served) for piece in pieces)


def _send(served: Served, method: str, target: bytes, host: str) -> tuple[bytes, Answer]:
    host_bytes = host.replace("{ELSEWHERE}", served.elsewhere_host).encode()
    request = (
        method.encode()
        + b" "
        + target
        + b" HTTP/1.1\r\nHost: "
        + host_bytes
        + b"\r\nConnection: close\r\n\r\n"
    )
    return request, _parse(raw_exchange(served.facade.port, request, timeout=15), request)


@pytest.mark.usefixtures("route_as_set")
@given(
    method=methods, pieces=st.lists(parts, min_size=1, max_size=5), encoding=encodings, host=hosts
)
@FUZZ
def test_odd_paths_and_host_headers_reach_legacy_only(
    served: Served, method: str, pieces: list[str | bytes], encoding: str, host: str
) -> None:
    request, answer = _send(served, method, _target(served, pieces, encoding), host)
    _check(served, answer, request, method)


@pytest.mark.usefixtures("route_as_set")
@given(
    method=methods,
    pieces=st.lists(parts, min_size=1, max_size=4),
    encoding=encodings,
    host=hosts,
    scheme=st.sampled_from(["http", "https", "HTTP"]),
)
@FUZZ
def test_absolute_form_targets_go_to_legacy_only(
    served: Served, method: str, pieces: list[str | bytes], encoding: str, host: str, scheme: str
) -> None:
    authority = served.elsewhere_host.encode()
    target = scheme.encode() + b"://" + authority + _target(served, pieces, encoding)
    request, answer = _send(served, method, target, host)
    _check(served, answer, request, method)


@pytest.mark.usefixtures("route_as_set")
@given(orderid=st.one_of(st.text(min_size=1, max_size=40), invalid_bytes), encoding=encodings)
@FUZZ
def test_encoded_and_invalid_order_ids_get_json_answers(
    served: Served, orderid: str | bytes, encoding: str
) -> None:
    target = b"/allocations/" + _encode(orderid, encoding, served)
    request, answer = _send(served, "GET", target, "facade.test")
    _check(served, answer, request)
    path = target.split(b"?", 1)[0].split(b"#", 1)[0]
    if answer.status == 200 and path != b"/allocations/":
        # only a well-formed id is answered, and then by the route's mode (an id sent raw
        # as "?..." or "#..." leaves the path /allocations/: not the route, legacy's)
        served_by = answer.headers.get("x-served-by")
        assert served_by == ("new" if served.mode is Mode.NEW else "legacy"), (
            request,
            answer.headers,
        )


@pytest.mark.usefixtures("route_as_set")
@pytest.mark.parametrize(
    "target",
    [
        b"/allocations/o1%00",
        b"/allocations/o1%00x",
        b"/allocations/%ff%fe",
        b"/allocations/o1\xff",
        b"/allocations/o1\xc3\x28",
        b"/allocations/o1%0d%0aforged",
        b"/allocations/o1%01%1b[2J",
        b"/allocations/\xed\xa0\x80",
    ],
)
def test_nul_invalid_utf8_and_control_characters_are_refused_with_json(
    served: Served, target: bytes
) -> None:
    before = len(served.legacy.requests)
    request, answer = _send(served, "GET", target, "facade.test")
    # 400 (refused by the facade), or 404 where no route's converter takes a CR or LF
    assert answer.status in (400, 404), (target, answer.status, answer.body[:300])
    _check(served, answer, request)
    assert len(served.legacy.requests) == before, "a refused request was forwarded"


# -- the OpenAPI document, over HTTP ------------------------------------------------------
# Last in the module: with the admin token, generated requests may move or delete the
# route, so the tests above run (per facade) while it is still in the mode it was set to.


@SCHEMA.parametrize()
@FUZZ
def test_generated_requests_get_no_server_error_and_json_errors(
    served: Served, case: schemathesis.Case[Any]
) -> None:
    response = case.call_and_validate(
        base_url=served.facade.url,
        headers={"Authorization": f"Bearer {TOKEN}"},
        checks=[checks.not_a_server_error, checks.content_type_conformance],
        timeout=15,
    )
    _check(
        served,
        Answer(
            response.status_code,
            {k.lower(): ", ".join(v) for k, v in response.headers.items()},
            response.content,
        ),
        (case.method, case.formatted_path),
        case.method,
    )
