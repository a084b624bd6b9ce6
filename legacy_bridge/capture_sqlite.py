"""Capture on SQLite: three row triggers per table writing ``json_object`` images.

Commit order: SQLite has one writer at a time, so transactions commit in the order they
took ``change_id`` values; every committed row is safe to claim.
The triggers list the columns found by reflection: re-run install after a column is added.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import PurePath

from sqlalchemy import inspect, sql, types
from sqlalchemy.engine import Connection

from legacy_bridge.capture import CapturedTable, sql_literal
from legacy_bridge.tables import CHANGE_TABLE, PREFIX, STATE_TABLE

_NOW = "strftime('%Y-%m-%d %H:%M:%f', 'now')"  # UTC, read back as a naive datetime
_EVENTS = (("insert", "c"), ("update", "u"), ("delete", "d"))


class SqliteCapture:
    """SQLite implementation of :class:`~legacy_bridge.capture.CaptureDialect`."""

    connector = "sqlite"

    def schema_name(self, conn: Connection) -> str | None:
        return None

    def database_name(self, conn: Connection) -> str:
        path = conn.engine.url.database
        return PurePath(path).stem if path and path != ":memory:" else "main"

    def install_triggers(
        self, conn: Connection, tables: Sequence[CapturedTable]
    ) -> list[CapturedTable]:
        return [self._install(conn, table) for table in tables]

    def _install(self, conn: Connection, table: CapturedTable) -> CapturedTable:
        quote = conn.dialect.identifier_preparer.quote
        binary = _binary_columns(conn, table.name)
        names = []
        for event, op in _EVENTS:
            name = f"{PREFIX}{table.name}_{event}"
            before = "NULL" if op == "c" else _image("OLD", table.columns, binary, quote)
            after = "NULL" if op == "d" else _image("NEW", table.columns, binary, quote)
            pk = _image("OLD" if op == "d" else "NEW", table.primary_key, binary, quote)
            conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS {quote(name)}")
            conn.exec_driver_sql(
                f"CREATE TRIGGER {quote(name)} AFTER {event.upper()} ON {quote(table.name)} "
                f"FOR EACH ROW BEGIN "
                f'INSERT INTO {quote(CHANGE_TABLE)} (txid, table_name, op, pk, "before", "after",'
                f" captured_at) VALUES (NULL, {sql_literal(table.name)}, {sql_literal(op)},"
                f" {pk}, {before}, {after}, {_NOW}); END"
            )
            names.append(name)
        return CapturedTable(table.name, table.primary_key, table.columns, tuple(names))

    def lock_claims(self, conn: Connection) -> None:
        # a write takes SQLite's database write lock until this transaction ends
        conn.execute(sql.text(f"UPDATE {STATE_TABLE} SET last_confirmed_pos = last_confirmed_pos"))


def _binary_columns(conn: Connection, table: str) -> set[str]:
    return {
        c["name"]
        for c in inspect(conn).get_columns(table)
        if isinstance(c["type"], types.LargeBinary)
    }


def _image(
    row: str, columns: tuple[str, ...], binary: set[str], quote: Callable[[str], str]
) -> str:
    parts = []
    for column in columns:
        value = f"{row}.{quote(column)}"
        if column in binary:  # JSON cannot hold BLOBs: hex text, like PostgreSQL's bytea
            value = f"CASE WHEN {value} IS NULL THEN NULL ELSE '\\x' || lower(hex({value})) END"
        parts.append(f"{sql_literal(column)}, {value}")
    return f"json_object({', '.join(parts)})"
