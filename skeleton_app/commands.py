"""The facade's commands: ``strangler serve`` and ``strangler routes list|set|history``.

``demo`` (defined in ``skeleton_app.demo``) is re-exported with them for the root CLI.
"""

from __future__ import annotations

import getpass
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from functools import partial

import click
from flask import Flask
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from skeleton_app.app import create_app
from skeleton_app.demo import demo
from skeleton_app.patterns import RouteError
from skeleton_app.proxy import validate_base_url
from skeleton_app.routes_table import RouteTable
from skeleton_app.server import FacadeServer, gunicorn_options

__all__ = ["demo", "routes", "serve"]


def _check_db_url(ctx: click.Context, param: click.Parameter, value: str) -> str:
    try:
        make_url(value)
    except ArgumentError:
        raise click.BadParameter(f"not a database URL: {value!r}") from None
    return value


def _check_legacy_url(ctx: click.Context, param: click.Parameter, value: str) -> str:
    try:
        validate_base_url(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    return value


new_db_url_option = click.option(
    "--new-db-url",
    envvar="NEW_DB_URL",
    required=True,
    callback=_check_db_url,
    help="The new system's database (env NEW_DB_URL).",
)


@click.command()
@click.option("--port", type=click.IntRange(0, 65535), required=True, help="Port to listen on.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True,
              help="Worker processes.")
@click.option("--threads", type=click.IntRange(min=1), default=8, show_default=True,
              help="Threads per worker.")
@click.option("--legacy-url", envvar="LEGACY_URL", required=True, callback=_check_legacy_url,
              help="Base URL of the legacy system (env LEGACY_URL).")
@new_db_url_option
@click.option("--upstream-timeout", type=click.FloatRange(min=0, min_open=True), default=10.0,
              show_default=True, help="Seconds to wait for the legacy system.")
@click.option("--refresh-interval", type=click.FloatRange(min=0), default=1.0,
              show_default=True, help="Seconds between route table reloads.")
def serve(
    port: int,
    host: str,
    workers: int,
    threads: int,
    legacy_url: str,
    new_db_url: str,
    upstream_timeout: float,
    refresh_interval: float,
) -> None:
    """Run the strangler facade (gunicorn); stops cleanly on SIGTERM/SIGINT."""
    factory = partial(_build_app, legacy_url, new_db_url, upstream_timeout, refresh_interval)
    options = gunicorn_options(host, port, workers, threads, upstream_timeout)
    FacadeServer(factory, options).run()


def _build_app(
    legacy_url: str, new_db_url: str, upstream_timeout: float, refresh_interval: float
) -> Flask:
    table = RouteTable(new_db_url, refresh_interval=refresh_interval)
    return create_app(legacy_url, new_db_url, route_table=table, upstream_timeout=upstream_timeout)


@click.group()
def routes() -> None:
    """See and change which system serves each route."""


@routes.command("list")
@new_db_url_option
def list_routes(new_db_url: str) -> None:
    """Show every route and who serves it (movable routes never set show as legacy)."""
    with _route_table(new_db_url) as table:
        rows = [
            (r.method, r.pattern, r.mode.value, _when(r.updated_at), r.updated_by or "-",
             r.reason or "-")
            for r in table.list()
        ]
    _print_table(("METHOD", "PATTERN", "MODE", "UPDATED_AT", "BY", "REASON"), rows)


@routes.command("set")
@click.argument("method")
@click.argument("pattern")
@click.argument("mode", metavar="MODE")
@click.option("--reason", default="", help="Why (kept in the audit trail).")
@click.option("--by", "by", default=lambda: _current_user(), show_default="$USER",
              help="Who makes the change.")
@new_db_url_option
def set_route(method: str, pattern: str, mode: str, reason: str, by: str, new_db_url: str) -> None:
    """Serve METHOD PATTERN (e.g. GET /allocations/<orderid>) in MODE (legacy or new)."""
    with _route_table(new_db_url) as table:
        route = table.set(method, pattern, mode, by=by, reason=reason)
    click.echo(f"{route.method} {route.pattern} -> {route.mode.value}")


@routes.command("history")
@click.argument("method", required=False)
@click.argument("pattern", required=False)
@new_db_url_option
def route_history(method: str | None, pattern: str | None, new_db_url: str) -> None:
    """Show the audit trail of route changes, oldest first."""
    with _route_table(new_db_url) as table:
        rows = [
            (_when(e.at), e.method, e.pattern, e.from_mode or "-", e.to_mode, e.by,
             e.reason or "-")
            for e in table.history(method, pattern)
        ]
    _print_table(("AT", "METHOD", "PATTERN", "FROM", "TO", "BY", "REASON"), rows)


@contextmanager
def _route_table(new_db_url: str) -> Iterator[RouteTable]:
    table = RouteTable(new_db_url)
    try:
        yield table
    except RouteError as exc:
        raise click.ClickException(str(exc)) from None
    except SQLAlchemyError as exc:
        shown = make_url(new_db_url).render_as_string(hide_password=True)
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise click.ClickException(
            f"cannot use the route table in {shown} (is it migrated? "
            f"run 'strangler db upgrade'): {first_line}"
        ) from None
    finally:
        table.close()


def _current_user() -> str:
    try:
        return os.environ.get("USER") or getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _when(value: datetime | None) -> str:
    return "-" if value is None else value.isoformat(timespec="seconds")


def _print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        cells = (str(cell).ljust(width) for cell, width in zip(row, widths, strict=True))
        click.echo("  ".join(cells).rstrip())
