"""The facade's commands: ``strangler serve`` and ``strangler routes ...``
(``list``, ``set``, ``delete``, ``history``, ``mismatches``, ``rollback``).

No command prints a credential: URLs in errors have their password masked, and text read
from the database (reasons, names, paths, diffs) is printed escaped, so stored CR/LF or
terminal escape codes cannot forge lines.

The root command (:mod:`skeleton_app.composition.cli`) adds them.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime
from functools import partial
from typing import Any

import click
from flask import Flask
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

from new_domain import DEFAULT_QUEUE, schema_problem
from skeleton_app.admin import audit_json, ownership_json, result_json, route_json
from skeleton_app.app import create_app, on_close
from skeleton_app.dataplane import (
    METRICS_SOCKET_ENV,
    DataPlaneRouting,
    HAProxyPlane,
    data_plane_options,
    serve_facade,
)
from skeleton_app.errors import printable
from skeleton_app.gate import CutoverGate
from skeleton_app.metrics import MULTIPROC_ENV, use_multiprocess_values
from skeleton_app.operations import Operations, OperationsOpener
from skeleton_app.patterns import RouteError
from skeleton_app.proxy import validate_base_url
from skeleton_app.read_model import decision_parity_of, open_new_read_model
from skeleton_app.routes_table import RouteTable, Routing
from skeleton_app.server import FacadeServer, gunicorn_options
from skeleton_app.settings import FacadeSettings
from skeleton_app.shadow_results import AA, SHADOW, Parity, ShadowResults, Window
from skeleton_app.write_path import Ownership, WritePathPort

__all__ = ["OPERATIONS", "WRITE_PATH", "WritePathOpener", "routes", "serve"]

WritePathOpener = Callable[[str], WritePathPort]
"""``open_write_path(new_db_url)``: the new system's write path, opened in each worker."""

WRITE_PATH = "strangler.open_write_path"
"""Key of click's context ``meta`` where the composition root puts its
:data:`WritePathOpener`; ``strangler serve`` hands each worker's facade the write path it
opens (without one, write groups cannot serve past shadow)."""

OPERATIONS = "strangler.open_operations"
"""Key of click's context ``meta`` where the composition root puts its
:data:`~skeleton_app.operations.OperationsOpener`; ``strangler serve`` hands each worker's
facade the pipeline's operations (the console's and the admin API's view of the bridge,
queue, dead letters and anomalies; without it those endpoints answer 503)."""


def mask_url(url: str) -> str:
    """``url`` with the password (``scheme://user:password@host``) replaced by ``***``."""
    return _PASSWORD.sub(r"\1***@", url)


_PASSWORD = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^/?#@\s:]*:)[^/?#\s]*@")


def _check_db_url(ctx: click.Context, param: click.Parameter, value: str) -> str:
    try:
        make_url(value).get_dialect()
    except ArgumentError:
        raise click.BadParameter(f"not a database URL: {printable(mask_url(value))!r}") from None
    except NoSuchModuleError:
        raise click.BadParameter(f"no database driver for {printable(mask_url(value))!r}") from None
    return value


def _check_legacy_url(ctx: click.Context, param: click.Parameter, value: str) -> str:
    try:
        validate_base_url(value)
    except ValueError:
        raise click.BadParameter(
            f"legacy URL must be http(s)://host[:port][/path] (no user, password, query or "
            f"fragment), got {printable(mask_url(value))!r}"
        ) from None
    return value


def _admin_tokens(
    ctx: click.Context, param: click.Parameter, value: str | None
) -> tuple[tuple[str, str], ...]:
    """``name:token,name:token`` -> pairs; an error never repeats a token."""
    pairs: list[tuple[str, str]] = []
    for number, item in enumerate((value or "").split(","), start=1):
        if not item.strip():
            continue
        name, separator, token = item.strip().partition(":")
        if not separator or not _TOKEN_NAME.fullmatch(name) or not token:
            raise click.BadParameter(
                f"entry {number} is not name:token (name: letters, digits, . _ @ -, at most 64)"
            )
        if name in dict(pairs):
            raise click.BadParameter(f"the name {name!r} is given twice")
        pairs.append((name, token))
    return tuple(pairs)


