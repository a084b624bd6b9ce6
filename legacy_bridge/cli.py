"""``strangler bridge``: install change capture, snapshot, run the relay, status, uninstall."""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from types import FrameType
from typing import TypeVar

import click
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from broker import Broker, BrokerError, connect, is_in_process
from legacy_bridge.debezium_cli import (
    check_engine_supported,
    debezium_options,
    engine_settings,
    run_debezium,
    slot_status,
)
from legacy_bridge.debezium_engine import DEFAULT_SLOT
from legacy_bridge.errors import BridgeError
from legacy_bridge.installer import install, stop_capture, uninstall
from legacy_bridge.relay import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_EXCHANGE,
    DEFAULT_HEARTBEAT_INTERVAL_S,
    Relay,
)
from legacy_bridge.retention import DEFAULT_RETENTION_S
from legacy_bridge.snapshot import DEFAULT_CHUNK_SIZE, Progress, TableSnapshot, snapshot
from legacy_bridge.status import BridgeStatus, bridge_status
from legacy_bridge.tables import ALWAYS_CAPTURED

log = logging.getLogger("legacy_bridge")

_LEGACY_DB_URL = click.option(
    "--legacy-db-url",
    envvar="LEGACY_DB_URL",
    required=True,
    help="SQLAlchemy URL of the legacy database (env LEGACY_DB_URL).",
)
_CHUNK_SIZE = click.option(
    "--chunk-size",
    type=click.IntRange(min=1),
    default=DEFAULT_CHUNK_SIZE,
    show_default=True,
    help="Rows read per snapshot chunk (one transaction each).",
)

T = TypeVar("T")


def _table_names(tables: str | None) -> list[str] | None:
    if tables is None:
        return None
    names = [name.strip() for name in tables.split(",") if name.strip()]
    if not names:
        raise click.UsageError("--tables names no table")
    return names


def _guarded(action: Callable[[], T]) -> T:
    """Run ``action``; bridge, broker and database failures become one-line errors."""
    try:
        return action()
    except BridgeError as error:
        raise click.ClickException(str(error)) from error
    except BrokerError as error:
        raise click.ClickException(f"broker: {_first_line(error)}") from error
    except (ArgumentError, ImportError) as error:
        raise click.ClickException(f"invalid --legacy-db-url: {error}") from error
    except SQLAlchemyError as error:
        raise click.ClickException(_database_error(error)) from error


@click.group()
def bridge() -> None:
    """Capture legacy database changes and relay them to the broker."""


@bridge.command("install")
@click.option(
    "--tables",
    envvar="BRIDGE_TABLES",
    default=None,
    metavar="T1,T2",
    help=(
        "Comma-separated tables to capture (env BRIDGE_TABLES; default: the tables "
        "captured already; a first install needs them)."
    ),
)
@click.option(
    "--server-name",
    default="legacy",
    show_default=True,
    help="Name stamped on events as source.name.",
)
@click.option(
    "--snapshot",
    "take_snapshot",
    is_flag=True,
    help="Then snapshot the installed tables' existing rows (see 'bridge snapshot').",
)
@click.option(
    "--notify/--no-notify",
    default=None,
    help=(
        "PostgreSQL: the capture trigger wakes the relay at commit (LISTEN/NOTIFY) instead "
        "of the relay polling. Costs the legacy database its group commit under concurrent "
        "writers; for databases with few writers [default: as installed; first install: off]."
    ),
)
@_CHUNK_SIZE
@_LEGACY_DB_URL
def install_command(
    tables: str | None,
    server_name: str,
    take_snapshot: bool,
    notify: bool | None,
    chunk_size: int,
    legacy_db_url: str,
) -> None:
    """Install change capture, or refresh or upgrade it.

    Creates the bridge's tables and one capture trigger per table (replacing existing
    ones); the origin marker table strangler_origin is always captured too. Running it
    again keeps the install id, the checkpoint and pending changes.
    A running relay picks up a changed --notify when restarted.
    """
    names = _table_names(tables)
    result = _guarded(lambda: install(legacy_db_url, names, server_name=server_name, notify=notify))
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
    if result.notify:
        click.echo("  the triggers notify the relay at commit (LISTEN/NOTIFY)")
    if take_snapshot:
        named = [t.name for t in result.tables if t.name not in ALWAYS_CAPTURED]
        _snapshot(legacy_db_url, named, chunk_size, restart=False)


@bridge.command("snapshot")
@click.option(
    "--tables",
    default=None,
    metavar="T1,T2",
    help="Comma-separated captured tables to snapshot [default: every captured table].",
)
@_CHUNK_SIZE
@click.option("--restart", is_flag=True, help="Snapshot tables again that are done.")
@_LEGACY_DB_URL
def snapshot_command(
    tables: str | None, chunk_size: int, restart: bool, legacy_db_url: str
) -> None:
    """Queue the existing rows of captured tables as op r events (resumable).

    Rows are read in primary-key chunks, one transaction each, into the change table, from
    where 'bridge run' publishes them in order with the changes made meanwhile. After an
    interruption, run it again: it continues where it stopped.
    """
    _snapshot(legacy_db_url, _table_names(tables), chunk_size, restart)


