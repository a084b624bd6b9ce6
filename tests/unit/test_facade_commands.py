"""``strangler serve`` and ``strangler routes ...``: options, output, one-line failures."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner
from flask import Flask
from sqlalchemy import create_engine

from skeleton_app import Mode, RouteTable, close_app, commands
from skeleton_app.schema import metadata

ROUTE = "/allocations/<orderid>"


@pytest.fixture
def new_db_url(tmp_path: Path) -> Iterator[str]:
    url = f"sqlite:///{tmp_path / 'new.db'}"
    engine = create_engine(url)
    metadata.create_all(engine)
    engine.dispose()
    yield url


@pytest.fixture
def runner(new_db_url: str) -> CliRunner:
    return CliRunner(env={"NEW_DB_URL": new_db_url, "USER": "tester"})


def test_routes_list_shows_movable_routes_never_set(runner: CliRunner) -> None:
    result = runner.invoke(commands.routes, ["list"])

    assert result.exit_code == 0, result.output
    header, row = result.output.splitlines()
    assert header.split() == ["METHOD", "PATTERN", "MODE", "UPDATED_AT", "BY", "REASON"]
    assert row.split() == ["GET", ROUTE, "legacy", "-", "-", "-"]


def test_routes_set_then_list_and_history(runner: CliRunner, new_db_url: str) -> None:
    result = runner.invoke(
        commands.routes, ["set", "GET", ROUTE, "new", "--reason", "read model caught up"]
    )

    assert result.exit_code == 0, result.output
    assert result.output == f"GET {ROUTE} -> new\n"
    listing = runner.invoke(commands.routes, ["list"]).output.splitlines()
    assert listing[1].split()[:3] == ["GET", ROUTE, "new"]
    assert listing[1].split()[4:] == ["tester", "read", "model", "caught", "up"]
    history = runner.invoke(commands.routes, ["history", "GET", ROUTE]).output.splitlines()
    assert history[1].split()[1:] == ["GET", ROUTE, "-", "new", "tester", "read", "model",
                                      "caught", "up"]
    assert RouteTable(new_db_url).mode_for("GET", "/allocations/o-1") is Mode.NEW


def test_routes_set_takes_who_from_the_option(runner: CliRunner, new_db_url: str) -> None:
    runner.invoke(commands.routes, ["set", "GET", ROUTE, "legacy", "--by", "oncall"])

    assert [e.by for e in RouteTable(new_db_url).history()] == ["oncall"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["GET", "/batches/<ref>", "new"], "GET /batches/<ref> cannot be served by the new system"),
        (["GET", ROUTE, "sideways"], "unknown mode 'sideways' (known: legacy, new)"),
        (["GET", "nope", "legacy"], "it must start with '/'"),
    ],
)
def test_routes_set_refuses_with_one_line(
    runner: CliRunner, args: list[str], message: str
) -> None:
    result = runner.invoke(commands.routes, ["set", *args], standalone_mode=False)

    assert isinstance(result.exception, click.ClickException)
    assert message in result.exception.format_message()
    assert "\n" not in result.exception.format_message()


def test_an_unmigrated_database_is_one_clear_error(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"

    result = CliRunner().invoke(
        commands.routes, ["list", "--new-db-url", url], standalone_mode=False
    )

    assert isinstance(result.exception, click.ClickException)
    message = result.exception.format_message()
    assert "run 'strangler db upgrade'" in message and "no such table" in message
    assert "\n" not in message


def test_the_database_url_is_required() -> None:
    result = CliRunner(env={"NEW_DB_URL": None}).invoke(commands.routes, ["list"])

    assert result.exit_code == 2
    assert "Missing option '--new-db-url'" in result.output


class _Recorder:
    def __init__(self) -> None:
        self.runs: list[tuple[Any, dict[str, Any]]] = []


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> _Recorder:
    recorder = _Recorder()

    def run(server: commands.FacadeServer) -> None:
        recorder.runs.append((server._factory, server._options))

    monkeypatch.setattr(commands.FacadeServer, "run", run)
    return recorder


def test_serve_runs_gunicorn_with_an_app_built_in_each_worker(
    started: _Recorder, new_db_url: str
) -> None:
    env = {"LEGACY_URL": "http://127.0.0.1:5001", "NEW_DB_URL": new_db_url}
    result = CliRunner(env=env).invoke(
        commands.serve, ["--port", "8080", "--workers", "3", "--threads", "4"]
    )

    assert result.exit_code == 0, result.output
    [(factory, options)] = started.runs
    assert options["bind"] == "127.0.0.1:8080"
    assert (options["workers"], options["threads"]) == (3, 4)
    assert options["worker_class"] == "gthread"
    assert options["preload_app"] is False
    assert options["timeout"] > 10
    app = factory()
    assert isinstance(app, Flask)
    assert app.test_client().get("/_strangler/health").status_code == 200
    close_app(app)


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--port", "8080"], {"NEW_DB_URL": "sqlite://"}, "Missing option '--legacy-url'"),
        (["--port", "8080"], {"LEGACY_URL": "http://h"}, "Missing option '--new-db-url'"),
        (["--port", "8080", "--legacy-url", "ftp://h"], {"NEW_DB_URL": "sqlite://"},
         "legacy URL must be http(s)://host[:port][/path]"),
        (["--port", "8080", "--new-db-url", "nonsense"], {"LEGACY_URL": "http://h"},
         "not a database URL"),
        ([], {"LEGACY_URL": "http://h", "NEW_DB_URL": "sqlite://"}, "Missing option '--port'"),
    ],
)
def test_serve_refuses_bad_configuration(
    started: _Recorder, args: list[str], env: dict[str, str], message: str
) -> None:
    result = CliRunner(env={"LEGACY_URL": None, "NEW_DB_URL": None, **env}).invoke(
        commands.serve, args
    )

    assert result.exit_code == 2
    assert message in result.output
    assert started.runs == []