_TOKEN_NAME = re.compile(r"[A-Za-z0-9._@-]{1,64}")


new_db_url_option = click.option(
    "--new-db-url",
    envvar="NEW_DB_URL",
    required=True,
    callback=_check_db_url,
    help="The new system's database (env NEW_DB_URL).",
)


def gate_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The cutover gate's thresholds and the parity window (for ``serve`` and ``routes``)."""
    options = [
        click.option(
            "--min-parity",
            type=click.FloatRange(0, 100),
            default=99.9,
            show_default=True,
            help="Shadow parity (%) a route needs to go to new.",
        ),
        click.option(
            "--min-samples",
            type=click.IntRange(min=0),
            default=100,
            show_default=True,
            help="Shadow comparisons a route needs to go to new.",
        ),
        click.option(
            "--parity-window",
            type=click.FloatRange(min=1),
            default=86400.0,
            show_default=True,
            help="Seconds of shadow results that count.",
        ),
        click.option(
            "--parity-samples",
            type=click.IntRange(min=1),
            default=10000,
            show_default=True,
            help="At most this many newest results count (and are kept) per route.",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _gate(
    min_parity: float, min_samples: int, parity_window: float, parity_samples: int
) -> CutoverGate:
    return CutoverGate(min_parity, min_samples, Window(parity_window, parity_samples))


@click.command()
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    envvar="FACADE_PORT",
    required=True,
    help="Port to listen on (env FACADE_PORT).",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option(
    "--workers", type=click.IntRange(min=1), default=2, show_default=True, help="Worker processes."
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=8,
    show_default=True,
    help="Threads per worker.",
)
@click.option(
    "--legacy-url",
    envvar="LEGACY_URL",
    required=True,
    callback=_check_legacy_url,
    help="Base URL of the legacy system (env LEGACY_URL).",
)
@new_db_url_option
@click.option(
    "--upstream-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=10.0,
    show_default=True,
    help="Seconds to wait for the legacy system.",
)
@click.option(
    "--new-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=2.0,
    show_default=True,
    help="Seconds to wait for the new system before legacy answers instead.",
)
@click.option(
    "--max-lag",
    type=click.FloatRange(min=0),
    default=15.0,
    show_default=True,
    help="Above this end-to-end lag (s), new and canary routes serve from legacy.",
)
@click.option("--no-lag-guard", is_flag=True, help="Never fall back because of lag.")
@click.option(
    "--refresh-interval",
    type=click.FloatRange(min=0),
    default=1.0,
    show_default=True,
    help="Seconds between route table reloads.",
)
@click.option(
    "--shadow-queue-size",
    type=click.IntRange(min=1),
    default=1000,
    show_default=True,
    help="Comparisons waiting per worker; beyond, dropped.",
)
@click.option(
    "--shadow-sample-rate",
    type=click.FloatRange(0, 1),
    default=1.0,
    show_default=True,
    help="Share of shadowed requests compared (routes may override it).",
)
@click.option(
    "--shadow-max-body",
    type=click.IntRange(min=0),
    default=1024 * 1024,
    show_default=True,
    help="Bytes of body kept for a comparison; larger ones are not compared.",
)
@click.option(
    "--admin-token",
    envvar="ADMIN_TOKEN",
    default=None,
    help="Shared bearer token of the admin API under /_strangler/ (env "
    "ADMIN_TOKEN); the audit records it as 'shared token'. Without any token the "
    "admin API is off.",
)
@click.option(
    "--admin-tokens",
    envvar="ADMIN_TOKENS",
    default=None,
    callback=_admin_tokens,
    metavar="NAME:TOKEN,...",
    help="Named bearer tokens, one per operator (env ADMIN_TOKENS); the audit records the name.",
)
@click.option(
    "--broker-url",
    envvar="BROKER_URL",
    default=None,
    help="amqp:// URL of RabbitMQ (env BROKER_URL): the console and the admin API show "
    "the consumer's queue and dead letters, and replay them.",
)
@click.option(
    "--queue",
    default=DEFAULT_QUEUE,
    show_default=True,
    help="The consumer's queue (its dead letters: <queue>.dlq).",
)
@click.option(
    "--legacy-db-url",
    envvar="LEGACY_DB_URL",
    default=None,
    help="The legacy database (env LEGACY_DB_URL): the console and the admin API show the "
    "bridge's position and pending changes.",
)
@click.option(
    "--lag-sample-interval",
    type=click.FloatRange(min=0),
    default=10.0,
    show_default=True,
    help="Seconds between the end-to-end lag samples kept for the console's chart (0: none).",
)
@gate_options
@data_plane_options
def serve(
    port: int,
    host: str,
    workers: int,
    threads: int,
    legacy_url: str,
    new_db_url: str,
    upstream_timeout: float,
    new_timeout: float,
    max_lag: float,
    no_lag_guard: bool,
    refresh_interval: float,
    shadow_queue_size: int,
    shadow_sample_rate: float,
    shadow_max_body: int,
    admin_token: str | None,
    admin_tokens: tuple[tuple[str, str], ...],
    broker_url: str | None,
    queue: str,
    legacy_db_url: str | None,
    lag_sample_interval: float,
    min_parity: float,
    min_samples: int,
    parity_window: float,
    parity_samples: int,
    data_plane: HAProxyPlane | None,
) -> None:
    """Run the strangler facade (gunicorn); stops cleanly on SIGTERM/SIGINT.

    Metrics of all workers are served at /metrics (prometheus_client multiprocess mode, in
    PROMETHEUS_MULTIPROC_DIR or a temporary folder removed at exit).
    """
    settings = FacadeSettings(
        upstream_timeout=upstream_timeout,
        new_timeout=new_timeout,
        max_lag=None if no_lag_guard else max_lag,
        shadow_queue_size=shadow_queue_size,
        shadow_sample_rate=shadow_sample_rate,
        shadow_max_body=shadow_max_body,
        admin_token=admin_token or None,
        admin_tokens=admin_tokens,
        gate=_gate(min_parity, min_samples, parity_window, parity_samples),
        new_workers=threads,
        lag_sample_interval=lag_sample_interval,
    )
    meta = click.get_current_context().meta
    opener = meta.get(WRITE_PATH)
    operations_opener: OperationsOpener | None = meta.get(OPERATIONS)
    operations = (
        None
        if operations_opener is None
        else partial(operations_opener, new_db_url, broker_url or None, queue, legacy_db_url)
    )
    factory = partial(
        _build_app, legacy_url, new_db_url, settings, refresh_interval, opener, operations
    )
    options = gunicorn_options(host, port, workers, threads, upstream_timeout)
    with _metrics_folder():
        serve_facade(
            data_plane,
            lambda opts: FacadeServer(factory, opts).run(),
            options,
            host=host,
            port=port,
            concurrency=workers * threads,
            upstream_timeout=upstream_timeout,
            new_timeout=new_timeout,
            routing=_data_plane_routing(legacy_url, new_db_url, refresh_interval),
        )


class _TableReader:
    """Reads how every route is served from the route table's database, for the data
    plane; the table is opened on first use and closed by ``close``."""

    def __init__(self, new_db_url: str) -> None:
        self._new_db_url = new_db_url
        self._table: RouteTable | None = None

    def __call__(self) -> Routing:
        if self._table is None:
            self._table = RouteTable(self._new_db_url)
        return self._table.read_routing()

    def close(self) -> None:
        if self._table is not None:
            self._table.close()
            self._table = None


def _data_plane_routing(
    legacy_url: str, new_db_url: str, refresh_interval: float
) -> DataPlaneRouting:
    """The data plane reads the table twice per refresh interval (at most every 0.5 s,
    so a change reaches HAProxy within a second; at least every 0.1 s)."""
    reader = _TableReader(new_db_url)
    return DataPlaneRouting(
        legacy_url,
        reader,
        interval=min(max(refresh_interval / 2, 0.1), 0.5),
        close=reader.close,
    )


@contextmanager
def _metrics_folder() -> Iterator[None]:
    """A fresh PROMETHEUS_MULTIPROC_DIR for the workers, unless one is set already."""
    if os.environ.get(MULTIPROC_ENV):
        yield
        return
    folder = tempfile.mkdtemp(prefix="strangler-metrics-")
    os.environ[MULTIPROC_ENV] = folder
    try:
        yield
    finally:
        os.environ.pop(MULTIPROC_ENV, None)
        shutil.rmtree(folder, ignore_errors=True)


def _build_app(
    legacy_url: str,
    new_db_url: str,
    settings: FacadeSettings,
    refresh_interval: float,
    open_write_path: WritePathOpener | None,
    open_operations: Callable[[], Operations] | None = None,
) -> Flask:
    use_multiprocess_values()
    metrics_socket = os.environ.get(METRICS_SOCKET_ENV)
    if metrics_socket:  # behind the data plane: its metrics join /metrics
        settings = replace(settings, data_plane_metrics=metrics_socket)
    table = RouteTable(new_db_url, refresh_interval=refresh_interval, gate=settings.gate)
    write_path = None if open_write_path is None else open_write_path(new_db_url)
    operations = None if open_operations is None else open_operations()
    app = create_app(
        legacy_url,
        new_db_url,
        route_table=table,
        settings=settings,
        write_path=write_path,
        operations=operations,
    )
    if write_path is not None:
        on_close(app, write_path.close)
    if operations is not None:
        on_close(app, operations.close)
    return app


@click.group()
def routes() -> None:
    """See and change which system serves each route; parity, audit and rollback."""


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


@routes.command("list", short_help="Show every route, its mode, parity and A/A noise.")
@new_db_url_option
@json_option
@gate_options
def list_routes(new_db_url: str, as_json: bool, **gate: Any) -> None:
    """Show every route, who serves it, its shadow parity and A/A noise over the window."""
    with _route_table(new_db_url, _gate(**gate)) as (table, results):
        shadow = results.parity_by_route(SHADOW, fresh_since=table.moves_to_legacy())
        noise = results.parity_by_route(AA)
        listed = table.list()
        groups = table.groups
        ownerships = _ownerships(table)
    decisions = _decision_parity(new_db_url)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "routes": [
                        route_json(
                            r,
                            shadow.get((r.method, r.pattern), Parity()),
                            noise.get((r.method, r.pattern), Parity()),
                            None if r.group is None else ownerships.get(r.group),
                        )
                        for r in listed
                    ],
                    "groups": {
                        name: {
                            "routes": [{"method": m, "pattern": p} for m, p in group.routes],
                            "ownership": (
                                ownership_json(ownerships[name]) if name in ownerships else None
                            ),
                        }
                        for name, group in sorted(groups.items())
                    },
                    "decision_parity": decisions,
                },
                indent=2,
            )
        )
        return
    rows = []
    for r in listed:
        parity = shadow.get((r.method, r.pattern), Parity())
        aa = noise.get((r.method, r.pattern), Parity())
        rows.append(
            (
                r.method,
                r.pattern,
                r.setting.replace(" ", ":"),
                _pct(parity),
                str(parity.samples),
                _pct(aa),
                r.options.describe().replace(" ", ","),
                _when(r.updated_at),
                r.updated_by or "-",
                r.reason or "-",
            )
        )
    _print_table(
        (
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
        ),
        rows,
    )
    if groups:
        click.echo("")
        _print_table(
            ("WRITE GROUP", "OWNERSHIP", "EPOCH", "STATE", "CHANGED_AT", "ROUTES"),
            [
                _group_row(name, group.routes, ownerships.get(name))
                for name, group in sorted(groups.items())
            ],
        )
    written = [(route, d) for route, d in decisions.items() if route != "unclassified"]
    if written:
        click.echo("")
        _print_table(
            ("WRITE ROUTE", "DECISION PARITY", "SAMPLES", "DIFFER"),
            [
                (
                    route,
                    f"{d['percent']:.2f}%" if d["samples"] else "-",
                    str(d["samples"]),
                    str(d["differ"]),
                )
                for route, d in written
            ],
        )
        unclassified = decisions.get("unclassified", {}).get("differ", 0)
        click.echo(
            f"unclassified legacy transactions: {unclassified}"
            " (differences: strangler decisions list)"
        )


