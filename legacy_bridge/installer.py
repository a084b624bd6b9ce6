"""Installing change capture into the legacy database (idempotent), and removing it."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Table, insert, inspect, select, update
from sqlalchemy.engine import Connection, Engine
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_random_exponential

from legacy_bridge.capture import CapturedTable, dialect_for
from legacy_bridge.change_log import backlog
from legacy_bridge.database import make_engine
from legacy_bridge.errors import BridgeError, BridgeNotInstalled, UnknownTable
from legacy_bridge.registry import forget, record, reflect, registered
from legacy_bridge.tables import (
    ADDED_CHANGE_COLUMNS,
    ADDED_STATE_COLUMNS,
    ALWAYS_CAPTURED,
    BRIDGE_TABLES,
    CAPTURE_TABLE,
    CHANGE_TABLE,
    STATE_TABLE,
    change,
    relay_state,
)


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
    notify: bool = False
    """True when the capture trigger notifies the relay at commit (PostgreSQL)."""


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
    notify: bool | None = None,
) -> InstallResult:
    """Install (or refresh, or upgrade) change capture for ``tables``.

    Without ``tables``: the tables captured already (a refresh); a table whose capture was
    stopped comes back only when named. Raises :class:`BridgeError` without ``tables`` when
    nothing is captured yet: the bridge knows no table names of its own.
    Creates the bridge's tables if missing (adding columns an older install lacks), then
    replaces the row triggers of each table and records its columns. The origin marker
    table ``strangler_origin`` is captured too, always, after the named tables. A re-install keeps
    the install id, the checkpoint and every captured change; it updates the server name
    stamped on future events. Raises :class:`UnknownTable` before changing anything if a
    table cannot be captured. One transaction on PostgreSQL and SQLite; on MariaDB DDL
    commits as it goes, and running install again completes an interrupted one.

    ``notify`` (PostgreSQL only): the capture trigger also calls ``pg_notify`` so that a
    listening relay wakes at commit. It costs the legacy database its group commit under
    concurrent writers (see :mod:`legacy_bridge.capture_postgres`), so it is off unless
    asked for; without it the relay polls adaptively. None keeps what the install
    recorded (off on a first install, and on an upgrade of an install that predates the
    choice). Raises :class:`BridgeError` for ``notify=True`` on another database.
    """
    if tables is not None and not tables:
        raise UnknownTable("no tables to capture")
    engine, owned = make_engine(legacy_db_url)
    try:
        # the triggers' DDL locks the captured tables one after another while the relay
        # and legacy work on them: the database may end the install as a deadlock victim;
        # the install is one transaction (PostgreSQL, SQLite) or completes on a re-run
        # (MariaDB), so it is simply run again
        retrying = Retrying(
            retry=retry_if_exception(is_deadlock),
            wait=wait_random_exponential(multiplier=0.05, max=1.0),
            stop=stop_after_attempt(DEADLOCK_ATTEMPTS),
            reraise=True,
        )
        return retrying(_install, engine, tables, server_name, notify)
    finally:
        if owned:
            engine.dispose()


DEADLOCK_ATTEMPTS = 5


def is_deadlock(error: BaseException) -> bool:
    """The database chose this transaction as a deadlock's victim (PostgreSQL's 40P01,
    MariaDB's 1213)."""
    orig = getattr(error, "orig", None)
    if getattr(orig, "sqlstate", None) == "40P01":
        return True
    args: tuple[object, ...] = tuple(getattr(orig, "args", ()))
    return len(args) > 0 and args[0] == 1213


def _install(
    engine: Engine, tables: Sequence[str] | None, server_name: str, notify: bool | None
) -> InstallResult:
    with engine.begin() as conn:
        dialect = dialect_for(conn)
        if notify and not dialect.notifies:
            raise BridgeError(f"--notify needs PostgreSQL; on {dialect.connector} the relay polls")
        schema = dialect.schema_name(conn)
        names = tuple(tables) if tables is not None else _captured(conn, schema)
        _check_tables(conn, names, schema)
        for table in BRIDGE_TABLES:
            table.create(conn, checkfirst=True)
        names = (*names, *ALWAYS_CAPTURED)
        captured = [reflect(conn, name, schema) for name in dict.fromkeys(names)]
        _add_missing_columns(conn, change, ADDED_CHANGE_COLUMNS, schema)
        _add_missing_columns(conn, relay_state, ADDED_STATE_COLUMNS, schema)
        install_id, created, notifying = _ensure_state(conn, server_name, notify)
        dialect.install_support(conn, notify=notifying)
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
            notify=notifying,
        )


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


