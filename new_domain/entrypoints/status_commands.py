"""``strangler status`` and ``strangler anomalies``."""

from __future__ import annotations

from datetime import UTC, datetime

import click
from sqlalchemy import select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

import broker
from broker import Broker
from new_domain.adapters import orm
from new_domain.adapters.anomalies import anomaly_counts, latest_anomalies
from new_domain.adapters.database import create_engine, safe_url
from new_domain.adapters.dead_letters import SqlAlchemyDeadLetters
from new_domain.adapters.lag import read_progress
from new_domain.adapters.outbox import backlog
from new_domain.adapters.ownership import read_ownership
from new_domain.adapters.ownership_records import (
    ECHO_ANOMALY,
    VIOLATION,
    unresolved_counts,
    write_ownerships,
)
from new_domain.domain.ownership import Ownership, State
from new_domain.entrypoints.options import (
    broker_url_option,
    first_line,
    new_db_url_option,
    queue_option,
    require_amqp,
    require_current_schema,
)
from new_domain.ingest import LEGACY_SHOP
from new_domain.ingest.ports import DEAD
from new_domain.ingest.shards import Shard


@click.command()
@new_db_url_option
@broker_url_option
@queue_option
def status(new_db_url: str, broker_url: str, queue: str) -> None:
    """End-to-end lag, queue depth and whether a consumer is connected, dead letters,
    outbox, anomalies and write ownership.

    Exits non-zero when the new database is not migrated or the broker is unreachable.
    """
    require_amqp(broker_url)
    require_current_schema(new_db_url)
    now = datetime.now(UTC)
    engine = create_engine(new_db_url)
    try:
        with engine.connect() as connection:
            progress = read_progress(connection)
            dead = SqlAlchemyDeadLetters(connection).count(DEAD)
            waiting = backlog(connection)
            kinds = anomaly_counts(connection)
            ownership = _ownership_lines(connection, now)
            shards = _shards(connection)
    except SQLAlchemyError as error:
        raise click.ClickException(f"cannot read the new database: {first_line(error)}") from error
    finally:
        engine.dispose()
    click.echo(f"new database    {safe_url(new_db_url)} (migrated)")
    lags = [(p, p.lag_seconds(now)) for p in progress]
    known = [lag for _, lag in lags if lag is not None]
    if known:
        click.echo(f"lag             {max(known):.1f} s behind legacy")
    else:
        click.echo("lag             unknown (nothing applied yet)")
    for p, lag in lags:
        as_of = p.current_as_of.isoformat(timespec="seconds") if p.current_as_of else "-"
        shown = "-" if lag is None else f"{lag:.1f} s"
        click.echo(
            f"  {p.source}: {shown} (legacy as of {as_of},"
            f" applied {p.applied_at.isoformat(timespec='seconds')})"
        )
    click.echo(f"outbox          {waiting} event(s) not published yet")
    total = sum(kinds.values())
    detail = ", ".join(f"{kind} {count}" for kind, count in kinds.items())
    click.echo(f"anomalies       {total}" + (f" ({detail})" if detail else ""))
    for line in ownership:
        click.echo(line)
    for line in _queue_lines(broker_url, queue, dead, shards):
        click.echo(line)


def _queue_lines(broker_url: str, queue: str, dead: int, shards: _Shards) -> list[str]:
    """The queue, who reads it, the shards and the dead letters, as the broker says."""
    try:
        connection = broker.connect(broker_url)
        try:
            depth = connection.queue_depth(queue)
            consumers = connection.queue_consumers(queue)
            dead_depth = connection.queue_depth(f"{queue}.dlq")
            shard_lines = _shard_lines(connection, queue, shards)
        finally:
            connection.close()
    except broker.BrokerError as error:
        click.echo(f"dead letters    {dead} in the new database")
        raise click.ClickException(f"cannot read queue {queue}: {error}") from error
    lines = [f"queue           {queue}: {depth} message(s) waiting"]
    reader = "shard router" if shards else "consumer"
    if consumers:
        lines.append(f"{reader:<15} connected ({consumers} on {queue})")
    else:
        start = "strangler shard-router" if shards else "strangler consume"
        lines.append(f"{reader:<15} none connected to {queue} (start '{start}')")
    lines.extend(shard_lines)
    lines.append(f"dead letters    {dead_depth} in {queue}.dlq ({dead} dead in the new database)")
    return lines