class ChunkLog:
    """Progress of one table's snapshot as one log line per chunk (output not a terminal)."""

    def __init__(self, table: str, estimate: int | None, done: int) -> None:
        self.table = table
        self.total = None if estimate is None else max(estimate, done)
        self.done = done

    def update(self, n: int) -> None:
        self.done += n
        of = "" if self.total is None else f" of about {self.total}"
        log.info("snapshot of %s: %d rows read%s", self.table, self.done, of)

    def close(self) -> None:
        return None


def progress_display(table: str, estimate: int | None, done: int) -> Progress:
    """A progress bar (tqdm) on a terminal, else a log line per chunk."""
    if not sys.stderr.isatty():
        return ChunkLog(table, estimate, done)
    from tqdm import tqdm

    total = None if estimate is None else max(estimate, done)
    shown: Progress = tqdm(total=total, initial=done, desc=table, unit="row", leave=False)
    return shown


def _snapshot(legacy_db_url: str, names: list[str] | None, chunk_size: int, restart: bool) -> None:
    bar = progress_display

    results: list[TableSnapshot] = _guarded(
        lambda: snapshot(legacy_db_url, names, chunk_size=chunk_size, restart=restart, progress=bar)
    )
    for result in results:
        if result.already_done:
            click.echo(
                f"  {result.table}: snapshot already done ({result.total} rows); "
                "--restart takes it again"
            )
        else:
            click.echo(f"  {result.table}: {result.rows} rows read ({result.total} in all)")
    click.echo(f"snapshot done: {sum(r.rows for r in results)} rows queued for the relay")


@bridge.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@click.option(
    "--engine",
    type=click.Choice(["triggers", "debezium"]),
    default="triggers",
    show_default=True,
    help="debezium: the replication slot of 'bridge run --engine debezium'.",
)
@click.option("--slot", default=DEFAULT_SLOT, show_default=True, help="Debezium: the slot.")
@_LEGACY_DB_URL
def status_command(as_json: bool, engine: str, slot: str, legacy_db_url: str) -> None:
    """Show whether a relay runs, pending changes, checkpoint and throughput.

    Whether a relay is running (it records itself every 5 s: not seen for 15 s, it is not),
    pending changes (and the oldest one's age), the last confirmed position, changes
    published in the last minute, and the progress of snapshots. Exits with status 1 when
    change capture is not installed.

    With --engine debezium: the replication slot (in use or not, the LSN Debezium
    confirmed, the WAL it holds) and the publication's tables; exits with status 1 when
    the slot does not exist.
    """
    if engine == "debezium":
        check_engine_supported(legacy_db_url)
        found = _guarded(lambda: slot_status(legacy_db_url, slot, slot))
        if as_json:
            click.echo(json.dumps(asdict(found), indent=2))
        else:
            click.echo("\n".join(found.lines()))
        return
    status: BridgeStatus = _guarded(lambda: bridge_status(legacy_db_url))
    if as_json:
        click.echo(json.dumps(status.as_dict(), indent=2))
        return
    facts = status.as_dict()
    age = status.oldest_pending_age_s
    click.echo(
        f"change capture installed in {status.connector} database {status.database!r} "
        f"(install id {status.install_id}, server name {status.server_name!r})"
    )
    click.echo(f"  captured tables:        {', '.join(status.tables) or '(none)'}")
    click.echo(f"  relay:                  {status.relay_line()}")
    click.echo(
        f"  pending changes:        {status.pending}"
        + ("" if age is None else f" (oldest captured {age:.1f} s ago)")
    )
    confirmed_at = facts["last_confirmed_at"] or "never"
    click.echo(f"  last confirmed position: {status.last_confirmed_pos} (at {confirmed_at})")
    click.echo(
        f"  published last minute:  {status.published_recently} ({facts['throughput_per_s']}/s)"
    )
    for state in status.snapshots:
        progress = "done" if state.done else "in progress"
        click.echo(f"  snapshot of {state.table}: {progress}, {state.rows_read} rows read")