def _ownerships(table: RouteTable) -> dict[str, Ownership]:
    """Every write group's ownership; empty (and one log line) when it cannot be read."""
    if not table.groups:
        return {}
    try:
        return table.ownerships()
    except SQLAlchemyError as exc:  # the routes are still worth showing
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        logging.getLogger(__name__).warning("write ownership unavailable: %s", printable(reason))
        return {}


def _group_row(
    name: str, routes: Sequence[tuple[str, str]], ownership: Ownership | None
) -> tuple[str, ...]:
    shown = ", ".join(f"{m} {p}" for m, p in routes)
    if ownership is None:
        return (name, "?", "?", "?", "-", shown)
    state = str(ownership.state)
    if ownership.previous_rule is not None:
        state = f"{state} (from {ownership.previous_rule})"
    return (
        name,
        str(ownership.rule).replace(" ", ":"),
        str(ownership.epoch),
        state,
        _when(ownership.changed_at),
        shown,
    )


def _decision_parity(new_db_url: str) -> dict[str, dict[str, Any]]:
    """Decision parity per write route, as the consumer judged legacy's decisions."""
    read_model = open_new_read_model(new_db_url)
    try:
        return decision_parity_of(read_model)
    except SQLAlchemyError as exc:  # the routes are still worth showing
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        logging.getLogger(__name__).warning("decision parity unavailable: %s", printable(reason))
        return {}
    finally:
        read_model.close()


