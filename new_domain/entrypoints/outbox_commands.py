"""``strangler outbox relay``: the outbox relay on its own."""

from __future__ import annotations

import logging
import threading

import click

import broker
from new_domain.adapters.database import create_engine, safe_url
from new_domain.adapters.outbox import EVENTS_EXCHANGE
from new_domain.entrypoints.options import (
    broker_url_option,
    first_line,
    new_db_url_option,
    require_amqp,
    require_current_schema,
    stop_on_signals,
)
from new_domain.entrypoints.outbox_relay import OutboxRelay

logger = logging.getLogger(__name__)


@click.group()
def outbox() -> None:
    """The new domain's outbox of domain events."""


@outbox.command()
@new_db_url_option
@broker_url_option
@click.option(
    "--events-exchange",
    default=EVENTS_EXCHANGE,
    show_default=True,
    help="Topic exchange to publish the domain events to.",
)
@click.option(
    "--poll-interval",
    default=0.2,
    show_default=True,
    type=click.FloatRange(0.01, 60.0),
    help="Seconds between looks at an empty outbox.",
)
@click.option("--once", is_flag=True, help="Publish everything waiting, then exit.")
def relay(
    new_db_url: str, broker_url: str, events_exchange: str, poll_interval: float, once: bool
) -> None:
    """Publish the outbox's domain events (Allocated, Deallocated, BatchQuantityChanged)
    to the events exchange with publisher confirms, each once per state change."""
    require_amqp(broker_url)
    require_current_schema(new_db_url)
    engine = create_engine(new_db_url, for_writes=True)
    outbox_relay = OutboxRelay(
        engine,
        lambda: broker.connect(broker_url),
        exchange=events_exchange,
        poll_interval=poll_interval,
    )
    try:
        if once:
            try:
                published = outbox_relay.drain()
            except broker.BrokerError as error:
                raise click.ClickException(first_line(error)) from error
            click.echo(f"published {published} events to {events_exchange}")
            return
        stop = threading.Event()
        with stop_on_signals(stop):
            logger.info("relaying the outbox of %s to %s", safe_url(new_db_url), events_exchange)
            outbox_relay.run(stop)
        logger.info("outbox relay stopped after publishing %d events", outbox_relay.published)
    finally:
        outbox_relay.close()
        engine.dispose()