@dataclass(frozen=True)
class StopResult:
    """What :func:`stop_capture` removed."""

    connector: str
    database: str
    tables: tuple[str, ...]
    dropped: tuple[str, ...]
    still_captured: tuple[str, ...]


def stop_capture(legacy_db_url: str | Engine, tables: Sequence[str]) -> StopResult:
    """Stop capturing ``tables``; every other captured table, the relay's state and the
    change table stay as they are.

    Changes of those tables captured before this call stay in the change table and are
    published by the relay like any other; none is captured after it (the triggers are
    dropped in the same transaction that forgets the tables, on PostgreSQL and SQLite;
    MariaDB commits each DROP TRIGGER as it goes, and running this again completes it).
    Raises :class:`UnknownTable` for a table that is not captured, and
    :class:`BridgeError` when no table would be left (use :func:`uninstall`).
    """
    names = tuple(dict.fromkeys(tables))
    if not names:
        raise UnknownTable("no tables to stop capturing")
    engine, owned = make_engine(legacy_db_url)
    try:
        with engine.begin() as conn:
            dialect = dialect_for(conn)
            schema = dialect.schema_name(conn)
            if not inspect(conn).has_table(CAPTURE_TABLE, schema=schema):
                raise BridgeNotInstalled(
                    "change capture is not installed in this database (run 'strangler bridge "
                    "install')"
                )
            captured = [entry.table.name for entry in registered(conn, schema)]
            kept = [name for name in names if name in ALWAYS_CAPTURED]
            if kept:
                raise BridgeError(
                    f"{', '.join(kept)} is always captured: back-sync's origin markers must "
                    "travel with their transactions (docs/write-path.md)"
                )
            unknown = [name for name in names if name not in captured]
            if unknown:
                raise UnknownTable(
                    f"not captured: {', '.join(unknown)} (captured: {', '.join(captured)})"
                )
            remaining = tuple(name for name in captured if name not in names)
            if not [name for name in remaining if name not in ALWAYS_CAPTURED]:
                raise BridgeError(
                    "that would leave no table captured: run 'strangler bridge uninstall' "
                    "without --tables to remove change capture entirely"
                )
            dropped: list[str] = []
            for name in names:
                dropped.extend(dialect.remove_triggers(conn, name))
                forget(conn, name)
            return StopResult(
                dialect.connector, dialect.database_name(conn), names, tuple(dropped), remaining
            )
    finally:
        if owned:
            engine.dispose()


def _check_tables(conn: Connection, names: Sequence[str], schema: str | None) -> None:
    """Raise :class:`UnknownTable` before anything is created if a legacy table named
    cannot be captured (the bridge's own tables other than the origin marker included)."""
    for name in names:
        if name not in ALWAYS_CAPTURED:
            reflect(conn, name, schema)


def _captured(conn: Connection, schema: str | None) -> tuple[str, ...]:
    if inspect(conn).has_table(CAPTURE_TABLE, schema=schema):
        names = tuple(entry.table.name for entry in registered(conn, schema))
        if [name for name in names if name not in ALWAYS_CAPTURED]:
            return names
    raise BridgeError(
        "no tables to capture: nothing is captured yet, name them with --tables T1,T2 "
        "or BRIDGE_TABLES"
    )


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


def _ensure_state(
    conn: Connection, server_name: str, notify: bool | None
) -> tuple[str, bool, bool]:
    """``(install_id, created, notify)``; ``notify`` None keeps the recorded choice."""
    row = conn.execute(select(relay_state.c.install_id, relay_state.c.notify)).first()
    if row is not None:
        notifying = bool(row.notify) if notify is None else notify
        conn.execute(update(relay_state).values(server_name=server_name, notify=notifying))
        return str(row.install_id), False, notifying
    install_id = str(uuid.uuid4())
    conn.execute(
        insert(relay_state).values(
            install_id=install_id,
            last_confirmed_pos=0,
            server_name=server_name,
            notify=bool(notify),
        )
    )
    return install_id, True, bool(notify)
