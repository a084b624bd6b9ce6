"""``strangler backsync``: install, run and watch back-sync (the legacy mimic)."""

from __future__ import annotations

import json
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import TypeVar

import click
from sqlalchemy.engine import Engine
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

import broker
from backsync.database import first_line, make_engine, safe_url
from backsync.dead_letters import describe, peek, replay
from backsync.install import install_tables, missing_tables
from backsync.legacy_shop import LEGACY_SHOP
from backsync.runner import (
    DEFAULT_INCOMPLETE_TIMEOUT,
    DEFAULT_LANES,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_PREFETCH,
    DEFAULT_SETTLE,
    EXCHANGE,
    MAX_LANES,
    QUEUE,
    BackSync,
    dead_letter_queue,
    declare,
)
from backsync.status import BackSyncStatus, read_status
from backsync.writer import Writer

logger = logging.getLogger("backsync")

T = TypeVar("T")

legacy_db_url_option = click.option(
    "--legacy-db-url",
    envvar="LEGACY_DB_URL",
    required=True,
    help="SQLAlchemy URL of the legacy database (env LEGACY_DB_URL).",
)
queue_option = click.option(
    "--queue",
    default=QUEUE,
    show_default=True,
    help="Back-sync's queue (its dead letters: <queue>.dlq).",
)
exchange_option = click.option(
    "--exchange",
    default=EXCHANGE,
    show_default=True,
    help="Topic exchange of the new system's domain events.",
)


def _broker_url_option(required: bool) -> Callable[[Callable[..., None]], Callable[..., None]]:
    return click.option(
        "--broker-url",
        envvar="BROKER_URL",
        required=required,
        default=None,
        help="amqp:// URL of RabbitMQ (env BROKER_URL).",
    )


@click.group("backsync")
def backsync() -> None:
    """Back-sync: the new system's decisions written into the legacy database, as legacy's
    own code would write them (transitional: see docs/write-path.md)."""


@backsync.command("install")
@legacy_db_url_option
@_broker_url_option(required=True)
@queue_option
@exchange_option
def install_command(legacy_db_url: str, broker_url: str, queue: str, exchange: str) -> None:
    """Create back-sync's tables in the legacy database and declare its queue and
    dead-letter queue. Run it once before the first ownership move (idempotent)."""
    _require_amqp(broker_url)
    engine = _engine(legacy_db_url)
    try:
        installed = _database(legacy_db_url, lambda: install_tables(engine, queue))
    finally:
        engine.dispose()
    _on_broker(broker_url, lambda b: declare(b, queue, exchange))
    created = ", ".join(installed.created) or "none (they existed)"
    click.echo(f"back-sync installed in {safe_url(legacy_db_url)}; tables created: {created}")
    click.echo(f"  queue {queue} bound to {exchange} (#), dead letters {dead_letter_queue(queue)}")


@backsync.command("run")
@legacy_db_url_option
@_broker_url_option(required=True)
@queue_option
@exchange_option
@click.option(
    "--settle",
    default=DEFAULT_SETTLE,
    show_default=True,
    type=click.FloatRange(0.0, 3600.0),
    help="Seconds a takeover waits after its move before its fence (at least the facade "
    "workers' route refresh interval).",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Serve Prometheus metrics on this port.",
)
@click.option(
    "--max-attempts",
    default=DEFAULT_MAX_ATTEMPTS,
    show_default=True,
    type=click.IntRange(1, 1000),
    help="Failed attempts (unexpected errors) before a decision goes to the dead-letter queue.",
)
@click.option(
    "--incomplete-timeout",
    default=DEFAULT_INCOMPLETE_TIMEOUT,
    show_default=True,
    type=click.FloatRange(1.0, 86400.0),
    help="Seconds a decision whose events stop arriving waits before it is dead-lettered.",
)
@click.option(
    "--prefetch",
    default=DEFAULT_PREFETCH,
    show_default=True,
    type=click.IntRange(1, 65535),
    help="Messages taken ahead (widened for a decision with more events).",
)
@click.option(
    "--lanes",
    default=DEFAULT_LANES,
    show_default=True,
    type=click.IntRange(1, MAX_LANES),
    help="Products whose decisions are written side by side (each product's in order).",
)
@click.option(
    "--lock-timeout",
    default=10.0,
    show_default=True,
    type=click.FloatRange(0.1, 3600.0),
    help="Seconds a takeover's fence waits for legacy's row locks before it tries again.",
)
def run_command(
    legacy_db_url: str,
    broker_url: str,
    queue: str,
    exchange: str,
    settle: float,
    metrics_port: int | None,
    max_attempts: int,
    incomplete_timeout: float,
    prefetch: int,
    lanes: int,
    lock_timeout: float,
) -> None:
    """Write the new system's decisions and fences into the legacy database until
    stopped (SIGTERM, SIGINT)."""
    _require_amqp(broker_url)
    engine = _engine(legacy_db_url)
    try:
        missing = _database(legacy_db_url, lambda: missing_tables(engine))
        if missing:
            raise click.ClickException(
                f"back-sync is not installed in {safe_url(legacy_db_url)} (missing "
                f"{', '.join(missing)}): run `strangler backsync install`"
            )
        if metrics_port is not None:
            from prometheus_client import start_http_server

            start_http_server(metrics_port)
        writer = Writer(engine, LEGACY_SHOP, queue, lock_timeout=lock_timeout)
        worker = BackSync(
            writer,
            lambda: broker.connect(broker_url),
            exchange=exchange,
            settle=settle,
            prefetch=prefetch,
            lanes=lanes,
            max_attempts=max_attempts,
            incomplete_timeout=incomplete_timeout,
        )
        stop = threading.Event()
        with _stop_on_signals(stop):
            logger.info("back-sync: %s -> %s", queue, safe_url(legacy_db_url))
            worker.run(stop)
        logger.info("back-sync stopped")
    finally:
        engine.dispose()


