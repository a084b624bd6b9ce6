"""The capture dialect port: what differs between database engines.

A :class:`CaptureDialect` installs row triggers that write into ``strangler_change``,
serialises claims, names the transaction a snapshot chunk runs in and renders row images
in SQL. Everything else (tables, claiming, publishing, snapshots) is shared SQLAlchemy
code. Implementations: :mod:`~legacy_bridge.capture_postgres`,
:mod:`~legacy_bridge.capture_sqlite`, :mod:`~legacy_bridge.capture_mariadb`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy.engine import Connection, Engine

from legacy_bridge.errors import BridgeError
from legacy_bridge.tables import PREFIX

Signature = tuple[tuple[str, str], ...]
"""``(column, kind)`` pairs in table order: what a table's triggers were built for."""


@dataclass(frozen=True)
class CapturedTable:
    """A legacy table under capture, as found by reflection."""

    name: str
    primary_key: tuple[str, ...]
    columns: tuple[str, ...]
    triggers: tuple[str, ...] = ()


class CaptureDialect(Protocol):
    """One database engine's capture mechanics."""

    connector: str
    """Name stamped on events as ``source.connector``."""

    real_txids: bool
    """True when ``txid`` names one legacy transaction; False when it names a commit group
    (SQLite), which then shows only as ``transaction.id``."""

    captures_new_columns: bool
    """True when row images follow added columns without re-creating triggers."""

    snapshot_reads_in_python: bool
    """True when a snapshot chunk must be read into Python and inserted with VALUES
    instead of ``INSERT ... SELECT`` (see the dialect's docstring for why)."""

    snapshot_lock: str
    """Locking clause appended to a snapshot chunk's SELECT (may be empty)."""

    notifies: bool
    """True when the capture can notify a listening relay (``install(notify=True)``)."""

    def schema_name(self, conn: Connection) -> str | None:
        """The schema the bridge installs into and captures from (None if none)."""

    def database_name(self, conn: Connection) -> str:
        """Name stamped on events as ``source.db``."""

    def install_support(self, conn: Connection, notify: bool = False) -> None:
        """Create (or replace) the dialect's helper objects and indexes (idempotent).

        ``notify``: the capture also wakes a listening relay at commit (only where
        :attr:`notifies` is True)."""

    def signature(self, conn: Connection, table: CapturedTable) -> Signature:
        """The table's current columns, as far as its triggers depend on them."""

    def install_triggers(
        self, conn: Connection, tables: Sequence[CapturedTable]
    ) -> list[CapturedTable]:
        """Create or replace the tables' capture triggers; return them with their names."""

    def remove(self, conn: Connection) -> list[str]:
        """Drop every trigger and helper object install created; return what was dropped
        (the shared tables are dropped by the caller)."""

    def remove_triggers(self, conn: Connection, table: str) -> list[str]:
        """Drop the capture triggers of one table; return what was dropped."""

    def lock_claims(self, conn: Connection) -> None:
        """Serialise claiming with any other relay until this transaction ends."""

    def begin_chunk(self, conn: Connection) -> int:
        """Start a snapshot chunk in this transaction; return the chunk's transaction id."""

    def end_chunk(self, conn: Connection) -> None:
        """Finish a snapshot chunk (still inside its transaction)."""

    def row_image(self, conn: Connection, table: CapturedTable, alias: str) -> str:
        """SQL expression rendering row ``alias`` of ``table`` as the triggers do."""

    def key_image(self, conn: Connection, table: CapturedTable, alias: str) -> str:
        """SQL expression rendering the primary key of row ``alias`` as the triggers do."""

    def now(self) -> str:
        """SQL expression for the capture time, as the triggers store it."""

    def estimate_rows(self, conn: Connection, table: str) -> int | None:
        """A cheap estimate of the table's row count (None if unknown)."""

    def schema_token(self, conn: Connection) -> object | None:
        """A cheap value that changes when any table definition changes (None: unknown,
        compare signatures instead)."""


def is_mariadb(engine: Engine | Connection) -> bool:
    return engine.dialect.name in ("mysql", "mariadb")


def dialect_for(engine: Engine | Connection) -> CaptureDialect:
    """The capture dialect for ``engine``'s database."""
    name = engine.dialect.name
    if name == "sqlite":
        from legacy_bridge.capture_sqlite import SqliteCapture

        return SqliteCapture()
    if name == "postgresql":
        from legacy_bridge.capture_postgres import PostgresCapture

        return PostgresCapture()
    if is_mariadb(engine):
        from legacy_bridge.capture_mariadb import MariadbCapture

        if isinstance(engine, Connection) and not getattr(engine.dialect, "is_mariadb", False):
            raise BridgeError("cannot capture changes on MySQL: supported is MariaDB 10.3+")

        return MariadbCapture()
    raise BridgeError(
        f"cannot capture changes on {name}: supported are sqlite, postgresql and mariadb"
    )


def sql_literal(value: str) -> str:
    """``value`` as an SQL string literal."""
    return "'" + value.replace("'", "''") + "'"


def object_name(table: str, suffix: str, limit: int = 64) -> str:
    """``strangler_<table>_<suffix>``, shortened with a hash when over ``limit`` chars."""
    name = f"{PREFIX}{table}_{suffix}"
    if len(name) <= limit:
        return name
    digest = hashlib.sha1(table.encode()).hexdigest()[:8]
    keep = limit - len(PREFIX) - len(suffix) - len(digest) - 2
    return f"{PREFIX}{table[:keep]}{digest}_{suffix}"