_Shards = dict[Shard, tuple[int, int]]
"""Each shard of the routed streams: (positions routed to it, positions applied)."""


def _shards(connection: Connection) -> _Shards:
    """The shards the router routes to (of its current count), with how far each got."""
    counts = set(connection.scalars(select(orm.shard_route_position.c.shard_count)))
    routed = {str(k): int(v) for k, v in connection.execute(select(orm.shard_route_seq)).all()}
    positions = orm.applied_change_position
    applied: dict[str, int] = dict(
        connection.execute(select(positions.c.stream, positions.c.position)).all()
    )
    found: _Shards = {shard: (0, 0) for count in counts for shard in Shard.all(count)}
    for stream, last in routed.items():
        shard = Shard.parse(stream.rpartition("#")[2])
        if shard in found:
            given, done = found[shard]
            found[shard] = (given + int(last), done + int(applied.get(stream) or 0))
    return found


def _shard_lines(connection: Broker, queue: str, shards: _Shards) -> list[str]:
    lines = [f"shards          {len(shards)} (strangler shard-router)"] if shards else []
    for shard, (given, done) in sorted(shards.items()):
        name = shard.queue(queue)
        depth, consumers = connection.queue_depth(name), connection.queue_consumers(name)
        taken = (
            f"{consumers} consumer(s), one active"
            if consumers
            else f"NO consumer (start 'strangler consume --shard {shard}')"
        )
        lines.append(
            f"  shard {shard}: {name}: {depth} waiting, {taken}; applied {done} of {given}"
        )
    return lines


def _ownership_lines(connection: Connection, now: datetime) -> list[str]:
    """Each write group's ownership, and the ownership problems nobody resolved."""
    groups = {o.group: o for o in write_ownerships(connection)}
    default = LEGACY_SHOP.write_group
    if default is not None and default not in groups:
        groups[default] = read_ownership(connection, default)
    lines = [f"ownership       {_ownership(o, now)}" for _, o in sorted(groups.items())]
    open_ = unresolved_counts(connection)
    lines.append(
        f"violations      {open_[VIOLATION]} ownership violation(s) and {open_[ECHO_ANOMALY]}"
        " echo anomaly(ies) unresolved (strangler ownership violations|anomalies)"
    )
    return lines


def _ownership(ownership: Ownership, now: datetime) -> str:
    text = f"{ownership.group}: {ownership.rule}, epoch {ownership.epoch}"
    if ownership.state is State.MOVING:
        since = ownership.changed_at or now
        return (
            f"{text}, moving from {ownership.previous_rule} for"
            f" {(now - since).total_seconds():.1f} s (waiting for its fence)"
        )
    if ownership.changed_at is None:
        return f"{text}, active (never moved)"
    return (
        f"{text}, active since {ownership.changed_at.isoformat(timespec='seconds')}"
        f" (by {ownership.changed_by or '-'})"
    )


@click.command()
@new_db_url_option
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 100_000))
@click.option("--kind", default=None, help="Only anomalies of this kind.")
def anomalies(new_db_url: str, limit: int, kind: str | None) -> None:
    """Legacy facts that broke a new-domain invariant (kept, and recorded here)."""
    require_current_schema(new_db_url)
    engine = create_engine(new_db_url)
    try:
        with engine.connect() as connection:
            counts = anomaly_counts(connection)
            rows = latest_anomalies(connection, limit, kind)
    except SQLAlchemyError as error:
        raise click.ClickException(f"cannot read the new database: {first_line(error)}") from error
    finally:
        engine.dispose()
    for row in rows:
        click.echo(
            f"{row.recorded_at.isoformat(timespec='seconds')}  {row.kind}  {row.sku or '-'}"
            f"  {row.detail}  [{row.message_id or '-'}]"
        )
    total = sum(counts.values())
    detail = ", ".join(f"{k} {n}" for k, n in counts.items())
    click.echo(f"{total} anomal{'y' if total == 1 else 'ies'}" + (f": {detail}" if detail else ""))
