"""``strangler db upgrade`` and ``strangler consume`` (the other commands of the new
domain: :mod:`new_domain.entrypoints.commands`)."""

from __future__ import annotations

import logging
import threading

import click
from sqlalchemy.exc import SQLAlchemyError

import broker
from new_domain.adapters.database import create_engine, safe_url
from new_domain.adapters.outbox import EVENTS_EXCHANGE
from new_domain.adapters.schema import pending_revisions, upgrade_database
from new_domain.bootstrap import bootstrap
from new_domain.domain.model import TieBreak
from new_domain.entrypoints.consumer import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_MAX_ATTEMPTS,
    Consumer,
)
from new_domain.entrypoints.journal_retention import JournalRetention
from new_domain.entrypoints.options import (
    beside,
    broker_url_option,
    exchange_option,
    first_line,
    new_db_url_option,
    queue_option,
    require_amqp,
    require_current_schema,
    stop_on_signals,
)
from new_domain.entrypoints.outbox_relay import OutboxRelay
from new_domain.ingest import DatabaseUnavailable
from new_domain.ingest.shards import Shard

__all__ = ["consume", "db"]

logger = logging.getLogger(__name__)


@click.group()
def db() -> None:
    """Manage the new domain's database."""


@db.command()
@new_db_url_option
def upgrade(new_db_url: str) -> None:
    """Migrate the new database to the latest revision."""
    shown = safe_url(new_db_url)
    try:
        before, _ = pending_revisions(new_db_url)
    except SQLAlchemyError as error:
        raise click.ClickException(
            f"cannot reach the new database {shown}: {first_line(error)}"
        ) from error
    try:
        upgrade_database(new_db_url)
        after, _ = pending_revisions(new_db_url)
    except SQLAlchemyError as error:
        raise click.ClickException(f"cannot upgrade {shown}: {first_line(error)}") from error
    now = _revisions(after)
    if not before:
        click.echo(f"new database {shown}: schema created (was empty; now at {now})")
    elif before == after:
        click.echo(f"new database {shown} is up to date ({now})")
    else:
        click.echo(f"new database {shown}: upgraded from {_revisions(before)} to {now}")


def _revisions(revisions: set[str]) -> str:
    return f"revision{'s' if len(revisions) > 1 else ''} {', '.join(sorted(revisions))}"


@click.command()
@new_db_url_option
@broker_url_option
@queue_option
@exchange_option
@click.option(
    "--bind-exchange",
    "bind_exchanges",
    multiple=True,
    metavar="EXCHANGE",
    help="One more exchange whose messages the queue takes (repeatable): each per-topic "
    "exchange Debezium Server's RabbitMQ sink publishes to when its `exchange` is not set "
    "(docs/debezium.md).",
)
@click.option(
    "--tombstone-body",
    default=None,
    metavar="TEXT",
    help="The body a sink publishes in place of a tombstone's null value (an empty body "
    "and `null` are tombstones anyway).",
)
@click.option(
    "--batch-size",
    default=DEFAULT_BATCH_SIZE,
    show_default=True,
    type=click.IntRange(1, 10_000),
    help="Most changes applied per transaction (prefetch: twice as many).",
)
@click.option(
    "--batch-timeout",
    default=0.1,
    show_default=True,
    type=click.FloatRange(0.0, 60.0),
    help="Most seconds to wait for a batch to fill (what is ready is applied at once).",
)
@click.option(
    "--max-attempts",
    default=DEFAULT_MAX_ATTEMPTS,
    show_default=True,
    type=click.IntRange(1, 1000),
    help="Failed attempts before a change goes to the dead-letter queue.",
)
@click.option(
    "--events-exchange",
    default=EVENTS_EXCHANGE,
    show_default=True,
    help="Topic exchange the domain events of the outbox are published to.",
)
@click.option(
    "--outbox-relay/--no-outbox-relay",
    default=True,
    show_default=True,
    help="Relay the outbox's domain events from a second thread.",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Serve Prometheus metrics on this port.",
)
@click.option(
    "--tie-break",
    type=click.Choice([t.value for t in TieBreak]),
    default=TieBreak.CREATED.value,
    show_default=True,
    help="The new rules' order between batches of equal eta (decision parity judges "
    "legacy's decisions with it).",
)
@click.option(
    "--journal-decisions",
    is_flag=True,
    help="Keep each legacy write decision with the state the new rules read (table "
    "decision_journal), for `strangler decisions replay`.",
)
@click.option(
    "--journal-retention-days",
    type=click.IntRange(0, 36_500),
    default=30,
    show_default=True,
    help="Delete journaled decisions older than this many days, at start and then every "
    "hour (0: keep them all; `strangler decisions prune` does it by hand).",
)
@click.option(
    "--shard",
    "shards",
    multiple=True,
    metavar="K/N",
    callback=lambda _ctx, _param, values: _shards(values),
    help="Consume product shard K of N (routed by `strangler shard-router --shards N`) "
    "instead of --queue itself; repeatable, one thread per shard. The same shard in "
    "another process is a standby that takes over when this one dies.",
)
@click.option("--once", is_flag=True, help="Apply one batch (if any) and exit.")
def consume(
    new_db_url: str,
    broker_url: str,
    queue: str,
    exchange: str,
    bind_exchanges: tuple[str, ...],
    tombstone_body: str | None,
    batch_size: int,
    batch_timeout: float,
    max_attempts: int,
    events_exchange: str,
    outbox_relay: bool,
    metrics_port: int | None,
    tie_break: str,
    journal_decisions: bool,
    journal_retention_days: int,
    shards: tuple[Shard, ...],
    once: bool,
) -> None:
    """Apply legacy change events from the broker to the new domain.

    The changes come from the kit's bridge or from Debezium (docs/debezium.md). The
    outbox relay runs beside it with its own broker connection, publishing the domain
    events the changes raise to --events-exchange.
    """
    _require_amqp_url(broker_url)
    require_current_schema(new_db_url)
    _serve_metrics(metrics_port)
    rule = TieBreak(tie_break)

    def consumer(shard: Shard | None) -> Consumer:
        return Consumer(
            bootstrap(new_db_url, tie_break=rule),
            lambda: broker.connect(broker_url),
            queue,
            exchange=exchange,
            bind_exchanges=bind_exchanges,
            tombstone=None if tombstone_body is None else tombstone_body.encode(),
            batch_size=batch_size,
            batch_timeout=batch_timeout,
            max_attempts=max_attempts,
            tie_break=rule,
            journal_decisions=journal_decisions,
            shard=shard,
        )

    consumers = [consumer(shard) for shard in shards or (None,)]
    relay = _outbox_relay(new_db_url, broker_url, events_exchange) if outbox_relay else None
    retention = _retention(new_db_url, journal_retention_days) if not once else None
    try:
        _run_consumers(consumers, relay, retention, once, safe_url(new_db_url))
    finally:
        if retention is not None:
            retention.engine.dispose()
        for each in consumers:
            each.close()
            each.bus.uow.close()
        if relay is not None:
            relay.close()
            relay.engine.dispose()


