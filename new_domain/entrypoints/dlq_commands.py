"""``strangler dlq list`` and ``strangler dlq replay``."""

from __future__ import annotations

from typing import Any

import click

import broker
from new_domain.bootstrap import bootstrap
from new_domain.entrypoints.dead_letter_queue import dead_letter_fields, peek, replay
from new_domain.entrypoints.options import (
    broker_url_option,
    first_line,
    new_db_url_option,
    queue_option,
    require_amqp,
    require_current_schema,
)
from new_domain.ingest import DatabaseUnavailable


@click.group()
def dlq() -> None:
    """Inspect and replay the consumer's dead letters (<queue>.dlq)."""


@dlq.command("list")
@broker_url_option
@queue_option
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 65535))
def list_(broker_url: str, queue: str, limit: int) -> None:
    """Show the dead letters with why they failed (they stay in the queue)."""
    require_amqp(broker_url)
    dead_letter_queue = f"{queue}.dlq"
    connection = _connect(broker_url)
    try:
        depth = connection.queue_depth(dead_letter_queue)
        deliveries = peek(connection, dead_letter_queue, limit) if depth else []
    except broker.BrokerError as error:
        raise click.ClickException(f"cannot read {dead_letter_queue}: {error}") from error
    finally:
        connection.close()  # everything taken goes back
    for delivery in deliveries:
        click.echo(_describe(delivery.message))
    shown = f" (showing {len(deliveries)})" if len(deliveries) < depth else ""
    click.echo(f"{depth} dead letter(s) in {dead_letter_queue}{shown}")


@dlq.command("replay")
@new_db_url_option
@broker_url_option
@queue_option
@click.option(
    "--id",
    "ids",
    multiple=True,
    help="Replay only the dead letter with this message id (repeatable); default: all.",
)
@click.option("--limit", default=10_000, show_default=True, type=click.IntRange(1, 65535))
def replay_(new_db_url: str, broker_url: str, queue: str, ids: tuple[str, ...], limit: int) -> None:
    """Apply dead letters again (in stream order, each exactly once).

    A dead letter whose change was never applied is applied even though later
    changes were; one that fails again returns to the queue with the new reason.
    """
    require_amqp(broker_url)
    require_current_schema(new_db_url)
    bus = bootstrap(new_db_url)
    connection = _connect(broker_url)
    try:
        report = replay(bus, connection, queue, ids, limit)
    except (broker.BrokerError, DatabaseUnavailable) as error:
        raise click.ClickException(first_line(error)) from error
    finally:
        connection.close()
        bus.uow.close()
    for message_id, reason in report.failed:
        click.echo(f"failed again: {message_id}: {reason}")
    for message_id in report.not_found:
        click.echo(f"not in {queue}.dlq: {message_id}")
    click.echo(
        f"replayed {len(report.applied) + len(report.already_applied) + len(report.failed)}"
        f" dead letter(s): {len(report.applied)} applied,"
        f" {len(report.already_applied)} applied before, {len(report.failed)} failed again"
    )
    if report.failed or report.not_found:
        raise click.ClickException(
            f"{len(report.failed)} failed again, {len(report.not_found)} not found"
        )


def _connect(broker_url: str) -> broker.Broker:
    try:
        return broker.connect(broker_url)
    except broker.BrokerError as error:
        raise click.ClickException(str(error)) from error


def _describe(message: broker.Message) -> str:
    fields = dead_letter_fields(message)
    seq = "-" if fields["seq"] is None else fields["seq"]
    return (
        f"{message.message_id or '-'}  {message.routing_key}  seq={seq}"
        f"  attempts={_shown(fields['attempts'])}"
        f"  first failed {_shown(fields['first_failed_at'])}"
        f"  {_shown(fields['error_type'])}: {_shown(fields['error'])}"
    )


def _shown(value: Any) -> Any:
    return "?" if value is None else value
