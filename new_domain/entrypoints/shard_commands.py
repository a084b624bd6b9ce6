"""``strangler shard-router``: route the bridge's stream to product shards, for
``strangler consume --shard K/N`` processes (docs/architecture.md)."""

from __future__ import annotations

import logging
import threading

import click
from sqlalchemy.exc import SQLAlchemyError

import broker
from new_domain.adapters.database import create_engine, safe_url
from new_domain.adapters.shard_routes import ShardRouteStore, ShardsNotDrained
from new_domain.bootstrap import bootstrap
from new_domain.entrypoints.options import (
    broker_url_option,
    exchange_option,
    first_line,
    new_db_url_option,
    queue_option,
    require_amqp,
    require_current_schema,
    stop_on_signals,
)
from new_domain.entrypoints.shard_router import (
    DEFAULT_ROUTER_BATCH,
    ShardCountChanged,
    ShardRouter,
)
from new_domain.ingest import DatabaseUnavailable
from new_domain.ingest.shards import MAX_SHARDS

logger = logging.getLogger(__name__)


@click.command("shard-router")
@new_db_url_option
@broker_url_option
@queue_option
@exchange_option
@click.option(
    "--shards",
    type=click.IntRange(1, MAX_SHARDS),
    help="Number of product shards: queues <queue>.shard-K-of-N, each taken by "
    "`strangler consume --shard K/N`.",
)
@click.option(
    "--reshard",
    is_flag=True,
    help="Route over --shards although the stored routing used another number (only "
    "once every old shard queue is empty).",
)
@click.option(
    "--unshard",
    is_flag=True,
    help="Give the stream back to one `strangler consume` and exit: with the router "
    "stopped and every shard applied, store how far it was routed as the consumer's "
    "position and forget the routing.",
)
@click.option(
    "--batch-size",
    default=DEFAULT_ROUTER_BATCH,
    show_default=True,
    type=click.IntRange(1, 10_000),
    help="Most changes routed per round (one confirm wait, one store).",
)
@click.option("--once", is_flag=True, help="Route one batch (if any) and exit.")
def shard_router(
    new_db_url: str,
    broker_url: str,
    queue: str,
    exchange: str,
    shards: int | None,
    reshard: bool,
    unshard: bool,
    batch_size: int,
    once: bool,
) -> None:
    """Route the legacy changes of --queue to --shards product shards.

    Each change goes to the shard of its product (a stable hash of the sku), numbered
    densely per shard, so any number of `strangler consume --shard K/N` processes, on
    any machines, apply the products in legacy's order; a standby consumer of a shard
    takes over when the active one dies (single active consumer). The routing state
    lives in the new database (tables shard_route_*).
    """
    require_amqp(broker_url)
    require_current_schema(new_db_url)
    if unshard:
        _unshard(new_db_url, broker_url, queue)
        return
    if shards is None:
        raise click.UsageError("--shards N is required (or --unshard)")
    bus = bootstrap(new_db_url)
    engine = create_engine(new_db_url, for_writes=True)
    router = ShardRouter(
        bus.uow,
        ShardRouteStore(engine),
        lambda: broker.connect(broker_url),
        shards,
        queue,
        exchange=exchange,
        batch_size=batch_size,
        reshard=reshard,
    )
    try:
        if once:
            count = router.run_once()
            click.echo(f"routed {count} messages from {queue} to {shards} shard(s)")
            return
        stop = threading.Event()
        with stop_on_signals(stop):
            logger.info(
                "routing %s into %d shard(s) (state in %s)", queue, shards, safe_url(new_db_url)
            )
            router.run(stop)
        logger.info("shard router stopped")
    except (broker.BrokerError, DatabaseUnavailable, ShardCountChanged) as error:
        raise click.ClickException(first_line(error)) from error
    finally:
        router.close()
        bus.uow.close()
        engine.dispose()


def _unshard(new_db_url: str, broker_url: str, queue: str) -> None:
    try:
        connection = broker.connect(broker_url)
        try:
            routers = connection.queue_consumers(queue)
        finally:
            connection.close()
    except broker.BrokerError as error:
        raise click.ClickException(f"broker: {first_line(error)}") from error
    if routers:
        raise click.ClickException(f"{queue} is still consumed (the router?): stop it first")
    engine = create_engine(new_db_url, for_writes=True)
    try:
        streams = ShardRouteStore(engine).unshard()
    except (ShardsNotDrained, SQLAlchemyError) as error:
        raise click.ClickException(first_line(error)) from error
    finally:
        engine.dispose()
    for stream, position in sorted(streams.items()):
        click.echo(f"stream {stream}: one consumer goes on after position {position}")
    click.echo(
        f"routing forgotten for {len(streams)} stream(s): stop the shard consumers and start"
        " one `strangler consume`"
    )