def _shards(values: tuple[str, ...]) -> tuple[Shard, ...]:
    try:
        shards = tuple(sorted(set(map(Shard.parse, values))))
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--shard") from None
    if len({shard.count for shard in shards}) > 1:
        raise click.BadParameter("every --shard must have the same N", param_hint="--shard")
    return shards


def _retention(new_db_url: str, days: int) -> JournalRetention | None:
    """The decision journal's retention (None: keep every entry)."""
    if not days:
        return None
    return JournalRetention(create_engine(new_db_url, for_writes=True), days)


def _run_consumers(
    consumers: list[Consumer],
    relay: OutboxRelay | None,
    retention: JournalRetention | None,
    once: bool,
    into: str,
) -> None:
    """One batch each (``once``), or until a signal: one thread per consumer, the
    outbox relay and the journal's retention beside them."""
    try:
        if once:
            for consumer in consumers:
                _consume_once(consumer, relay)
            return
        stop = threading.Event()
        with (
            stop_on_signals(stop),
            beside(None if relay is None else relay.run, stop, "outbox-relay"),
            beside(None if retention is None else retention.run, stop, "journal-retention"),
        ):
            queues = ", ".join(consumer.queue for consumer in consumers)
            logger.info("connecting to the broker to consume %s into %s", queues, into)
            _run_in_threads(consumers, stop)
        logger.info("consumer stopped")
    except broker.BrokerRefused as error:
        raise click.ClickException(f"broker: {first_line(error)}") from error


def _run_in_threads(consumers: list[Consumer], stop: threading.Event) -> None:
    """Each consumer in its own thread until ``stop`` is set or one of them ends with
    an error (then all stop, and the first error is raised)."""
    errors: list[BaseException] = []

    def run(consumer: Consumer) -> None:
        try:
            consumer.run(stop)
        except BaseException as error:  # noqa: BLE001 - raised in the main thread
            errors.append(error)
        finally:
            stop.set()

    threads = [
        threading.Thread(target=run, args=(c,), name=c.queue, daemon=True) for c in consumers
    ]
    for thread in threads:
        thread.start()
    stop.wait()
    for thread in threads:
        thread.join(60)
    if errors:
        raise errors[0]


def _require_amqp_url(broker_url: str) -> None:
    require_amqp(broker_url)
    if not broker_url.startswith(("amqp://", "amqps://")):
        scheme = broker_url.partition("://")[0] if "://" in broker_url else broker_url[:20]
        raise click.UsageError(
            f"--broker-url must be an amqp:// or amqps:// URL (got scheme {scheme!r})"
        )


def _serve_metrics(port: int | None) -> None:
    if port is not None:
        from prometheus_client import start_http_server

        start_http_server(port)


def _outbox_relay(new_db_url: str, broker_url: str, exchange: str) -> OutboxRelay:
    return OutboxRelay(
        create_engine(new_db_url, for_writes=True),
        lambda: broker.connect(broker_url),
        exchange=exchange,
    )


def _consume_once(consumer: Consumer, relay: OutboxRelay | None) -> None:
    try:
        count = consumer.run_once()
        published = relay.drain() if relay else 0
    except (broker.BrokerError, DatabaseUnavailable) as error:
        raise click.ClickException(first_line(error)) from error
    click.echo(f"processed {count} messages from {consumer.queue}; published {published} events")