@backsync.command("status")
@legacy_db_url_option
@_broker_url_option(required=False)
@queue_option
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def status_command(legacy_db_url: str, broker_url: str | None, queue: str, as_json: bool) -> None:
    """Decisions and fences written, the last one and its lag, the queue's depth.

    Exits non-zero when back-sync is not installed or the broker is unreachable."""
    status = backsync_status(legacy_db_url, broker_url, queue)
    if as_json:
        click.echo(json.dumps(status.as_dict(), indent=2))
    else:
        _print_status(status, legacy_db_url)
    if not status.installed:
        raise click.ClickException(
            f"back-sync is not installed in {safe_url(legacy_db_url)}: "
            "run `strangler backsync install`"
        )


@backsync.group("dlq")
def dlq() -> None:
    """Back-sync's dead letters (<queue>.dlq): list them, send them back once fixed."""


@dlq.command("list")
@_broker_url_option(required=True)
@queue_option
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 65535))
def dlq_list(broker_url: str, queue: str, limit: int) -> None:
    """Show the dead letters with why they failed (they stay in the queue)."""
    _require_amqp(broker_url)
    dead = dead_letter_queue(queue)

    def read(b: broker.Broker) -> tuple[int, list[str]]:
        depth = b.queue_depth(dead)
        return depth, [describe(d.message).line() for d in peek(b, dead, limit)]

    depth, lines = _on_broker(broker_url, read)  # closing puts them back
    for line in lines:
        click.echo(line)
    shown = f" (showing {len(lines)})" if len(lines) < depth else ""
    click.echo(f"{depth} dead letter(s) in {dead}{shown}")


@dlq.command("replay")
@_broker_url_option(required=True)
@queue_option
@click.option(
    "--id",
    "ids",
    multiple=True,
    help="A dead letter's message id or decision id (repeatable; a decision's other "
    "events come with it); default: every dead letter.",
)
@click.option("--limit", default=10_000, show_default=True, type=click.IntRange(1, 65535))
def dlq_replay(broker_url: str, queue: str, ids: tuple[str, ...], limit: int) -> None:
    """Send dead letters back to back-sync's queue, to be written again by the running
    back-sync (once each; one that fails again returns here with its new reason)."""
    _require_amqp(broker_url)
    report = _on_broker(broker_url, lambda b: replay(b, queue, ids, limit))
    for missing in report.not_found:
        click.echo(f"not in {dead_letter_queue(queue)}: {missing}")
    click.echo(
        f"sent back {len(report.replayed)} dead letter(s) of {len(report.decisions)} "
        f"decision(s) to {queue}"
    )
    if report.not_found:
        raise click.ClickException(f"{len(report.not_found)} id(s) not found")


def backsync_status(legacy_db_url: str, broker_url: str | None, queue: str) -> BackSyncStatus:
    """The status of back-sync, with its queue depth when ``broker_url`` is given."""
    engine = _engine(legacy_db_url)
    try:
        status = _database(legacy_db_url, lambda: read_status(engine, queue))
    finally:
        engine.dispose()
    if broker_url is None or broker.is_in_process(broker_url) or not status.installed:
        return status

    def depths(b: broker.Broker) -> tuple[int, int]:
        return b.queue_depth(queue), b.queue_depth(dead_letter_queue(queue))

    depth, dead = _on_broker(broker_url, depths)
    return BackSyncStatus(**{**vars(status), "queue_depth": depth, "dead_letters": dead})


def _print_status(status: BackSyncStatus, legacy_db_url: str) -> None:
    click.echo(f"back-sync in {safe_url(legacy_db_url)}: " + status.line().split(";")[0])
    if not status.installed:
        return
    click.echo(f"  decisions written:  {status.decisions}")
    click.echo(f"  fences written:     {status.fences}")
    last = status.last_written_at.isoformat(timespec="seconds") if status.last_written_at else "-"
    click.echo(f"  last decision:      {status.last_decision_id or '-'} (written {last})")
    lag = "-" if status.lag_seconds is None else f"{status.lag_seconds:.3f} s"
    click.echo(f"  lag (last):         {lag}")
    if status.queue_depth is not None:
        click.echo(f"  queue:              {status.queue}: {status.queue_depth} waiting")
        click.echo(
            f"  dead letters:       {status.dead_letters} in {dead_letter_queue(status.queue)}"
        )


def _require_amqp(broker_url: str) -> None:
    if broker.is_in_process(broker_url):
        raise click.UsageError("--broker-url memory:// only reaches this process: use amqp://...")


def _engine(legacy_db_url: str) -> Engine:
    try:
        return make_engine(legacy_db_url)
    except (ArgumentError, ImportError) as error:
        raise click.ClickException(f"invalid --legacy-db-url: {first_line(error)}") from error


def _database(legacy_db_url: str, work: Callable[[], T]) -> T:
    try:
        return work()
    except SQLAlchemyError as error:
        raise click.ClickException(
            f"legacy database {safe_url(legacy_db_url)}: {first_line(error)}"
        ) from error


def _on_broker(broker_url: str, work: Callable[[broker.Broker], T]) -> T:
    try:
        connection = broker.connect(broker_url)
        try:
            return work(connection)
        finally:
            connection.close()
    except broker.BrokerError as error:
        raise click.ClickException(f"broker: {first_line(error)}") from error


@contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGTERM/SIGINT set ``stop``: the decision in hand is finished first."""

    def handle(signum: int, _frame: FrameType | None) -> None:
        logger.info("received %s; stopping", signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
