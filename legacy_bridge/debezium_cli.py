"""The ``--engine debezium`` parts of ``strangler bridge run`` and ``bridge status``."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, TypeVar

import click
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url

from broker import Broker
from legacy_bridge.debezium_engine import (
    DEFAULT_SLOT,
    EngineError,
    EngineSettings,
    check_name,
    check_supported,
    offsets_table,
)

log = logging.getLogger("legacy_bridge")

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_POLL_S = 0.02


def debezium_options(command: F) -> F:
    """The options only ``--engine debezium`` takes (None when not given)."""
    options = [
        click.option(
            "--tables",
            envvar="BRIDGE_TABLES",
            metavar="T1,T2",
            default=None,
            help=(
                "Debezium: tables to capture, strangler_origin too when it exists (env "
                "BRIDGE_TABLES). Required. The trigger relay ignores it."
            ),
        ),
        click.option(
            "--slot",
            default=None,
            help=f"Debezium: the replication slot's name [default: {DEFAULT_SLOT}].",
        ),
        click.option(
            "--publication",
            default=None,
            help="Debezium: the publication of the captured tables [default: the slot's name].",
        ),
        click.option(
            "--server-name",
            default=None,
            help="Debezium: topic.prefix, the events' source.name [default: legacy].",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def check_engine_supported(legacy_db_url: str) -> None:
    try:
        check_supported(legacy_db_url)
    except EngineError as error:
        raise click.ClickException(str(error)) from None
    except Exception as error:  # noqa: BLE001 - an unreadable URL
        raise click.ClickException(f"invalid --legacy-db-url: {error}") from None


def engine_settings(
    legacy_db_url: str,
    batch_size: int,
    poll_interval: float | None,
    heartbeat_interval: float,
    given: dict[str, str | None],
) -> EngineSettings:
    tables = [name.strip() for name in (given.get("tables") or "").split(",") if name.strip()]
    if not tables:
        raise click.UsageError("--engine debezium needs --tables T1,T2 (the tables to capture)")
    slot = given.get("slot") or DEFAULT_SLOT
    return EngineSettings(
        legacy_db_url=legacy_db_url,
        tables=tables,
        slot=slot,
        publication=given.get("publication") or slot,
        server_name=given.get("server_name") or "legacy",
        poll_interval_ms=max(1, round(1000 * (poll_interval or DEFAULT_POLL_S))),
        heartbeat_ms=round(1000 * heartbeat_interval),
        max_batch=batch_size,
    )


def run_debezium(
    settings: EngineSettings,
    broker_factory: Callable[[], Broker],
    exchange: str,
    on_signals: Callable[[threading.Event], AbstractContextManager[None]],
) -> None:
    try:
        from legacy_bridge.debezium_runner import run_engine
    except ImportError as error:
        raise EngineError(
            f"--engine debezium needs the 'debezium' extra (pip install "
            f"'strangler-kit[debezium]') and Java 17: {error}"
        ) from None
    stop = threading.Event()
    with on_signals(stop):
        publisher = run_engine(settings, broker_factory, exchange, stop)
    log.info("Debezium capture stopped after publishing %d records", publisher.published)


@dataclass(frozen=True)
class SlotStatus:
    """What PostgreSQL says about the engine's replication slot."""

    slot: str
    plugin: str
    active: bool
    confirmed_flush_lsn: str | None
    restart_lsn: str | None
    retained_wal_bytes: int | None
    publication_tables: list[str]
    stored_offset: str | None

    def lines(self) -> Iterator[str]:
        state = "in use (an engine is streaming)" if self.active else "not in use"
        yield f"replication slot {self.slot!r} ({self.plugin}): {state}"
        yield f"  confirmed flush LSN:  {self.confirmed_flush_lsn or '(none yet)'}"
        yield f"  restart LSN:          {self.restart_lsn or '(none yet)'}"
        retained = self.retained_wal_bytes
        yield f"  WAL held by the slot: {'?' if retained is None else f'{retained} bytes'}"
        yield f"  publication tables:   {', '.join(self.publication_tables) or '(none)'}"
        yield f"  stored offset:        {self.stored_offset or '(none yet)'}"


def slot_status(legacy_db_url: str, slot: str, publication: str) -> SlotStatus:
    """The slot's row of ``pg_replication_slots``; :class:`EngineError` when it is missing."""
    check_supported(legacy_db_url)
    check_name(slot, "--slot")
    check_name(publication, "--publication")
    engine = create_engine(legacy_db_url)
    try:
        with engine.connect() as conn:
            row = conn.execute(
                text(
                    "SELECT plugin, active, confirmed_flush_lsn::text, restart_lsn::text,"
                    " pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint"
                    " FROM pg_replication_slots"
                    " WHERE slot_name = :s AND database = current_database()"
                ),
                {"s": slot},
            ).first()
            tables = conn.execute(
                text(
                    "SELECT schemaname || '.' || tablename FROM pg_publication_tables"
                    " WHERE pubname = :p ORDER BY 1"
                ),
                {"p": publication},
            ).scalars()
            published = list(tables)
            stored = _stored_offset(conn, offsets_table(slot))
    finally:
        engine.dispose()
    if row is None:
        raise EngineError(f"no replication slot {slot!r} in this database: capture never ran here")
    return SlotStatus(slot, row[0], bool(row[1]), row[2], row[3], row[4], published, stored)


def _stored_offset(conn: Any, table: str) -> str | None:
    """Debezium's stored offset for the slot (its JDBC offset table), as it wrote it."""
    if conn.execute(text("SELECT to_regclass(:t)"), {"t": table}).scalar() is None:
        return None
    value = conn.execute(
        text(f'SELECT offset_val FROM "{table}" ORDER BY record_insert_ts DESC LIMIT 1')
    ).scalar()
    return None if value is None else str(value)


def engine_slots(legacy_db_url: str) -> list[SlotStatus]:
    """The status of every slot of this database the kit's engine has run on (a slot with
    the engine's offsets table); none on a database that is not PostgreSQL."""
    if make_url(legacy_db_url).get_backend_name() != "postgresql":
        return []
    engine = create_engine(legacy_db_url)
    try:
        with engine.connect() as conn:
            names = conn.execute(
                text(
                    "SELECT slot_name FROM pg_replication_slots"
                    " WHERE database = current_database() ORDER BY slot_name"
                )
            ).scalars()
            tables = set(inspect(conn).get_table_names())
            slots = [n for n in names if offsets_table(n) in tables]
    finally:
        engine.dispose()
    return [slot_status(legacy_db_url, slot, slot) for slot in slots]