@routes.command("set", short_help="Set a route's mode (legacy, aa, shadow, canary N, new).")
@click.argument("method")
@click.argument("pattern")
@click.argument("mode", metavar="MODE")
@click.argument("percent", metavar="[PERCENT]", required=False)
@click.option("--reason", default="", help="Why (kept in the audit trail).")
@click.option(
    "--by",
    "by",
    default=lambda: _current_user(),
    show_default="$USER",
    help="Who makes the change.",
)
@click.option(
    "--force",
    is_flag=True,
    help="Let new answer clients (canary N, new) even though the cutover gate "
    "refuses, or with thresholds below its floor; needs --reason, audited as "
    "forced.",
)
@click.option(
    "--allow-mutating-shadow/--no-allow-mutating-shadow",
    default=None,
    help="Shadow POST/PUT/PATCH/DELETE too (their side effects happen twice).",
)
@click.option(
    "--ignore-field",
    "ignore_fields",
    multiple=True,
    metavar="NAME",
    help="JSON field left out of comparisons (repeat; replaces the list).",
)
@click.option("--no-ignore-fields", is_flag=True, help="Compare every field again.")
@click.option(
    "--unordered-lists/--ordered-lists",
    default=None,
    help="Compare JSON lists regardless of order.",
)
@click.option(
    "--canary-key",
    default=None,
    metavar="KEY",
    help="What keeps a client on one side: path (default), path:NAME, header:NAME, "
    "query:NAME or cookie:NAME.",
)
@click.option(
    "--sample-rate",
    type=click.FloatRange(0, 1),
    default=None,
    help="Share of this route's requests compared (default: the facade's).",
)
@new_db_url_option
@gate_options
def set_route(
    method: str,
    pattern: str,
    mode: str,
    percent: str | None,
    reason: str,
    by: str,
    force: bool,
    allow_mutating_shadow: bool | None,
    ignore_fields: tuple[str, ...],
    no_ignore_fields: bool,
    unordered_lists: bool | None,
    canary_key: str | None,
    sample_rate: float | None,
    new_db_url: str,
    **gate: Any,
) -> None:
    """Serve METHOD PATTERN (e.g. GET /allocations/<orderid>) in MODE: legacy, aa, shadow,
    canary PERCENT or new. A move to new needs the shadow parity the gate asks for."""
    if ignore_fields and no_ignore_fields:
        raise click.UsageError("--ignore-field and --no-ignore-fields exclude each other")
    changes: dict[str, Any] = {}
    if allow_mutating_shadow is not None:
        changes["allow_mutating_shadow"] = allow_mutating_shadow
    if ignore_fields or no_ignore_fields:
        changes["ignore_fields"] = list(ignore_fields)
    if unordered_lists is not None:
        changes["unordered_lists"] = unordered_lists
    if canary_key is not None:
        changes["canary_key"] = canary_key
    if sample_rate is not None:
        changes["sample_rate"] = sample_rate
    with _route_table(new_db_url, _gate(**gate)) as (table, _):
        change = table.change(
            method,
            pattern,
            mode,
            by=by,
            reason=reason,
            percent=_percent_arg(percent),
            options=changes or None,
            force=force,
        )
        first = change.routes[0]
        entry = table.history(first.method, first.pattern)[-1]
    if change.group is not None and change.ownership is not None:
        ownership = change.ownership
        previous = ownership.previous_rule
        state = str(ownership.state) if previous is None else f"moving from {previous}"
        click.echo(
            f"write group {change.group} -> {first.setting} (ownership epoch "
            f"{ownership.epoch}, {state}): moved {len(change.routes)} routes"
        )
    for route in change.routes:
        click.echo(f"{route.method} {route.pattern} -> {route.setting}")
    if entry.gate:
        click.echo(f"gate: {entry.gate}")


