"""Options and checks shared by the new domain's commands."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

import click
from sqlalchemy.exc import SQLAlchemyError

import broker
from new_domain.adapters.database import safe_url
from new_domain.adapters.schema import pending_revisions
from new_domain.entrypoints.consumer import DEFAULT_EXCHANGE, DEFAULT_QUEUE

logger = logging.getLogger(__name__)

new_db_url_option = click.option(
    "--new-db-url",
    envvar="NEW_DB_URL",
    required=True,
    help="SQLAlchemy URL of the new domain's database (env NEW_DB_URL).",
)

broker_url_option = click.option(
    "--broker-url",
    envvar="BROKER_URL",
    required=True,
    help="amqp:// URL of RabbitMQ (env BROKER_URL).",
)

queue_option = click.option(
    "--queue",
    default=DEFAULT_QUEUE,
    show_default=True,
    help="Queue of legacy changes (its dead letters: <queue>.dlq).",
)

exchange_option = click.option(
    "--exchange",
    default=DEFAULT_EXCHANGE,
    show_default=True,
    help="Topic exchange the legacy changes are published to.",
)


def require_amqp(broker_url: str) -> None:
    """Refuse the in-process broker, which only reaches this process, and any URL that
    is not amqp:// or amqps://."""
    if broker.is_in_process(broker_url):
        raise click.UsageError(
            "--broker-url memory:// only reaches this process: use amqp://... "
            "(or `strangler demo` for the embedded setup)"
        )
    if not broker_url.startswith(("amqp://", "amqps://")):
        scheme = broker_url.partition("://")[0] if "://" in broker_url else broker_url[:20]
        raise click.UsageError(
            f"--broker-url must be an amqp:// or amqps:// URL (got scheme {scheme!r})"
        )


def require_current_schema(new_db_url: str) -> None:
    """A clear failure unless the new database is migrated to every head."""
    try:
        current, heads = pending_revisions(new_db_url)
    except SQLAlchemyError as error:
        raise click.ClickException(
            f"cannot reach the new database {safe_url(new_db_url)}: {first_line(error)}"
        ) from error
    if not heads <= current:
        raise click.ClickException(
            f"the new database {safe_url(new_db_url)} is not migrated "
            f"(at {', '.join(sorted(current)) or 'nothing'}): run `strangler db upgrade`"
        )


def first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


@contextmanager
def beside(
    run: Callable[[threading.Event], None] | None, stop: threading.Event, name: str
) -> Iterator[None]:
    """``run(stop)`` in a daemon thread while the block runs (nothing when None); when
    the block ends, ``stop`` is set and the thread given 30 s to finish."""
    if run is None:
        yield
        return
    thread = threading.Thread(target=run, args=(stop,), name=name, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(30)


@contextmanager
def stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGTERM/SIGINT set ``stop``: the loop finishes what it is doing and returns."""

    def handle(signum: int, _frame: FrameType | None) -> None:
        logger.info("received %s; stopping after the current batch", signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
