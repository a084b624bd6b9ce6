"""Routing in the data plane: the map HAProxy gets from the route table, the rules that
use it, and keeping it current through the runtime API."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest
from sqlalchemy import create_engine, update

from new_domain.adapters import orm
from skeleton_app import RouteTable
from skeleton_app.commands import _data_plane_routing, _TableReader
from skeleton_app.dataplane import Backend, find_haproxy, render_haproxy_config
from skeleton_app.dataplane.routing import (
    EVERYTHING_TO_THE_FACADE,
    FACADE,
    LEGACY,
    DataPlaneRouting,
    LegacyUpstream,
    MapLine,
    Router,
    initial_lines,
    map_lines,
    map_text,
)
from skeleton_app.modes import Mode
from skeleton_app.patterns import PatternMatcher, RouteKey
from skeleton_app.routes_table import Routing
from tests.unit.test_facade_fakes import create_new_database


def _config(tmp_path: Path, legacy_url: str = "http://127.0.0.1:5001") -> str:
    return render_haproxy_config(
        "127.0.0.1:8000",
        Backend("127.0.0.1", 40001, 16),
        runtime_socket=str(tmp_path / "runtime.sock"),
        legacy=LegacyUpstream.from_url(legacy_url),
        routes_map=str(tmp_path / "routes.map"),
        legacy_timeout=7.5,
        metrics_socket=str(tmp_path / "metrics.sock"),
    )


def _routing(modes: dict[RouteKey, Mode]) -> Routing:
    return Routing(modes, {}, {}, PatternMatcher(modes))


def _backend(lines: Sequence[MapLine], method: str, path: str) -> str:
    key = method + path
    return next((value for regex, value in lines if re.search(regex, key)), LEGACY)


def test_legacy_routes_and_unknown_paths_go_to_legacy_the_others_to_the_facade() -> None:
    lines = map_lines(
        _routing(
            {
                ("GET", "/allocations/<orderid>"): Mode.SHADOW,
                ("GET", "/allocations/special"): Mode.LEGACY,
                ("POST", "/allocations/<orderid>"): Mode.LEGACY,
                ("GET", "/orders/<int(max=9):n>"): Mode.LEGACY,
            }
        )
    )

    assert _backend(lines, "GET", "/allocations/o1") == FACADE
    assert _backend(lines, "HEAD", "/allocations/o1") == FACADE  # a GET route takes HEAD
    assert _backend(lines, "GET", "/allocations/special") == LEGACY  # more specific first
    assert _backend(lines, "POST", "/allocations/o1") == LEGACY
    assert _backend(lines, "PUT", "/allocations/o1") == LEGACY  # no PUT route: unknown
    assert _backend(lines, "GET", "/allocations/o1/x") == LEGACY
    assert _backend(lines, "GET", "/elsewhere") == LEGACY
    # a converter that checks values: the facade decides (and proxies what it refuses)
    assert _backend(lines, "GET", "/orders/12") == FACADE
    assert lines[-1][1] == FACADE  # trailing legacy lines are the default anyway
    assert all(" " not in regex and "\\" not in regex for regex, _ in lines)


def test_every_route_on_legacy_leaves_an_empty_map() -> None:
    assert map_lines(_routing({("GET", "/a/<x>"): Mode.LEGACY, ("GET", "/b"): Mode.LEGACY})) == []


def test_write_groups_go_through_the_facade_whoever_owns_their_products(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'new.db'}"
    engine = create_engine(url)
    create_new_database(engine)
    table = RouteTable(engine)
    read = _TableReader(url)

    def allocate() -> str:
        return _backend(map_lines(read()), "POST", "/allocate")

    def settle() -> None:
        with engine.begin() as conn:
            conn.execute(update(orm.write_ownership).values(state="active", previous_rule=None))

    seen = [allocate()]
    table.set("POST", "/allocate", "shadow", by="ops")
    seen.append(allocate())
    table.set("POST", "/allocate", "canary 10", by="ops")
    seen.append(allocate())
    settle()
    table.rollback(by="ops")  # a hand-back: moving until its fence
    seen.append(allocate())
    settle()
    seen.append(allocate())
    assert _backend(map_lines(read()), "PATCH", "/batches/b-1") == FACADE
    assert _backend(map_lines(read()), "GET", "/batches/b-1") == LEGACY  # not a write
    read.close()
    engine.dispose()

    assert seen == [FACADE] * 5  # the facade holds the ownership row for legacy's writes
    routing = _data_plane_routing("http://legacy:5001", url, 1.0)
    assert routing.interval == 0.5  # a change reaches HAProxy within a second
    assert _data_plane_routing("http://legacy:5001", url, 0.0).interval == 0.1


def test_the_table_read_for_the_data_plane_is_the_facades(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'new.db'}"
    engine = create_engine(url)
    create_new_database(engine)
    table = RouteTable(engine, refresh_interval=0)
    table.set("GET", "/allocations/<orderid>", "shadow", by="ops")
    table.set("GET", "/reports/<path:rest>", "aa", by="ops")
    routing = table.read_routing()
    engine.dispose()

    assert routing.modes[("GET", "/allocations/<orderid>")] is Mode.SHADOW
    assert routing.modes[("GET", "/reports/<path:rest>")] is Mode.AA
    assert routing.group_of[("POST", "/allocate")] == "allocation"
    for method, path in [("GET", "/allocations/o1"), ("GET", "/reports/a/b"), ("GET", "/x")]:
        found = table.match(method, path)
        expected = LEGACY if found is None or found.mode is Mode.LEGACY else FACADE
        assert _backend(map_lines(routing), method, path) == expected


def test_the_config_routes_by_the_map_and_keeps_the_facades_own_paths(tmp_path: Path) -> None:
    config = _config(tmp_path, "http://legacy.internal:8080/shop")
    lines = [line.strip() for line in config.splitlines()]

    assert "acl strangler_own path_beg /_strangler/" in lines
    assert "acl strangler_own path /_strangler '/metrics'" in lines
    to_facade = "use_backend facade if strangler_own || !strangler_safe || strangler_odd"
    assert to_facade in lines
    assert (
        "use_backend legacy if { var(txn.strangler_route),"
        f"map_reg('{tmp_path / 'routes.map'}',legacy) -m str legacy }}"
    ) in lines
    assert lines.index(
        "use_backend facade if strangler_own || !strangler_safe || strangler_odd"
    ) < (lines.index("default_backend facade"))
    legacy = lines[lines.index("backend legacy") :]
    assert "server legacy legacy.internal:8080" in legacy
    assert "http-request set-header Host legacy.internal:8080" in legacy
    assert "http-request set-path /shop%[path]" in legacy
    assert "http-response set-header X-Served-By legacy" in legacy
    assert "http-request del-header proxy- -m beg" in legacy
    assert (
        "http-response replace-header Location "
        "'^http://legacy\\.internal:8080/shop(/.*)$' '\\1'" in legacy
    )
    assert "timeout server 7500ms" in legacy
    assert f"bind unix@{tmp_path / 'metrics.sock'} mode 600" in lines
    assert "http-request use-service prometheus-exporter" in lines


def test_without_routing_nothing_goes_to_legacy_directly() -> None:
    config = render_haproxy_config("127.0.0.1:8000", Backend("127.0.0.1", 40001, 16))

    assert "backend legacy" not in config and "map_reg" not in config


def test_haproxy_accepts_the_config_with_routing(tmp_path: Path) -> None:
    binary = find_haproxy()
    if binary is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("haproxy is not installed (CI=true)", pytrace=False)
        pytest.skip("haproxy is not installed")
    lines = map_lines(_routing({("GET", "/a/<x>"): Mode.SHADOW, ("GET", "/a/(b)'$"): Mode.NEW}))
    (tmp_path / "routes.map").write_text(map_text(lines))
    path = tmp_path / "haproxy.cfg"
    path.write_text(_config(tmp_path, "https://127.0.0.1/shop"))

    checked = subprocess.run([binary, "-c", "-f", str(path)], capture_output=True, text=True)

    assert checked.returncode == 0, checked.stderr
    assert "WARNING" not in checked.stderr + checked.stdout


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://legacy:5001", LegacyUpstream("legacy", 5001, False, "", "http://legacy:5001")),
        ("https://legacy/", LegacyUpstream("legacy", 443, True, "", "https://legacy")),
        (
            "http://10.0.0.7/shop/v1",
            LegacyUpstream("10.0.0.7", 80, False, "/shop/v1", "http://10.0.0.7/shop/v1"),
        ),
    ],
)
def test_legacy_is_reached_where_the_legacy_url_says(url: str, expected: LegacyUpstream) -> None:
    assert LegacyUpstream.from_url(url) == expected


def test_a_legacy_path_haproxy_cannot_hold_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot be written for HAProxy"):
        LegacyUpstream.from_url("http://legacy/it's")


# -- keeping the map current -----------------------------------------------------------


class FakeAPI:
    def __init__(self) -> None:
        self.replaced: list[list[MapLine]] = []
        self.error: Exception | None = None

    def replace_map(self, path: str, lines: Sequence[MapLine]) -> None:
        if self.error is not None:
            raise self.error
        self.replaced.append(list(lines))


class Table:
    def __init__(self, modes: dict[RouteKey, Mode]) -> None:
        self.modes = modes
        self.error: Exception | None = None
        self.closed = 0

    def __call__(self) -> Routing:
        if self.error is not None:
            raise self.error
        return _routing(dict(self.modes))

    def close(self) -> None:
        self.closed += 1


ROUTE = ("GET", "/allocations/<orderid>")


def _router(tmp_path: Path, read: Table) -> tuple[Router, FakeAPI]:
    routing = DataPlaneRouting("http://legacy:5001", read, close=read.close)
    api = FakeAPI()
    return Router(routing, tmp_path / "routes.map", api, initial_lines(routing)), api  # type: ignore[arg-type]


def test_the_router_replaces_the_map_when_the_table_changes(tmp_path: Path) -> None:
    read = Table({ROUTE: Mode.LEGACY})
    router, api = _router(tmp_path, read)
    assert read.closed == 1  # the first read's connections are closed before the fork
    assert router.current == []

    router.sync()
    assert api.replaced == []
    read.modes[ROUTE] = Mode.SHADOW
    router.sync()
    router.sync()

    [lines] = api.replaced
    assert _backend(lines, "GET", "/allocations/o1") == FACADE
    assert (tmp_path / "routes.map").read_text() == map_text(lines)
    read.modes[ROUTE] = Mode.LEGACY
    router.sync()
    assert api.replaced[-1] == [] and (tmp_path / "routes.map").read_text() == ""


def test_an_unreadable_table_keeps_the_routing_and_a_never_read_one_sends_all_to_the_facade(
    tmp_path: Path,
) -> None:
    read = Table({ROUTE: Mode.LEGACY})
    read.error = RuntimeError("database down")
    router, api = _router(tmp_path, read)
    assert router.current == EVERYTHING_TO_THE_FACADE
    assert _backend(router.current, "GET", "/anything") == FACADE

    read.error = None
    router.sync()
    read.error = RuntimeError("database down again")
    router.sync()

    assert router.current == [] and api.replaced == [[]]


def test_a_refused_change_is_tried_again(tmp_path: Path) -> None:
    read = Table({ROUTE: Mode.LEGACY})
    router, api = _router(tmp_path, read)
    read.modes[ROUTE] = Mode.NEW
    api.error = RuntimeError("HAProxy refused the map's lines")

    with pytest.raises(RuntimeError, match="refused"):
        router.sync()
    assert router.current == []
    api.error = None
    router.sync()

    assert len(api.replaced) == 1 and router.current == api.replaced[0] != []
