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
from datetime import datetime
from functools import partial
from typing import Any

import click
from flask import Flask
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

from skeleton_app.admin import audit_json, result_json, route_json
from skeleton_app.app import create_app
from skeleton_app.dataplane import HAProxyPlane, data_plane_options, serve_facade
from skeleton_app.errors import printable
from skeleton_app.gate import CutoverGate
from skeleton_app.metrics import MULTIPROC_ENV, use_multiprocess_values
from skeleton_app.patterns import RouteError
from skeleton_app.proxy import validate_base_url
from skeleton_app.read_model import decision_parity_of, open_new_read_model
from skeleton_app.routes_table import RouteTable
from skeleton_app.server import FacadeServer, gunicorn_options
from skeleton_app.settings import FacadeSettings
from skeleton_app.shadow_results import AA, SHADOW, Parity, ShadowResults, Window

__all__ = ["routes", "serve"]


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
@click.option("--port", type=click.IntRange(0, 65535), required=True, help="Port to listen on.")
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
    )
    factory = partial(_build_app, legacy_url, new_db_url, settings, refresh_interval)
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
    legacy_url: str, new_db_url: str, settings: FacadeSettings, refresh_interval: float
) -> Flask:
    use_multiprocess_values()
    table = RouteTable(new_db_url, refresh_interval=refresh_interval, gate=settings.gate)
    return create_app(legacy_url, new_db_url, route_table=table, settings=settings)


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
        shadow = results.parity_by_route(SHADOW)
        noise = results.parity_by_route(AA)
        listed = table.list()
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
                        )
                        for r in listed
                    ],
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
        route = table.set(
            method,
            pattern,
            mode,
            by=by,
            reason=reason,
            percent=_percent_arg(percent),
            options=changes or None,
            force=force,
        )
        entry = table.history(route.method, route.pattern)[-1]
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
    """Show the audit trail of route changes, oldest first."""
    with _route_table(new_db_url) as (table, _):
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
    with _route_table(new_db_url, _gate(**gate)) as (_, results):
        parity = results.parity(method, pattern, kind)
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
    """Serve METHOD PATTERN, or every route not on legacy, from legacy again."""
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
        shown = make_url(new_db_url).render_as_string(hide_password=True)
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        first_line = printable(mask_url(first_line))
        raise click.ClickException(
            f"cannot use the route table in {shown} (is it migrated? "
            f"run 'strangler db upgrade'): {first_line}"
        ) from None
    finally:
        table.close()


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
