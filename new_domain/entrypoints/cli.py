"""``strangler db upgrade`` and ``strangler consume``."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

import click
from sqlalchemy.exc import SQLAlchemyError

import broker
from new_domain.adapters.database import safe_url
from new_domain.adapters.schema import pending_revisions, upgrade_database
from new_domain.bootstrap import bootstrap
from new_domain.entrypoints.consumer import (
    DEFAULT_EXCHANGE,
    DEFAULT_QUEUE,
    Consumer,
    DatabaseUnavailable,
)

logger = logging.getLogger(__name__)

new_db_url_option = click.option(
    "--new-db-url",
    envvar="NEW_DB_URL",
    required=True,
    help="SQLAlchemy URL of the new domain's database [env NEW_DB_URL].",
)


@click.group()
def db() -> None:
    """Manage the new domain's database."""


@db.command()
@new_db_url_option
def upgrade(new_db_url: str) -> None:
    """Migrate the new database to the latest revision."""
    try:
        upgrade_database(new_db_url)
    except SQLAlchemyError as error:
        raise click.ClickException(
            f"cannot upgrade {safe_url(new_db_url)}: {_first_line(error)}"
        ) from error
    click.echo(f"new database {safe_url(new_db_url)} is up to date")


@click.command()
@new_db_url_option
@click.option(
    "--broker-url",
    envvar="BROKER_URL",
    required=True,
    help="amqp:// URL of RabbitMQ [env BROKER_URL].",
)
@click.option("--queue", default=DEFAULT_QUEUE, show_default=True, help="Queue to consume.")
@click.option(
    "--exchange",
    default=DEFAULT_EXCHANGE,
    show_default=True,
    help="Topic exchange the legacy changes are published to.",
)
@click.option(
    "--batch-size",
    default=500,
    show_default=True,
    type=click.IntRange(1, 10_000),
    help="Changes applied per transaction.",
)
@click.option("--once", is_flag=True, help="Apply one batch (if any) and exit.")
def consume(
    new_db_url: str, broker_url: str, queue: str, exchange: str, batch_size: int, once: bool
) -> None:
    """Apply legacy change events from the broker to the new domain."""
    if broker.is_in_process(broker_url):
        raise click.UsageError(
            "--broker-url memory:// only reaches this process: use amqp://... "
            "(or `strangler demo` for the embedded setup)"
        )
    logging.getLogger("pika").setLevel(logging.WARNING)  # one line per connection is enough
    _require_current_schema(new_db_url)
    bus = bootstrap(new_db_url)
    consumer = Consumer(
        bus, lambda: broker.connect(broker_url), queue, exchange=exchange, batch_size=batch_size
    )
    try:
        if once:
            try:
                count = consumer.run_once()
            except (broker.BrokerError, DatabaseUnavailable) as error:
                raise click.ClickException(_first_line(error)) from error
            click.echo(f"processed {count} messages from {queue}")
            return
        stop = threading.Event()
        with _stop_on_signals(stop):
            logger.info("consuming %s into %s", queue, safe_url(new_db_url))
            consumer.run(stop)
        logger.info("consumer stopped")
    finally:
        consumer.close()
        bus.uow.close()


def _require_current_schema(new_db_url: str) -> None:
    try:
        current, heads = pending_revisions(new_db_url)
    except SQLAlchemyError as error:
        raise click.ClickException(
            f"cannot reach the new database {safe_url(new_db_url)}: {_first_line(error)}"
        ) from error
    if not heads <= current:
        raise click.ClickException(
            f"the new database {safe_url(new_db_url)} is not migrated "
            f"(at {', '.join(sorted(current)) or 'nothing'}): run `strangler db upgrade`"
        )


@contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGTERM/SIGINT set ``stop``: the consumer finishes its batch and returns."""

    def handle(signum: int, _frame: FrameType | None) -> None:
        logger.info("received %s; stopping after the current batch", signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
