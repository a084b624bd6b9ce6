"""Installing change capture into the legacy database (idempotent), and removing it."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Table, insert, inspect, select, update
from sqlalchemy.engine import Connection, Engine

from legacy_bridge.capture import CapturedTable, dialect_for
from legacy_bridge.change_log import backlog
from legacy_bridge.database import make_engine
from legacy_bridge.errors import BridgeError, BridgeNotInstalled, UnknownTable
from legacy_bridge.registry import record, reflect
from legacy_bridge.tables import (
    ADDED_CHANGE_COLUMNS,
    ADDED_STATE_COLUMNS,
    BRIDGE_TABLES,
    CHANGE_TABLE,
    STATE_TABLE,
    change,
    relay_state,
)

DEFAULT_TABLES: tuple[str, ...] = ("prod_catalog", "stock_lot", "cust_order_line", "lot_allocation")
"""The legacy shop's tables, in dependency order."""


@dataclass(frozen=True)
class InstallResult:
    """What :func:`install` set up."""

    install_id: str
    server_name: str
    connector: str
    database: str
    schema: str | None
    tables: tuple[CapturedTable, ...]
    created: bool
    """False when capture was already installed (state and pending changes were kept)."""


@dataclass(frozen=True)
class UninstallResult:
    """What :func:`uninstall` removed."""

    connector: str
    database: str
    dropped: tuple[str, ...]
    discarded: int
    """Captured changes the broker had not confirmed (only with ``force``)."""


def install(
    legacy_db_url: str | Engine,
    tables: Sequence[str] | None = None,
    server_name: str = "legacy",
) -> InstallResult:
    """Install (or refresh, or upgrade) change capture for ``tables``.

    Creates the bridge's tables if missing (adding columns an older install lacks), then
    replaces the row triggers of each table and records its columns. A re-install keeps
    the install id, the checkpoint and every captured change; it updates the server name
    stamped on future events. Raises :class:`UnknownTable` before changing anything if a
    table cannot be captured. One transaction on PostgreSQL and SQLite; on MariaDB DDL
    commits as it goes, and running install again completes an interrupted one.
    """
    names = tuple(tables) if tables is not None else DEFAULT_TABLES
    if not names:
        raise UnknownTable("no tables to capture")
    engine, owned = make_engine(legacy_db_url)
    try:
        with engine.begin() as conn:
            dialect = dialect_for(conn)
            schema = dialect.schema_name(conn)
            captured = [reflect(conn, name, schema) for name in dict.fromkeys(names)]
            for table in BRIDGE_TABLES:
                table.create(conn, checkfirst=True)
            _add_missing_columns(conn, change, ADDED_CHANGE_COLUMNS, schema)
            _add_missing_columns(conn, relay_state, ADDED_STATE_COLUMNS, schema)
            dialect.install_support(conn)
            install_id, created = _ensure_state(conn, server_name)
            installed = dialect.install_triggers(conn, captured)
            record(conn, dialect, installed)
            return InstallResult(
                install_id=install_id,
                server_name=server_name,
                connector=dialect.connector,
                database=dialect.database_name(conn),
                schema=schema,
                tables=tuple(installed),
                created=created,
            )
    finally:
        if owned:
            engine.dispose()


def uninstall(legacy_db_url: str | Engine, force: bool = False) -> UninstallResult:
    """Remove everything :func:`install` added: triggers, functions, sequences, tables.

    Refuses (:class:`BridgeError`) while captured changes are not confirmed by the broker,
    unless ``force``. Raises :class:`BridgeNotInstalled` when there is nothing to remove.
    Stop the relay first.
    """
    engine, owned = make_engine(legacy_db_url)
    try:
        with engine.begin() as conn:
            dialect = dialect_for(conn)
            schema = dialect.schema_name(conn)
            inspector = inspect(conn)
            discarded = 0
            if inspector.has_table(CHANGE_TABLE, schema=schema):
                confirmed = 0
                if inspector.has_table(STATE_TABLE, schema=schema):
                    state = conn.execute(select(relay_state.c.last_confirmed_pos)).first()
                    confirmed = int(state[0]) if state else 0
                discarded = backlog(conn, confirmed)
                if discarded and not force:
                    raise BridgeError(
                        f"{discarded} captured change(s) are not confirmed by the broker yet: "
                        "let 'strangler bridge run' publish them, or uninstall with --force "
                        "to discard them"
                    )
            dropped = dialect.remove(conn)
            for table in reversed(BRIDGE_TABLES):
                if inspector.has_table(table.name, schema=schema):
                    table.drop(conn)
                    dropped.append(f"table {table.name}")
            if not dropped:
                raise BridgeNotInstalled(
                    "nothing to uninstall: change capture is not installed in this database"
                )
            return UninstallResult(
                dialect.connector, dialect.database_name(conn), tuple(dropped), discarded
            )
    finally:
        if owned:
            engine.dispose()


def _add_missing_columns(
    conn: Connection, table: Table, names: Sequence[str], schema: str | None
) -> None:
    existing = {c["name"] for c in inspect(conn).get_columns(table.name, schema=schema)}
    quote = conn.dialect.identifier_preparer.quote
    target = quote(table.name) if schema is None else f"{quote(schema)}.{quote(table.name)}"
    for name in names:
        if name not in existing:
            column_type = table.c[name].type.compile(dialect=conn.dialect)
            conn.exec_driver_sql(f"ALTER TABLE {target} ADD COLUMN {quote(name)} {column_type}")


def _ensure_state(conn: Connection, server_name: str) -> tuple[str, bool]:
    rows = conn.execute(select(relay_state.c.install_id)).scalars().all()
    if rows:
        conn.execute(update(relay_state).values(server_name=server_name))
        return str(rows[0]), False
    install_id = str(uuid.uuid4())
    conn.execute(
        insert(relay_state).values(
            install_id=install_id, last_confirmed_pos=0, server_name=server_name
        )
    )
    return install_id, True