def _percent_arg(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return float(value.rstrip("%"))
    except ValueError:
        raise click.BadParameter(f"not a percentage: {value!r}", param_hint="PERCENT") from None


@routes.command("delete", short_help="Delete a stored route (audited).")
@click.argument("method")
@click.argument("pattern")
@click.option("--reason", required=True, help="Why (kept in the audit trail).")
@click.option(
    "--by",
    "by",
    default=lambda: _current_user(),
    show_default="$USER",
    help="Who makes the change.",
)
@new_db_url_option
def delete_route(method: str, pattern: str, reason: str, by: str, new_db_url: str) -> None:
    """Delete the stored route METHOD PATTERN: its paths are then served like any other
    (from legacy). Also removes a route whose pattern is no longer accepted."""
    with _route_table(new_db_url) as (table, _):
        entry = table.delete(method, pattern, by=by, reason=reason)
    click.echo(
        f"{entry.method} {printable(entry.pattern)} deleted "
        f"(was {printable(entry.from_mode or '-')})"
    )


@routes.command("history", short_help="Show the audit trail of route changes.")
@click.argument("method", required=False)
@click.argument("pattern", required=False)
@new_db_url_option
@json_option
def route_history(method: str | None, pattern: str | None, new_db_url: str, as_json: bool) -> None:
    """Show the audit trail of route changes, oldest first (of METHOD PATTERN only, when
    given: a route the table does not know is an error)."""
    with _route_table(new_db_url) as (table, _):
        if method is not None and pattern is not None:
            table.require_known(method, pattern)
        entries = table.history(method, pattern)
    if as_json:
        click.echo(json.dumps({"entries": [audit_json(e) for e in entries]}, indent=2))
        return
    rows = [
        (
            _when(e.at),
            e.method,
            e.pattern,
            (e.from_mode or "-").replace(" ", ":"),
            e.to_mode.replace(" ", ":"),
            e.by,
            "yes" if e.forced else "no",
            e.reason or "-",
        )
        for e in entries
    ]
    _print_table(("AT", "METHOD", "PATTERN", "FROM", "TO", "BY", "FORCED", "REASON"), rows)


@routes.command("mismatches", short_help="Show a route's newest mismatches with diffs.")
@click.argument("method")
@click.argument("pattern")
@click.option("--aa", is_flag=True, help="A/A (legacy against itself) instead of shadow.")
@click.option("--limit", type=click.IntRange(1, 100), default=5, show_default=True)
@new_db_url_option
@json_option
@gate_options
def route_mismatches(
    method: str, pattern: str, aa: bool, limit: int, new_db_url: str, as_json: bool, **gate: Any
) -> None:
    """Show a route's parity and its newest mismatches and errors with their diffs."""
    kind = AA if aa else SHADOW
    method = method.upper()
    with _route_table(new_db_url, _gate(**gate)) as (table, results):
        method, pattern = table.require_known(method, pattern)
        fresh = table.last_move_to_legacy(method, pattern) if kind == SHADOW else None
        parity = results.parity(method, pattern, kind, after=fresh)
        found = results.recent(method, pattern, kind, limit=limit)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "method": method,
                    "pattern": pattern,
                    "kind": kind,
                    "parity": parity.to_dict(),
                    "mismatches": [result_json(r) for r in found],
                },
                indent=2,
            )
        )
        return
    click.echo(
        f"{method} {printable(pattern)} {kind}: {parity.describe()} "
        f"({parity.mismatches} mismatches, {parity.errors} errors)"
    )
    for r in found:
        new = "-" if r.new_status is None else f"{r.new_status} in {r.new_ms:.1f} ms"
        click.echo(
            f"\n#{r.id} {_when(r.at)} {r.outcome} {printable(r.path)}: legacy "
            f"{r.legacy_status} in {r.legacy_ms:.1f} ms, "
            f"{'legacy again' if aa else 'new'} {new}"
        )
        for line in (r.diff or "").split("\n"):
            if line:
                click.echo(f"    {printable(line, limit=10_000)}")