@bridge.command("uninstall")
@click.option(
    "--tables",
    metavar="T1,T2",
    help="Only stop capturing these tables; the others, the relay and its state stay.",
)
@click.option("--force", is_flag=True, help="Also when captured changes are not published yet.")
@_LEGACY_DB_URL
def uninstall_command(tables: str | None, force: bool, legacy_db_url: str) -> None:
    """Remove change capture (stop the relay first), or stop capturing some tables.

    Without --tables: drops the capture triggers, functions, sequences and the bridge's
    tables; refuses while captured changes are not confirmed by the broker, unless
    --force. With --tables: drops those tables' triggers only, while the relay keeps
    running; their changes captured so far are still published.
    """
    names = _table_names(tables)
    if names is not None:
        if force:
            raise click.UsageError("--force applies to a full uninstall, not to --tables")
        stopped = _guarded(lambda: stop_capture(legacy_db_url, names))
        click.echo(
            f"stopped capturing {', '.join(stopped.tables)} in {stopped.connector} database "
            f"{stopped.database!r}; still captured: {', '.join(stopped.still_captured)}"
        )
        for item in stopped.dropped:
            click.echo(f"  dropped {item}")
        return
    result = _guarded(lambda: uninstall(legacy_db_url, force=force))
    click.echo(
        f"removed change capture from {result.connector} database {result.database!r}"
        + (f", discarding {result.discarded} unpublished change(s)" if result.discarded else "")
    )
    for item in result.dropped:
        click.echo(f"  dropped {item}")


@bridge.command("run")
@_LEGACY_DB_URL
@click.option(
    "--engine",
    type=click.Choice(["triggers", "debezium"]),
    default="triggers",
    show_default=True,
    help=(
        "triggers: relay what the capture triggers recorded (SQLite, PostgreSQL, MariaDB). "
        "debezium: capture from PostgreSQL's log with the embedded Debezium engine, no "
        "triggers (wal_level=logical; the 'debezium' extra and Java 17)."
    ),
)
@click.option(
    "--broker-url",
    envvar="BROKER_URL",
    required=True,
    help="amqp:// URL of RabbitMQ (env BROKER_URL).",
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
    default=None,
    help=(
        "Longest wait for new changes when idle; soon after changes the relay looks every "
        "few ms (or wakes at once on NOTIFY, see 'bridge install --notify') [default: 0.2]. "
        "Debezium: its poll.interval.ms, in seconds [default: 0.02]."
    ),
)
@click.option(
    "--exchange",
    default=DEFAULT_EXCHANGE,
    show_default=True,
    help="Topic exchange to publish to (its alternate exchange is <exchange>.unrouted).",
)
@click.option(
    "--heartbeat-interval",
    type=click.FloatRange(min=0.0),
    default=DEFAULT_HEARTBEAT_INTERVAL_S,
    show_default=True,
    help="Publish a heartbeat after this many idle seconds (0: never).",
)
@click.option(
    "--retention",
    type=click.FloatRange(min=0.0),
    default=DEFAULT_RETENTION_S,
    show_default=True,
    help="Seconds a confirmed change stays in the change table before it is pruned.",
)
@click.option("--once", is_flag=True, help="Publish what is pending now, then exit.")
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Serve Prometheus metrics on this port.",
)
@debezium_options
def run_command(
    legacy_db_url: str,
    engine: str,
    broker_url: str,
    batch_size: int,
    poll_interval: float | None,
    exchange: str,
    heartbeat_interval: float,
    retention: float,
    once: bool,
    metrics_port: int | None,
    **debezium: str | None,
) -> None:
    """Relay captured changes to the legacy.cdc exchange until SIGTERM/SIGINT.

    With --engine debezium: capture with Debezium from PostgreSQL's log instead (a
    publication and a replication slot, no triggers; see docs/debezium.md), publishing
    with confirms and storing Debezium's offsets only after the broker confirmed.
    """
    if engine == "debezium":
        check_engine_supported(legacy_db_url)
    if is_in_process(broker_url):
        raise click.ClickException(
            "--broker-url memory:// only reaches this process: use an amqp:// URL "
            "(or 'strangler demo' for the embedded setup)"
        )
    if not broker_url.startswith(("amqp://", "amqps://")):
        raise click.UsageError("--broker-url must be an amqp:// or amqps:// URL")

    if metrics_port is not None:
        from prometheus_client import start_http_server

        start_http_server(metrics_port)

    def broker_factory() -> Broker:
        return connect(broker_url)

    if engine == "debezium":
        if once:
            raise click.UsageError("--once applies to --engine triggers")
        settings = engine_settings(
            legacy_db_url, batch_size, poll_interval, heartbeat_interval, debezium
        )
        _guarded(lambda: run_debezium(settings, broker_factory, exchange, _stop_on_signals))
        return
    for option, value in debezium.items():
        if value is not None and option != "tables":
            name = option.replace("_", "-")
            raise click.UsageError(f"--{name} applies to --engine debezium")
    poll_interval = 0.2 if poll_interval is None else poll_interval
    try:
        relay = Relay(
            legacy_db_url,
            broker_factory=broker_factory,
            batch_size=batch_size,
            exchange=exchange,
            heartbeat_interval=heartbeat_interval or None,
            retention=retention,
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
