"""The capture dialect port: what differs between database engines.

A :class:`CaptureDialect` installs row triggers that write into ``strangler_change``
and tells the relay which pending rows are safe to claim. Everything else (tables,
claiming, publishing) is shared SQLAlchemy Core code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy.engine import Connection, Engine

from legacy_bridge.errors import BridgeError


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
    """Name stamped on events as ``source.connector`` (``postgresql``, ``sqlite``)."""

    def schema_name(self, conn: Connection) -> str | None:
        """The schema the bridge installs into and captures from (None if none)."""

    def database_name(self, conn: Connection) -> str:
        """Name stamped on events as ``source.db``."""

    def install_triggers(
        self, conn: Connection, tables: Sequence[CapturedTable]
    ) -> list[CapturedTable]:
        """Create or replace the tables' capture triggers; return them with their names."""

    def lock_claims(self, conn: Connection) -> None:
        """Serialise claiming with any other relay until this transaction ends."""


def dialect_for(engine: Engine | Connection) -> CaptureDialect:
    """The capture dialect for ``engine``'s database."""
    name = engine.dialect.name
    if name == "sqlite":
        from legacy_bridge.capture_sqlite import SqliteCapture

        return SqliteCapture()
    if name == "postgresql":
        from legacy_bridge.capture_postgres import PostgresCapture

        return PostgresCapture()
    raise BridgeError(f"cannot capture changes on {name}: supported are sqlite and postgresql")


def sql_literal(value: str) -> str:
    """``value`` as an SQL string literal."""
    return "'" + value.replace("'", "''") + "'"