@routes.command("rollback", short_help="Serve a route, or every route, from legacy again.")
@click.argument("method", required=False)
@click.argument("pattern", required=False)
@click.option("--reason", default="", help="Why (kept in the audit trail).")
@click.option(
    "--by",
    "by",
    default=lambda: _current_user(),
    show_default="$USER",
    help="Who makes the change.",
)
@new_db_url_option
def rollback(
    method: str | None, pattern: str | None, reason: str, by: str, new_db_url: str
) -> None:
    """Serve METHOD PATTERN, or every route not on legacy, from legacy again (a route the
    table does not know is an error)."""
    if (method is None) != (pattern is None):
        raise click.UsageError("give METHOD and PATTERN, or neither for every route")
    with _route_table(new_db_url) as (table, _):
        wanted = None if method is None else [(method, pattern or "")]
        changed = table.rollback(by=by, reason=reason, routes=wanted)
    if not changed:
        click.echo("every route is already served by legacy")
    for route in changed:
        click.echo(f"{route.method} {route.pattern} -> legacy")


@contextmanager
def _route_table(
    new_db_url: str, gate: CutoverGate | None = None
) -> Iterator[tuple[RouteTable, ShadowResults]]:
    table = RouteTable(new_db_url, gate=gate)
    try:
        yield table, ShadowResults(table.engine, gate.window if gate else None)
    except RouteError as exc:
        raise click.ClickException(str(exc)) from None
    except SQLAlchemyError as exc:
        raise click.ClickException(_database_problem(table.engine, new_db_url, exc)) from None
    finally:
        table.close()


