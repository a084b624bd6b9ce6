"""Installing change capture into the legacy database (idempotent)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import insert, inspect, select, update
from sqlalchemy.engine import Connection, Engine

from legacy_bridge.capture import CapturedTable, dialect_for
from legacy_bridge.database import make_engine
from legacy_bridge.errors import UnknownTable
from legacy_bridge.tables import PREFIX, change, relay_state

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


def install(
    legacy_db_url: str | Engine,
    tables: Sequence[str] | None = None,
    server_name: str = "legacy",
) -> InstallResult:
    """Install (or refresh) change capture for ``tables`` in one transaction.

    Creates ``strangler_change`` and ``strangler_relay_state`` if missing, then replaces
    the row triggers of each table. A re-install keeps the install id, the checkpoint and
    every captured change; it updates the server name stamped on future events.
    Raises :class:`UnknownTable` before changing anything if a table cannot be captured.
    """
    names = tuple(tables) if tables is not None else DEFAULT_TABLES
    if not names:
        raise UnknownTable("no tables to capture")
    engine, owned = make_engine(legacy_db_url)
    try:
        with engine.begin() as conn:
            dialect = dialect_for(conn)
            schema = dialect.schema_name(conn)
            captured = [_reflect(conn, name, schema) for name in dict.fromkeys(names)]
            change.create(conn, checkfirst=True)
            relay_state.create(conn, checkfirst=True)
            install_id, created = _ensure_state(conn, server_name)
            installed = dialect.install_triggers(conn, captured)
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


def _reflect(conn: Connection, name: str, schema: str | None) -> CapturedTable:
    if name.startswith(PREFIX):
        raise UnknownTable(f"table {name!r} belongs to the bridge and cannot be captured")
    inspector = inspect(conn)
    if not inspector.has_table(name, schema=schema):
        raise UnknownTable(f"no table {name!r} in the legacy database")
    primary_key = tuple(inspector.get_pk_constraint(name, schema=schema)["constrained_columns"])
    if not primary_key:
        raise UnknownTable(f"table {name!r} has no primary key: capture needs one")
    columns = tuple(column["name"] for column in inspector.get_columns(name, schema=schema))
    return CapturedTable(name, primary_key, columns)


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
