"""``strangler bridge``: install change capture and run the relay."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

import click
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from broker import Broker, BrokerError, connect, is_in_process
from legacy_bridge.errors import BridgeError
from legacy_bridge.installer import DEFAULT_TABLES, install
from legacy_bridge.relay import DEFAULT_BATCH_SIZE, DEFAULT_EXCHANGE, Relay

log = logging.getLogger("legacy_bridge")

_LEGACY_DB_URL = click.option(
    "--legacy-db-url",
    envvar="LEGACY_DB_URL",
    required=True,
    help="SQLAlchemy URL of the legacy database [env LEGACY_DB_URL].",
)


@click.group()
def bridge() -> None:
    """Capture legacy database changes and relay them to the broker."""


@bridge.command("install")
@click.option(
    "--tables",
    default=None,
    metavar="T1,T2",
    help=f"Comma-separated tables to capture [default: {','.join(DEFAULT_TABLES)}].",
)
@click.option(
    "--server-name",
    default="legacy",
    show_default=True,
    help="Name stamped on events as source.name.",
)
@_LEGACY_DB_URL
def install_command(tables: str | None, server_name: str, legacy_db_url: str) -> None:
    """Install (or refresh) capture triggers; pending changes and checkpoint are kept."""
    names = None
    if tables is not None:
        names = [name.strip() for name in tables.split(",") if name.strip()]
        if not names:
            raise click.UsageError("--tables names no table")
    try:
        result = install(legacy_db_url, names, server_name=server_name)
    except BridgeError as error:
        raise click.ClickException(str(error)) from error
    except SQLAlchemyError as error:
        raise click.ClickException(_database_error(error)) from error
    verb = "installed" if result.created else "refreshed"
    click.echo(
        f"{verb} change capture in {result.connector} database {result.database!r} "
        f"(install id {result.install_id}, server name {result.server_name!r})"
    )
    for table in result.tables:
        click.echo(
            f"  {table.name}: primary key ({', '.join(table.primary_key)}), "
            f"triggers {', '.join(table.triggers)}"
        )


@bridge.command("run")
@_LEGACY_DB_URL
@click.option(
    "--broker-url",
    envvar="BROKER_URL",
    required=True,
    help="amqp:// URL of RabbitMQ [env BROKER_URL].",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=DEFAULT_BATCH_SIZE,
    show_default=True,
    help="Changes published (and confirmed) per batch.",
)
@click.option(
    "--poll-interval",
    type=click.FloatRange(min=0.0),
    default=0.2,
    show_default=True,
    help="Seconds to wait when nothing is pending.",
)
@click.option(
    "--exchange",
    default=DEFAULT_EXCHANGE,
    show_default=True,
    help="Topic exchange to publish to (its alternate exchange is <exchange>.unrouted).",
)
@click.option("--once", is_flag=True, help="Publish what is pending now, then exit.")
def run_command(
    legacy_db_url: str,
    broker_url: str,
    batch_size: int,
    poll_interval: float,
    exchange: str,
    once: bool,
) -> None:
    """Relay captured changes to the legacy.cdc exchange until SIGTERM/SIGINT."""
    if is_in_process(broker_url):
        raise click.ClickException(
            "--broker-url memory:// only reaches this process: use an amqp:// URL "
            "(or 'strangler demo' for the embedded setup)"
        )
    if not broker_url.startswith(("amqp://", "amqps://")):
        raise click.UsageError("--broker-url must be an amqp:// or amqps:// URL")

    def broker_factory() -> Broker:
        return connect(broker_url)

    try:
        relay = Relay(
            legacy_db_url,
            broker_factory=broker_factory,
            batch_size=batch_size,
            exchange=exchange,
        )
    except (ArgumentError, ImportError) as error:
        raise click.ClickException(f"invalid --legacy-db-url: {error}") from error
    try:
        if once:
            published = _drain(relay)
            click.echo(f"published {published} change{'' if published == 1 else 's'}")
        else:
            _run_until_signalled(relay, poll_interval)
    except BridgeError as error:
        raise click.ClickException(str(error)) from error
    except BrokerError as error:
        raise click.ClickException(f"broker: {_first_line(error)}") from error
    except SQLAlchemyError as error:
        raise click.ClickException(_database_error(error)) from error
    finally:
        relay.close()


def _drain(relay: Relay) -> int:
    total = 0
    while published := relay.run_once():
        total += published
    return total


def _run_until_signalled(relay: Relay, poll_interval: float) -> None:
    stop = threading.Event()
    with _stop_on_signals(stop):
        log.info("relaying captured changes to exchange %r", relay.exchange)
        relay.run(stop, poll_interval=poll_interval)
    log.info("relay stopped after publishing %d changes", relay.throughput.total)


@contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGTERM and SIGINT set ``stop``: the batch in flight finishes, then the loop ends."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(signum: int, _frame: FrameType | None) -> None:
        log.info("%s received: stopping after the current batch", signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _database_error(error: SQLAlchemyError) -> str:
    return f"legacy database: {_first_line(getattr(error, 'orig', None) or error)}"


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]
