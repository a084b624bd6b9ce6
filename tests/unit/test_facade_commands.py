"""``strangler serve`` and ``strangler routes ...``: options, output, one-line failures."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner
from flask import Flask
from sqlalchemy import create_engine

from skeleton_app import (
    Mode,
    RouteOptions,
    RouteTable,
    ShadowResults,
    close_app,
    commands,
    facade_of,
)
from skeleton_app.shadow_results import ShadowResult
from tests.unit.test_facade_fakes import create_new_database

ROUTE = "/allocations/<orderid>"


@pytest.fixture
def new_db_url(tmp_path: Path) -> Iterator[str]:
    url = f"sqlite:///{tmp_path / 'new.db'}"
    engine = create_engine(url)
    create_new_database(engine)
    engine.dispose()
    yield url


@pytest.fixture
def runner(new_db_url: str) -> CliRunner:
    return CliRunner(env={"NEW_DB_URL": new_db_url, "USER": "tester"})


def test_routes_list_shows_movable_routes_never_set(runner: CliRunner) -> None:
    result = runner.invoke(commands.routes, ["list"])

    assert result.exit_code == 0, result.output
    header, *rows, blank, group_header, group = result.output.splitlines()
    assert header.split() == [
        "METHOD",
        "PATTERN",
        "MODE",
        "PARITY",
        "SAMPLES",
        "NOISE",
        "OPTIONS",
        "UPDATED_AT",
        "BY",
        "REASON",
    ]
    assert [row.split() for row in rows] == [
        ["POST", "/allocate", "legacy", "-", "0", "-", "-", "-", "-", "-"],
        ["GET", ROUTE, "legacy", "-", "0", "-", "-", "-", "-", "-"],
        ["POST", "/batches", "legacy", "-", "0", "-", "-", "-", "-", "-"],
        ["PATCH", "/batches/<ref>", "legacy", "-", "0", "-", "-", "-", "-", "-"],
        ["POST", "/deallocate", "legacy", "-", "0", "-", "-", "-", "-", "-"],
    ]
    assert blank == ""
    assert group_header.split() == [
        "WRITE",
        "GROUP",
        "OWNERSHIP",
        "EPOCH",
        "STATE",
        "CHANGED_AT",
        "ROUTES",
    ]
    assert group.split() == [
        "allocation",
        "legacy",
        "0",
        "active",
        "-",
        "POST",
        "/batches,",
        "PATCH",
        "/batches/<ref>,",
        "POST",
        "/allocate,",
        "POST",
        "/deallocate",
    ]


def _row(listing: list[str], method: str, pattern: str) -> list[str]:
    [row] = [line.split() for line in listing if line.split()[:2] == [method, pattern]]
    return row


def test_routes_set_then_list_and_history(runner: CliRunner, new_db_url: str) -> None:
    result = runner.invoke(
        commands.routes,
        ["set", "GET", ROUTE, "canary", "25", "--reason", "first quarter", "--force"],
    )

    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0] == f"GET {ROUTE} -> canary 25"
    listing = runner.invoke(commands.routes, ["list"]).output.splitlines()
    assert _row(listing, "GET", ROUTE)[:3] == ["GET", ROUTE, "canary:25"]
    assert _row(listing, "GET", ROUTE)[8:] == ["tester", "first", "quarter"]
    history = runner.invoke(commands.routes, ["history", "GET", ROUTE]).output.splitlines()
    assert history[0].split() == ["AT", "METHOD", "PATTERN", "FROM", "TO", "BY", "FORCED", "REASON"]
    assert history[1].split()[1:] == [
        "GET",
        ROUTE,
        "-",
        "canary:25",
        "tester",
        "yes",
        "first",
        "quarter",
    ]
    assert RouteTable(new_db_url).mode_for("GET", "/allocations/o-1") is Mode.CANARY


def test_routes_set_takes_who_from_the_option(runner: CliRunner, new_db_url: str) -> None:
    runner.invoke(commands.routes, ["set", "GET", ROUTE, "legacy", "--by", "oncall"])

    assert [e.by for e in RouteTable(new_db_url).history()] == ["oncall"]


def test_routes_set_changes_route_options(runner: CliRunner, new_db_url: str) -> None:
    result = runner.invoke(
        commands.routes,
        [
            "set",
            "GET",
            ROUTE,
            "shadow",
            "--ignore-field",
            "generated_at",
            "--ignore-field",
            "etag",
            "--unordered-lists",
            "--allow-mutating-shadow",
            "--canary-key",
            "header:X-Customer",
            "--sample-rate",
            "0.5",
        ],
    )
    assert result.exit_code == 0, result.output
    options = RouteTable(new_db_url).get("GET", ROUTE).options
    assert options == RouteOptions(
        allow_mutating_shadow=True,
        ignore_fields=("etag", "generated_at"),
        unordered_lists=True,
        canary_key="header:X-Customer",
        sample_rate=0.5,
    )

    runner.invoke(
        commands.routes,
        [
            "set",
            "GET",
            ROUTE,
            "shadow",
            "--no-ignore-fields",
            "--ordered-lists",
            "--no-allow-mutating-shadow",
        ],
    )

    options = RouteTable(new_db_url).get("GET", ROUTE).options
    assert options == RouteOptions(canary_key="header:X-Customer", sample_rate=0.5)
    listing = runner.invoke(commands.routes, ["list"]).output.splitlines()
    assert _row(listing, "GET", ROUTE)[6] == "key=header:X-Customer,sample=0.5"


def test_routes_set_new_is_refused_by_the_gate_unless_forced(
    runner: CliRunner, new_db_url: str
) -> None:
    refused = runner.invoke(commands.routes, ["set", "GET", ROUTE, "new"], standalone_mode=False)

    assert isinstance(refused.exception, click.ClickException)
    message = refused.exception.format_message()
    assert message == (
        "refusing to serve GET /allocations/<orderid> from new: no shadow samples in the last "
        "24 h (newest 10000 samples); needs >= 99.9% over >= 100 samples (shadow it longer, "
        "or use --force)"
    )
    assert RouteTable(new_db_url).history() == []

    forced = runner.invoke(
        commands.routes, ["set", "GET", ROUTE, "new", "--force", "--reason", "hotfix"]
    )

    assert forced.exit_code == 0, forced.output
    assert forced.output.splitlines() == [
        f"GET {ROUTE} -> new",
        "gate: forced past the gate: no shadow samples in the last 24 h (newest 10000 "
        "samples); needs >= 99.9% over >= 100 samples",
    ]
    history = runner.invoke(commands.routes, ["history"]).output.splitlines()
    assert history[1].split()[5:] == ["tester", "yes", "hotfix"]


def test_the_gate_thresholds_are_options(runner: CliRunner, new_db_url: str) -> None:
    _write_results(new_db_url, {"match": 19, "mismatch": 1})

    result = runner.invoke(
        commands.routes, ["set", "GET", ROUTE, "new", "--min-parity", "95", "--min-samples", "10"]
    )

    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[1] == (
        "gate: shadow parity 95.00% over 20 samples in the last 24 h (newest 10000 samples); "
        "needs >= 95% over >= 10 samples"
    )


def test_routes_list_and_history_as_json(runner: CliRunner, new_db_url: str) -> None:
    _write_results(new_db_url, {"match": 3, "mismatch": 1})
    _write_results(new_db_url, {"match": 2}, kind="aa")
    runner.invoke(commands.routes, ["set", "GET", ROUTE, "shadow", "--reason", "compare"])

    listed = json.loads(runner.invoke(commands.routes, ["list", "--json"]).output)
    history = json.loads(runner.invoke(commands.routes, ["history", "--json"]).output)

    [route] = [r for r in listed["routes"] if r["pattern"] == ROUTE]
    assert "group" not in route
    assert (route["mode"], route["setting"], route["reason"]) == ("shadow", "shadow", "compare")
    assert route["parity"] == {
        "matches": 3,
        "mismatches": 1,
        "errors": 0,
        "samples": 4,
        "percent": 75.0,
    }
    assert route["noise"]["percent"] == 100.0
    [entry] = history["entries"]
    assert (entry["from_mode"], entry["to_mode"], entry["by"], entry["forced"]) == (
        None,
        "shadow",
        "tester",
        False,
    )


def test_routes_mismatches_shows_the_newest_diffs(runner: CliRunner, new_db_url: str) -> None:
    _write_results(new_db_url, {"match": 3})
    ShadowResults(create_engine(new_db_url)).write(
        [
            ShadowResult(
                at=datetime.now(UTC),
                method="GET",
                pattern=ROUTE,
                kind="shadow",
                outcome="mismatch",
                path="/allocations/o-7",
                legacy_status=200,
                legacy_ms=2.5,
                new_status=404,
                new_ms=1.25,
                diff="status: legacy 200, new 404",
            ),
        ]
    )

    result = runner.invoke(commands.routes, ["mismatches", "get", ROUTE])

    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == f"GET {ROUTE} shadow: 75.00% over 4 samples (1 mismatches, 0 errors)"
    assert lines[2].endswith("mismatch /allocations/o-7: legacy 200 in 2.5 ms, new 404 in 1.2 ms")
    assert lines[3] == "    status: legacy 200, new 404"
    as_json = json.loads(
        runner.invoke(commands.routes, ["mismatches", "GET", ROUTE, "--json"]).output
    )
    assert [m["path"] for m in as_json["mismatches"]] == ["/allocations/o-7"]


def test_routes_rollback_moves_everything_back_in_one_command(
    runner: CliRunner, new_db_url: str
) -> None:
    runner.invoke(
        commands.routes, ["set", "GET", ROUTE, "canary", "10", "--force", "--reason", "test"]
    )
    runner.invoke(commands.routes, ["set", "POST", "/orders", "aa"])

    result = runner.invoke(commands.routes, ["rollback", "--reason", "incident"])

    assert result.exit_code == 0, result.output
    assert sorted(result.output.splitlines()) == [
        f"GET {ROUTE} -> legacy",
        "POST /orders -> legacy",
    ]
    assert {r.mode for r in RouteTable(new_db_url).list()} == {Mode.LEGACY}
    again = runner.invoke(commands.routes, ["rollback"])
    assert again.output == "every route is already served by legacy\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["set", "GET", "/batches/<ref>", "new"],
            "GET /batches/<ref> cannot be served by the new system",
        ),
        (
            ["set", "GET", ROUTE, "sideways"],
            "unknown mode 'sideways' (known: legacy, aa, shadow, canary, new)",
        ),
        (["set", "GET", "nope", "legacy"], "it must start with '/'"),
        (["set", "GET", ROUTE, "canary"], "canary needs a percentage"),
        (["set", "GET", ROUTE, "canary", "x"], "not a percentage: 'x'"),
        (["set", "GET", ROUTE, "shadow", "--canary-key", "body"], "invalid canary key"),
        (
            ["set", "GET", ROUTE, "shadow", "--ignore-field", "a", "--no-ignore-fields"],
            "exclude each other",
        ),
        (["rollback", "GET"], "give METHOD and PATTERN, or neither"),
    ],
)
def test_routes_commands_refuse_with_one_line(
    runner: CliRunner, args: list[str], message: str
) -> None:
    result = runner.invoke(commands.routes, args, standalone_mode=False)

    assert isinstance(result.exception, click.ClickException)
    assert message in result.exception.format_message()
    assert "\n" not in result.exception.format_message()


def _write_results(url: str, outcomes: dict[str, int], kind: str = "shadow") -> None:
    engine = create_engine(url)
    ShadowResults(engine).write(
        [
            ShadowResult(
                at=datetime.now(UTC),
                method="GET",
                pattern=ROUTE,
                kind=kind,
                outcome=outcome,
                path="/allocations/o",
                legacy_status=200,
                legacy_ms=1.0,
            )
            for outcome, count in outcomes.items()
            for _ in range(count)
        ]
    )
    engine.dispose()


def test_an_unmigrated_database_is_one_clear_error(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"

    result = CliRunner().invoke(
        commands.routes, ["list", "--new-db-url", url], standalone_mode=False
    )

    assert isinstance(result.exception, click.ClickException)
    message = result.exception.format_message()
    assert message == (
        f"the new database {url} is not migrated (no schema revision): run 'strangler db upgrade'"
    )


def test_an_unreachable_database_is_not_called_unmigrated() -> None:
    url = "postgresql+psycopg://someone:hunter2@127.0.0.1:1/nowhere"

    result = CliRunner().invoke(
        commands.routes, ["history", "--new-db-url", url], standalone_mode=False
    )

    assert isinstance(result.exception, click.ClickException)
    message = result.exception.format_message()
    assert message.startswith(
        "cannot reach the new database postgresql+psycopg://someone:***@127.0.0.1:1/nowhere: "
    )
    assert "refused" in message and "migrated" not in message and "hunter2" not in message
    assert "\n" not in message


def test_the_database_url_is_required() -> None:
    result = CliRunner(env={"NEW_DB_URL": None}).invoke(commands.routes, ["list"])

    assert result.exit_code == 2
    assert "Missing option '--new-db-url'" in result.output


class _Recorder:
    def __init__(self) -> None:
        self.runs: list[tuple[Any, dict[str, Any]]] = []
        self.metrics_dirs: list[str | None] = []


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> _Recorder:
    recorder = _Recorder()
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    monkeypatch.setenv("STRANGLER_DATA_PLANE", "none")  # gunicorn alone (test_dataplane.py)

    def run(server: commands.FacadeServer) -> None:
        recorder.runs.append((server._factory, server._options))
        folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        recorder.metrics_dirs.append(folder if folder and os.path.isdir(folder) else None)

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
    settings = facade_of(app).settings
    assert (settings.max_lag, settings.new_timeout, settings.admin_token) == (15.0, 2.0, None)
    assert (settings.gate.min_parity, settings.gate.min_samples) == (99.9, 100)
    close_app(app)


def test_serve_gives_the_workers_a_metrics_folder_and_removes_it_after(
    started: _Recorder, new_db_url: str
) -> None:
    env = {"LEGACY_URL": "http://127.0.0.1:5001", "NEW_DB_URL": new_db_url}

    result = CliRunner(env=env).invoke(commands.serve, ["--port", "8080"])

    assert result.exit_code == 0, result.output
    [folder] = started.metrics_dirs
    assert folder is not None and "strangler-metrics-" in folder
    assert not os.path.exists(folder)
    assert "PROMETHEUS_MULTIPROC_DIR" not in os.environ


def test_serve_passes_guards_shadow_admin_and_gate_settings(
    started: _Recorder, new_db_url: str
) -> None:
    env = {"LEGACY_URL": "http://127.0.0.1:5001", "NEW_DB_URL": new_db_url, "ADMIN_TOKEN": "s3cret"}
    result = CliRunner(env=env).invoke(
        commands.serve,
        [
            "--port",
            "8080",
            "--max-lag",
            "30",
            "--new-timeout",
            "0.5",
            "--shadow-queue-size",
            "50",
            "--shadow-sample-rate",
            "0.1",
            "--shadow-max-body",
            "4096",
            "--min-parity",
            "99",
            "--min-samples",
            "500",
            "--parity-window",
            "3600",
        ],
    )

    assert result.exit_code == 0, result.output
    [(factory, _)] = started.runs
    app = factory()
    settings = facade_of(app).settings
    assert (settings.max_lag, settings.new_timeout, settings.admin_token) == (30.0, 0.5, "s3cret")
    assert (settings.shadow_queue_size, settings.shadow_sample_rate, settings.shadow_max_body) == (
        50,
        0.1,
        4096,
    )
    assert (settings.gate.min_parity, settings.gate.min_samples, settings.gate.window.seconds) == (
        99.0,
        500,
        3600.0,
    )
    assert facade_of(app).table.gate == settings.gate
    close_app(app)
    result = CliRunner(env=env).invoke(commands.serve, ["--port", "8080", "--no-lag-guard"])
    app = started.runs[-1][0]()
    assert facade_of(app).settings.max_lag is None
    close_app(app)


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--port", "8080"], {"NEW_DB_URL": "sqlite://"}, "Missing option '--legacy-url'"),
        (["--port", "8080"], {"LEGACY_URL": "http://h"}, "Missing option '--new-db-url'"),
        (
            ["--port", "8080", "--legacy-url", "ftp://h"],
            {"NEW_DB_URL": "sqlite://"},
            "legacy URL must be http(s)://host[:port][/path]",
        ),
        (
            ["--port", "8080", "--new-db-url", "nonsense"],
            {"LEGACY_URL": "http://h"},
            "not a database URL",
        ),
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


# -- attacks: deleting routes, forged audit lines, credentials in errors ---------------


def test_routes_delete_is_audited_and_needs_a_reason(runner: CliRunner, new_db_url: str) -> None:
    runner.invoke(commands.routes, ["set", "GET", "/things/<id>", "aa"])

    no_reason = runner.invoke(commands.routes, ["delete", "GET", "/things/<id>"])
    deleted = runner.invoke(
        commands.routes, ["delete", "get", "/things/<id>", "--reason", "unused", "--by", "oncall"]
    )
    missing = runner.invoke(
        commands.routes,
        ["delete", "GET", "/things/<id>", "--reason", "again"],
        standalone_mode=False,
    )

    assert no_reason.exit_code == 2 and "--reason" in no_reason.output
    assert deleted.exit_code == 0, deleted.output
    assert deleted.output == "GET /things/<id> deleted (was aa)\n"
    assert all(r.pattern != "/things/<id>" for r in RouteTable(new_db_url).list())
    last = RouteTable(new_db_url).history()[-1]
    assert (last.from_mode, last.to_mode, last.by, last.reason) == (
        "aa",
        "deleted",
        "oncall",
        "unused",
    )
    assert isinstance(missing.exception, click.ClickException)
    assert missing.exception.format_message() == "no stored route GET /things/<id>"


def test_history_prints_stored_text_escaped(runner: CliRunner, new_db_url: str) -> None:
    from skeleton_app.schema import facade_route_audit

    engine = create_engine(new_db_url)
    with engine.begin() as conn:  # written before fields were checked, or by hand
        conn.execute(
            facade_route_audit.insert().values(
                at=datetime.now(UTC),
                method="GET",
                pattern=ROUTE,
                from_mode=None,
                to_mode="aa",
                by="eve\x1b[1A",
                reason="ok\r\n2026-01-01T00:00:00+00:00  GET  /x  legacy  new  admin  no  forged",
                options="{}",
                forced=False,
            )
        )
    engine.dispose()

    result = runner.invoke(commands.routes, ["history"])

    lines = result.output.splitlines()
    assert len(lines) == 2, lines
    assert "\x1b" not in result.output and "\r" not in result.output
    assert lines[1].endswith(
        "ok\\r\\n2026-01-01T00:00:00+00:00  GET  /x  legacy  new  admin  no  forged"
    )
    assert "eve\\x1b[1A" in lines[1]


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (["serve", "--port", "1", "--legacy-url", "http://u:s3cr3t-pw@legacy.test"], {}),
        (["serve", "--port", "1"], {"LEGACY_URL": "https://u:s3cr3t-pw@legacy.test/?q"}),
        (
            [
                "serve",
                "--port",
                "1",
                "--legacy-url",
                "http://legacy.test",
                "--new-db-url",
                "nodriver://u:s3cr3t-pw@db/x",
            ],
            {},
        ),
        (
            ["serve", "--port", "1", "--legacy-url", "http://legacy.test"],
            {"NEW_DB_URL": "postgresql://u:s3cr3t-pw@db:port/x"},
        ),
        (["routes", "list", "--new-db-url", "postgresql+psycopg://u:s3cr3t-pw@127.0.0.1:1/x"], {}),
        (
            [
                "serve",
                "--port",
                "1",
                "--legacy-url",
                "http://legacy.test",
                "--admin-tokens",
                "alice:s3cr3t-pw,bob",
            ],
            {},
        ),
        (["bridge", "status", "--legacy-db-url", "nodriver://u:s3cr3t-pw@db/x"], {}),
        (
            [
                "bridge",
                "status",
                "--legacy-db-url",
                "postgresql+psycopg://u:s3cr3t-pw@127.0.0.1:1/x",
            ],
            {},
        ),
        (["dlq", "list", "--broker-url", "amqp://u:s3cr3t-pw@127.0.0.1:1/"], {}),
        (["status", "--new-db-url", "postgresql+psycopg://u:s3cr3t-pw@127.0.0.1:1/x"], {}),
    ],
)
def test_no_command_prints_a_credential(args: list[str], env: dict[str, str]) -> None:
    import subprocess
    import sys

    environment = {
        k: v
        for k, v in os.environ.items()
        if k not in ("LEGACY_URL", "NEW_DB_URL", "LEGACY_DB_URL", "BROKER_URL")
    }
    environment.setdefault("NEW_DB_URL", "sqlite://")
    result = subprocess.run(
        [sys.executable, "-c", "from skeleton_app.composition.cli import main; main()", *args],
        env={**environment, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode != 0
    assert "s3cr3t" not in result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, result.stderr


# -- write groups -------------------------------------------------------------------------


def test_setting_a_write_route_moves_its_group_and_names_every_route_moved(
    runner: CliRunner, new_db_url: str
) -> None:
    result = runner.invoke(
        commands.routes,
        ["set", "POST", "/allocate", "canary", "30", "--force", "--reason", "first products"],
    )

    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "write group allocation -> canary 30 (ownership epoch 1, moving from legacy): "
        "moved 4 routes",
        "POST /allocate -> canary 30",
        "POST /batches -> canary 30",
        "PATCH /batches/<ref> -> canary 30",
        "POST /deallocate -> canary 30",
        "gate: forced past the gate: no decisions of write group allocation judged; "
        "needs >= 99.9% over >= 100 samples",
    ]
    listing = runner.invoke(commands.routes, ["list"]).output.splitlines()
    assert _row(listing, "PATCH", "/batches/<ref>")[2] == "canary:30"
    [group] = [line.split() for line in listing if line.startswith("allocation ")]
    assert group[:5] == ["allocation", "canary:30", "1", "moving", "(from"]
    listed = json.loads(runner.invoke(commands.routes, ["list", "--json"]).output)
    [route] = [r for r in listed["routes"] if r["pattern"] == "/deallocate"]
    assert route["group"] == "allocation"
    assert {k: route["ownership"][k] for k in ("rule", "previous_rule", "epoch", "state")} == {
        "rule": "canary 30",
        "previous_rule": "legacy",
        "epoch": 1,
        "state": "moving",
    }
    assert listed["groups"]["allocation"]["ownership"]["rule"] == "canary 30"
    assert len(listed["groups"]["allocation"]["routes"]) == 4


def test_a_write_route_cannot_be_set_to_aa_or_moved_past_the_gate_unforced(
    runner: CliRunner, new_db_url: str
) -> None:
    aa = runner.invoke(commands.routes, ["set", "POST", "/batches", "aa"], standalone_mode=False)
    gated = runner.invoke(
        commands.routes, ["set", "POST", "/batches", "new"], standalone_mode=False
    )

    assert isinstance(aa.exception, click.ClickException)
    assert "cannot be in aa: legacy would apply every write twice" in (
        aa.exception.format_message()
    )
    assert isinstance(gated.exception, click.ClickException)
    assert gated.exception.format_message().startswith(
        "refusing to move write group allocation to new: no decisions of write group "
        "allocation judged"
    )
    assert RouteTable(new_db_url).history() == []


def test_rolling_back_a_write_route_names_the_whole_group(
    runner: CliRunner, new_db_url: str
) -> None:
    runner.invoke(commands.routes, ["set", "POST", "/allocate", "shadow"])

    result = runner.invoke(commands.routes, ["rollback", "PATCH", "/batches/<ref>"])

    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "POST /allocate -> legacy",
        "POST /batches -> legacy",
        "PATCH /batches/<ref> -> legacy",
        "POST /deallocate -> legacy",
    ]


@pytest.mark.parametrize(
    "args",
    [
        ["rollback", "GET", "/allocation/<orderid>"],
        ["history", "GET", "/allocation/<orderid>"],
        ["mismatches", "GET", "/allocation/<orderid>"],
    ],
)
def test_a_pattern_the_table_does_not_know_is_an_error(
    runner: CliRunner, new_db_url: str, args: list[str]
) -> None:
    runner.invoke(commands.routes, ["set", "GET", ROUTE, "shadow"])

    result = runner.invoke(commands.routes, args, standalone_mode=False)

    assert isinstance(result.exception, click.ClickException)
    message = result.exception.format_message()
    assert message.startswith("unknown route GET '/allocation/<orderid>' (known: ")
    assert f"GET {ROUTE}" in message and "POST /allocate" in message
    assert "\n" not in message
    assert RouteTable(new_db_url).get("GET", ROUTE).mode is Mode.SHADOW


def test_a_deleted_route_still_has_its_history(runner: CliRunner) -> None:
    runner.invoke(commands.routes, ["set", "POST", "/orders", "aa"])
    runner.invoke(commands.routes, ["delete", "POST", "/orders", "--reason", "gone"])

    result = runner.invoke(commands.routes, ["history", "POST", "/orders"])

    assert result.exit_code == 0, result.output
    assert [line.split()[4] for line in result.output.splitlines()[1:]] == ["aa", "deleted"]


def test_after_a_rollback_the_gate_counts_only_fresh_shadow_samples(
    runner: CliRunner, new_db_url: str
) -> None:
    gate = ["--min-parity", "95", "--min-samples", "10"]
    runner.invoke(commands.routes, ["set", "GET", ROUTE, "shadow"])
    _write_results(new_db_url, {"match": 20})
    assert (
        runner.invoke(commands.routes, ["set", "GET", ROUTE, "canary", "10", *gate]).exit_code == 0
    )
    runner.invoke(commands.routes, ["rollback", "GET", ROUTE, "--reason", "incident"])
    runner.invoke(commands.routes, ["set", "GET", ROUTE, "shadow"])

    stale = runner.invoke(
        commands.routes, ["set", "GET", ROUTE, "new", *gate], standalone_mode=False
    )

    assert isinstance(stale.exception, click.ClickException)
    message = stale.exception.format_message()
    assert message.startswith(f"refusing to serve GET {ROUTE} from new: no shadow samples in ")
    assert "since the move back to legacy at " in message

    def shown() -> int:
        listed = json.loads(runner.invoke(commands.routes, ["list", "--json"]).output)
        [route] = [r for r in listed["routes"] if r["pattern"] == ROUTE]
        return int(route["parity"]["samples"])

    assert shown() == 0  # what routes list shows is what the gate counts
    _write_results(new_db_url, {"match": 10})
    assert shown() == 10
    fresh = runner.invoke(commands.routes, ["set", "GET", ROUTE, "new", *gate])
    assert fresh.exit_code == 0, fresh.output
    assert fresh.output.splitlines()[1].startswith(
        "gate: shadow parity 100.00% over 10 samples in the last 24 h (newest 10000 samples) "
        "since the move back to legacy at "
    )


def test_serve_and_legacy_serve_take_their_ports_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, new_db_url: str
) -> None:
    from examples.legacy_shop import legacy_cli

    monkeypatch.setenv("FACADE_PORT", "8123")
    monkeypatch.setenv("LEGACY_PORT", "8124")
    monkeypatch.setenv("LEGACY_URL", "http://127.0.0.1:8124")
    monkeypatch.setenv("NEW_DB_URL", new_db_url)
    monkeypatch.setenv("LEGACY_DB_URL", "sqlite://")

    facade = commands.serve.make_context("serve", [])
    legacy = legacy_cli.commands["serve"].make_context("serve", [])

    assert facade.params["port"] == 8123
    assert legacy.params["port"] == 8124
    assert "(env FACADE_PORT)" in commands.serve.get_help(facade)
