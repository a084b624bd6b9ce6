"""``strangler legacy``: run the stand-in legacy shop."""

from __future__ import annotations

import click
from sqlalchemy.exc import ArgumentError, DBAPIError, SQLAlchemyError

from examples.legacy_shop import server


@click.group()
def legacy() -> None:
    """The stand-in legacy shop."""


@legacy.command()
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    envvar="LEGACY_PORT",
    required=True,
    help="Port to listen on (env LEGACY_PORT).",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=4, show_default=True)
@click.option(
    "--legacy-db-url",
    envvar="LEGACY_DB_URL",
    required=True,
    help="SQLAlchemy URL of the shop's database (env LEGACY_DB_URL).",
)
def serve(port: int, host: str, workers: int, threads: int, legacy_db_url: str) -> None:
    """Serve the shop's HTTP API under gunicorn until SIGTERM/SIGINT."""
    try:
        server.prepare_database(legacy_db_url)
    except ArgumentError as exc:
        raise click.BadParameter(str(exc), param_hint="--legacy-db-url") from None
    except SQLAlchemyError as exc:
        cause = exc.orig if isinstance(exc, DBAPIError) else exc
        message = " ".join(str(cause).split())
        raise click.ClickException(f"cannot prepare the legacy database: {message}") from None
    server.serve(legacy_db_url, host, port, workers, threads)