def _database_problem(engine: Engine, new_db_url: str, exc: SQLAlchemyError) -> str:
    """One line saying why the route table in ``new_db_url`` could not be used: the
    server cannot be reached (refused, unknown host, bad password ...), the database is
    not migrated, or else the error itself."""
    shown = make_url(new_db_url).render_as_string(hide_password=True)

    def first_line(error: BaseException) -> str:
        text = str(getattr(error, "orig", None) or error).strip()
        return printable(mask_url(text.splitlines()[0] if text else type(error).__name__))

    try:
        with engine.connect() as conn:
            problem = schema_problem(conn)
    except SQLAlchemyError as unreachable:
        return f"cannot reach the new database {shown}: {first_line(unreachable)}"
    if problem is not None:
        return f"the new database {shown} is {problem}"
    return f"cannot use the route table in {shown}: {first_line(exc)}"


def _pct(parity: Parity) -> str:
    return "-" if parity.percent is None else f"{int(parity.percent * 100) / 100:.2f}%"


def _current_user() -> str:
    try:
        return os.environ.get("USER") or getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _when(value: datetime | None) -> str:
    return "-" if value is None else value.isoformat(timespec="seconds")


def _print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    rows = [[printable(str(cell), limit=10_000) for cell in row] for row in rows]
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        cells = (str(cell).ljust(width) for cell, width in zip(row, widths, strict=True))
        click.echo("  ".join(cells).rstrip())
