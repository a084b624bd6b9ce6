"""The data plane's HAProxy configuration and how ``strangler serve`` chooses it."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from skeleton_app import commands
from skeleton_app.dataplane import (
    Backend,
    HAProxyPlane,
    Limits,
    Timeouts,
    find_haproxy,
    render_haproxy_config,
)
from skeleton_app.dataplane import options as dataplane_options
from skeleton_app.dataplane.haproxy_config import ERRORS

ENV = {
    "LEGACY_URL": "http://127.0.0.1:5001",
    "NEW_DB_URL": "sqlite://",
    "STRANGLER_DATA_PLANE": None,
}


def _config(**kwargs: Any) -> str:
    return render_haproxy_config("0.0.0.0:8000", Backend("127.0.0.1", 40001, 16), **kwargs)


def _directives(config: str, name: str) -> list[str]:
    return [line.strip() for line in config.splitlines() if line.strip().startswith(name)]


def test_the_config_buffers_whole_requests_and_times_out_slow_ones() -> None:
    config = _config(timeouts=Timeouts.for_facade(7, upstream_timeout=10, new_timeout=2))

    assert "option http-buffer-request" in _directives(config, "option")
    timeouts = dict(line.split()[1:3] for line in _directives(config, "timeout"))
    assert timeouts["http-request"] == "7000ms"
    # the facade answers its own 504 after upstream (+ new) timeout: HAProxy waits longer
    assert timeouts["server"] == "17000ms"
    assert "bind 0.0.0.0:8000" in _directives(config, "bind")
    assert _directives(config, "server") == ["server facade 127.0.0.1:40001 maxconn 16"]


def test_the_buffer_holds_the_largest_allowed_request_whole() -> None:
    limits = Limits(body=4096)
    config = _config(limits=limits)

    [bufsize] = _directives(config, "tune.bufsize")
    assert int(bufsize.split()[1]) > limits.request_line + limits.header_bytes + limits.body
    assert "if { req.body_size gt 4096 }" in config
    assert f"if {{ req.hdrs,length gt {limits.header_bytes} }}" in config
    assert f"if {{ req.fhdr_cnt gt {limits.header_fields} }}" in config
    assert f"if {{ url,length gt {limits.request_line} }}" in config


def test_holds_many_connections() -> None:
    config = _config(max_connections=5000)

    assert _directives(config, "maxconn") == ["maxconn 5000", "maxconn 5000"]


def test_every_answer_of_the_proxy_is_the_kits_json_error() -> None:
    config = _config()
    answers = re.findall(
        r"status (\d+) content-type application/json string '([^']*)' "
        r"hdr X-Served-By proxy",
        config,
    )

    statuses = {int(status) for status, _ in answers}
    assert statuses == set(ERRORS) | {413, 414, 431}
    for _, body in answers:
        assert set(json.loads(body)) == {"error", "detail"}


@pytest.fixture
def haproxy() -> str:
    binary = find_haproxy()
    if binary is None:
        message = "haproxy is not installed"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{message} (CI=true: a missing service is a failure)", pytrace=False)
        pytest.skip(message)
    return binary


def test_haproxy_accepts_the_config(haproxy: str, tmp_path: Path) -> None:
    path = tmp_path / "haproxy.cfg"
    path.write_text(_config(runtime_socket=str(tmp_path / "runtime.sock")))

    checked = subprocess.run([haproxy, "-c", "-f", str(path)], capture_output=True, text=True)

    assert checked.returncode == 0, checked.stderr
    assert "WARNING" not in checked.stderr + checked.stdout


@pytest.fixture
def chosen(monkeypatch: pytest.MonkeyPatch) -> list[tuple[HAProxyPlane | None, dict[str, Any]]]:
    calls: list[tuple[HAProxyPlane | None, dict[str, Any]]] = []

    def serve_facade(plane: HAProxyPlane | None, run: Any, options: Any, **kw: Any) -> None:
        calls.append((plane, kw))

    monkeypatch.setattr(commands, "serve_facade", serve_facade)
    return calls


def test_serve_uses_haproxy_when_installed(
    chosen: list[tuple[HAProxyPlane | None, dict[str, Any]]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(dataplane_options, "find_haproxy", lambda: "/opt/haproxy")

    result = CliRunner(env=ENV).invoke(
        commands.serve,
        [
            "--port",
            "8080",
            "--workers",
            "3",
            "--threads",
            "5",
            "--request-timeout",
            "4",
            "--max-body",
            "2048",
            "--max-connections",
            "3000",
        ],
    )

    assert result.exit_code == 0, result.output
    [(plane, kw)] = chosen
    assert plane == HAProxyPlane(
        "/opt/haproxy", request_timeout=4.0, limits=Limits(body=2048), max_connections=3000
    )
    assert (kw["host"], kw["port"], kw["concurrency"]) == ("127.0.0.1", 8080, 15)


def test_serve_without_haproxy_warns_once_and_serves_alone(
    chosen: list[tuple[HAProxyPlane | None, dict[str, Any]]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(dataplane_options, "find_haproxy", lambda: None)

    result = CliRunner(env=ENV).invoke(commands.serve, ["--port", "8080"])

    assert result.exit_code == 0, result.output
    assert [plane for plane, _ in chosen] == [None]
    [line] = result.output.splitlines()
    assert line.startswith("strangler serve: warning: haproxy is not installed")


def test_serve_data_plane_none_never_looks_for_haproxy(
    chosen: list[tuple[HAProxyPlane | None, dict[str, Any]]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(dataplane_options, "find_haproxy", lambda: pytest.fail("looked"))

    result = CliRunner(env=ENV).invoke(commands.serve, ["--port", "8080", "--data-plane", "none"])

    assert result.exit_code == 0, result.output
    assert result.output == ""
    assert [plane for plane, _ in chosen] == [None]


def test_serve_data_plane_haproxy_without_haproxy_fails_in_one_line(
    chosen: list[tuple[HAProxyPlane | None, dict[str, Any]]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(dataplane_options, "find_haproxy", lambda: None)

    result = CliRunner(env={**ENV, "STRANGLER_DATA_PLANE": "haproxy"}).invoke(
        commands.serve, ["--port", "8080"]
    )

    assert result.exit_code == 1
    [line] = result.output.splitlines()
    assert "--data-plane haproxy: the haproxy binary is not installed" in line
    assert chosen == []
