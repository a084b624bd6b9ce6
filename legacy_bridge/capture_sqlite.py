"""Capture on SQLite: three row triggers per table writing ``json_object`` images.

Commit order: SQLite has one writer at a time, so transactions commit in the order they
took ``change_id`` values, and one transaction's rows have consecutive ids; every
committed row is safe to claim.

Transactions: SQLite gives SQL no transaction identity (commit hooks belong to the C API
of the writing connection, which is the legacy application's). What the bridge can know
for sure is a *commit group*: the triggers stamp each row with the current value of the
one-row table ``strangler_txn_group``, and whoever takes the write lock between two
legacy transactions (a relay claim, a snapshot chunk) increments it. Since a legacy
transaction holds the write lock from its first write to its commit, a group boundary
always falls between two transactions: a group is one or more consecutive, complete
legacy transactions. Events carry the group as ``transaction.id`` (``source.txid`` stays
null): a consumer that applies each transaction block atomically never exposes a state
legacy did not have, it may only apply two legacy transactions as one.

Columns: the triggers list the columns found by reflection (SQLite cannot render a row as
JSON without naming its columns). ``PRAGMA schema_version`` tells the relay cheaply that a
table changed; it then re-creates the triggers of tables whose columns changed (see
:mod:`legacy_bridge.drift`). Rows written between the ``ALTER TABLE`` and that refresh
lack the new column in their images. SQLite refuses to drop a column a trigger uses:
run ``strangler bridge uninstall`` / ``install`` around such a migration.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import PurePath

from sqlalchemy import inspect, sql, types
from sqlalchemy.engine import Connection

from legacy_bridge.capture import CapturedTable, Signature, object_name, sql_literal
from legacy_bridge.tables import CHANGE_TABLE, PREFIX

GROUP_TABLE = f"{PREFIX}txn_group"
_NOW = "strftime('%Y-%m-%d %H:%M:%f', 'now')"  # UTC, read back as a naive datetime
_EVENTS = (("insert", "c"), ("update", "u"), ("delete", "d"))


class SqliteCapture:
    """SQLite implementation of :class:`~legacy_bridge.capture.CaptureDialect`."""

    connector = "sqlite"
    real_txids = False
    captures_new_columns = False
    snapshot_reads_in_python = False
    snapshot_lock = ""  # the chunk holds SQLite's write lock from its first statement on
    notifies = False

    def schema_name(self, conn: Connection) -> str | None:
        return None

    def database_name(self, conn: Connection) -> str:
        path = conn.engine.url.database
        return PurePath(path).stem if path and path != ":memory:" else "main"

    def install_support(self, conn: Connection, notify: bool = False) -> None:
        conn.exec_driver_sql(f"CREATE TABLE IF NOT EXISTS {GROUP_TABLE} (id INTEGER NOT NULL)")
        conn.exec_driver_sql(
            f"INSERT INTO {GROUP_TABLE} (id) SELECT 1"
            f" WHERE NOT EXISTS (SELECT 1 FROM {GROUP_TABLE})"
        )
        conn.exec_driver_sql(
            f"CREATE INDEX IF NOT EXISTS ix_strangler_change_pending ON {CHANGE_TABLE}"
            " (change_id) WHERE pos IS NULL"
        )
        conn.exec_driver_sql(
            f"CREATE INDEX IF NOT EXISTS ix_strangler_change_pending_tx ON {CHANGE_TABLE}"
            " (txid, change_id) WHERE pos IS NULL"
        )

    def signature(self, conn: Connection, table: CapturedTable) -> Signature:
        binary = _binary_columns(conn, table.name)
        return tuple(
            (column["name"], "binary" if column["name"] in binary else "value")
            for column in inspect(conn).get_columns(table.name)
        )

    def install_triggers(
        self, conn: Connection, tables: Sequence[CapturedTable]
    ) -> list[CapturedTable]:
        return [self._install(conn, table) for table in tables]

    def _install(self, conn: Connection, table: CapturedTable) -> CapturedTable:
        quote = conn.dialect.identifier_preparer.quote
        binary = _binary_columns(conn, table.name)
        names = []
        for event, op in _EVENTS:
            name = object_name(table.name, event, limit=1000)
            before = "NULL" if op == "c" else _image("OLD", table.columns, binary, quote)
            after = "NULL" if op == "d" else _image("NEW", table.columns, binary, quote)
            pk = _image("OLD" if op == "d" else "NEW", table.primary_key, binary, quote)
            conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS {quote(name)}")
            conn.exec_driver_sql(
                f"CREATE TRIGGER {quote(name)} AFTER {event.upper()} ON {quote(table.name)} "
                f"FOR EACH ROW BEGIN "
                f'INSERT INTO {quote(CHANGE_TABLE)} (txid, table_name, op, pk, "before", "after",'
                f" captured_at) VALUES ((SELECT id FROM {GROUP_TABLE}),"
                f" {sql_literal(table.name)}, {sql_literal(op)},"
                f" {pk}, {before}, {after}, {_NOW}); END"
            )
            names.append(name)
        return CapturedTable(table.name, table.primary_key, table.columns, tuple(names))

    def remove(self, conn: Connection) -> list[str]:
        quote = conn.dialect.identifier_preparer.quote
        triggers = conn.execute(
            sql.text(
                "SELECT name FROM sqlite_master WHERE type = 'trigger'"
                " AND substr(name, 1, :n) = :prefix ORDER BY name"
            ),
            {"n": len(PREFIX), "prefix": PREFIX},
        ).scalars()
        dropped = []
        for name in list(triggers):
            conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS {quote(name)}")
            dropped.append(f"trigger {name}")
        if inspect(conn).has_table(GROUP_TABLE):
            conn.exec_driver_sql(f"DROP TABLE {GROUP_TABLE}")
            dropped.append(f"table {GROUP_TABLE}")
        return dropped

    def remove_triggers(self, conn: Connection, table: str) -> list[str]:
        quote = conn.dialect.identifier_preparer.quote
        dropped = []
        for event, _ in _EVENTS:
            name = object_name(table, event, limit=1000)
            conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS {quote(name)}")
            dropped.append(f"trigger {name}")
        return dropped

    def lock_claims(self, conn: Connection) -> None:
        # takes SQLite's write lock until this transaction ends, and closes the commit
        # group: every row stamped with an older group is committed and complete
        conn.execute(sql.text(f"UPDATE {GROUP_TABLE} SET id = id + 1"))

    def begin_chunk(self, conn: Connection) -> int:
        # close the legacy group, take the next one for this chunk alone, and leave the
        # one after it to the legacy transactions that follow
        conn.execute(sql.text(f"UPDATE {GROUP_TABLE} SET id = id + 2"))
        return int(conn.execute(sql.text(f"SELECT id - 1 FROM {GROUP_TABLE}")).scalar_one())

    def end_chunk(self, conn: Connection) -> None:
        return None

    def row_image(self, conn: Connection, table: CapturedTable, alias: str) -> str:
        quote = conn.dialect.identifier_preparer.quote
        binary = _binary_columns(conn, table.name)
        return _image(quote(alias), table.columns, binary, quote)

    def key_image(self, conn: Connection, table: CapturedTable, alias: str) -> str:
        quote = conn.dialect.identifier_preparer.quote
        binary = _binary_columns(conn, table.name)
        return _image(quote(alias), table.primary_key, binary, quote)

    def now(self) -> str:
        return _NOW

    def estimate_rows(self, conn: Connection, table: str) -> int | None:
        quote = conn.dialect.identifier_preparer.quote
        return int(conn.exec_driver_sql(f"SELECT count(*) FROM {quote(table)}").scalar_one())

    def schema_token(self, conn: Connection) -> object | None:
        return conn.exec_driver_sql("PRAGMA schema_version").scalar()


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
