"""Capture on MariaDB (10.3+): three row triggers per table writing ``JSON_OBJECT`` images.

Commit order: ``change_id`` is an InnoDB ``AUTO_INCREMENT`` value, taken when the
trigger's single-row ``INSERT ... VALUES`` runs, not at commit. For such "simple inserts"
InnoDB hands out ids from one counter, under a mutex, in call order, whatever
``innodb_autoinc_lock_mode`` (0, 1 or 2) says: the modes differ only for inserts whose
row count is unknown up front (``INSERT ... SELECT``), which may reserve ids ahead of the
rows. The bridge never inserts that way: triggers insert one row, snapshot chunks read
their rows first and insert them with a multi-row ``VALUES`` (see
:mod:`legacy_bridge.snapshot`). So the argument of :mod:`legacy_bridge.change_log`
holds: a change written after another transaction committed has a higher id. The counter
is persistent since MariaDB 10.2.4, so pruned ids are never reused after a restart.

Isolation: MariaDB sessions default to REPEATABLE READ. The relay's connections use READ
COMMITTED (:func:`legacy_bridge.database.make_engine`): every claim reads what is
committed now, and the relay's range reads and deletes take no gap locks that would block
the triggers' inserts.

Transaction ids: MariaDB offers no reliable id of the current transaction to a trigger.
``information_schema.INNODB_TRX`` is served from a cache refreshed at most every 100 ms
(and never while it keeps being read), so consecutive transactions read the same stale id.
The triggers therefore detect transaction boundaries themselves, per session:

- a transaction boundary is a statement that starts or ends a transaction. The session
  status counters ``Com_*`` count every statement the session ran, by kind; their sum over
  every kind except plain DML, ``SELECT``, ``SET`` and bookkeeping ones (which never end
  a transaction) changes exactly when such a statement ran (``BEGIN``, ``COMMIT``,
  ``ROLLBACK``, XA, and every statement with an implicit commit: DDL, ``LOCK TABLES``...);
- in autocommit mode (``@@in_transaction = 0`` inside the trigger) each statement is its
  own transaction;
- the status is read once per statement (cached by the statement's start time
  ``NOW(6)``): a multi-row statement pays once, not per row;
- each new transaction takes ``NEXTVAL(strangler_txn)`` (a sequence: unique, never
  reused) into the session variable ``@strangler_txid``.

Limits: a boundary these counters cannot see joins two transactions of one session under
one id. That happens only with ``SET autocommit = 1`` committing an open transaction,
with a stored procedure that commits between captured writes of one ``CALL``, and with
``SET TIMESTAMP`` pinning ``NOW()``. Ordering stays correct unless another session's
transaction depends on the first of the two and commits before the second ends.
The triggers cost about 0.3 ms per statement (reading the session status).

Columns: the triggers name the columns found by reflection. The relay re-creates them when
columns change (:mod:`legacy_bridge.drift`); rows written in between lack an added
column, and **writes to a table fail while its triggers still name a dropped or renamed
column** (MariaDB resolves ``NEW.column`` at run time): run ``strangler bridge install``
right after such a migration, or keep the relay running. DDL is not transactional on
MariaDB: an interrupted install is completed by running it again. MySQL is not supported
(no sequences, no ``@@in_transaction``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from sqlalchemy import inspect, sql, types
from sqlalchemy.engine import Connection

from legacy_bridge.capture import CapturedTable, Signature, object_name, sql_literal
from legacy_bridge.errors import BridgeError
from legacy_bridge.tables import CHANGE_TABLE, PREFIX, STATE_TABLE

SEQUENCE = f"{PREFIX}txn"
_EVENTS = (("insert", "c"), ("update", "u"), ("delete", "d"))
_NOW = "UTC_TIMESTAMP(6)"

# statements that never start or end a transaction: excluded from the boundary counter
_NOT_BOUNDARIES = (
    "COM_ADMIN_COMMANDS", "COM_CALL_PROCEDURE", "COM_CHANGE_DB", "COM_COMPOUND_SQL",
    "COM_CREATE_TEMPORARY_TABLE", "COM_DEALLOC_SQL", "COM_DELETE", "COM_DELETE_MULTI",
    "COM_DO", "COM_DROP_TEMPORARY_TABLE", "COM_EMPTY_QUERY", "COM_EXECUTE_IMMEDIATE",
    "COM_EXECUTE_SQL", "COM_GET_DIAGNOSTICS", "COM_HA_CLOSE", "COM_HA_OPEN", "COM_HA_READ",
    "COM_HELP", "COM_INSERT", "COM_INSERT_SELECT", "COM_KILL", "COM_LOAD",
    "COM_PREPARE_SQL", "COM_RELEASE_SAVEPOINT", "COM_REPLACE", "COM_REPLACE_SELECT",
    "COM_RESIGNAL", "COM_ROLLBACK_TO_SAVEPOINT", "COM_SAVEPOINT", "COM_SELECT",
    "COM_SET_OPTION", "COM_SIGNAL", "COM_UPDATE", "COM_UPDATE_MULTI", "COM_XA_RECOVER",
)  # fmt: skip

_TXID = f"""
  IF NOT (@strangler_stmt <=> CONCAT(@@in_transaction, '/', NOW(6))) THEN
    SET @strangler_stmt = CONCAT(@@in_transaction, '/', NOW(6));
    SET @strangler_probe = IF(@@in_transaction = 0, CONCAT('s', NOW(6)),
      (SELECT CONCAT('t', SUM(VARIABLE_VALUE)) FROM information_schema.SESSION_STATUS
       WHERE LEFT(VARIABLE_NAME, 4) = 'COM_' AND LEFT(VARIABLE_NAME, 9) <> 'COM_SHOW_'
         AND LEFT(VARIABLE_NAME, 9) <> 'COM_STMT_'
         AND VARIABLE_NAME NOT IN ({", ".join(sql_literal(n) for n in _NOT_BOUNDARIES)})));
    IF NOT (@strangler_probe <=> @strangler_tx) THEN
      SET @strangler_tx = @strangler_probe, @strangler_txid = NEXTVAL({SEQUENCE});
    END IF;
  END IF;
"""


class MariadbCapture:
    """MariaDB implementation of :class:`~legacy_bridge.capture.CaptureDialect`."""

    connector = "mariadb"
    real_txids = True
    captures_new_columns = False
    snapshot_reads_in_python = True
    snapshot_lock = " LOCK IN SHARE MODE NOWAIT"
    notifies = False

    def schema_name(self, conn: Connection) -> str | None:
        return None

    def database_name(self, conn: Connection) -> str:
        return str(conn.execute(sql.text("SELECT DATABASE()")).scalar_one())

    def install_support(self, conn: Connection, notify: bool = False) -> None:
        version = conn.dialect.server_version_info or ()
        if tuple(version[:2]) < (10, 3):
            raise BridgeError(f"cannot capture changes on MariaDB {version}: needs 10.3+")
        conn.exec_driver_sql(f"CREATE SEQUENCE IF NOT EXISTS {SEQUENCE}")
        conn.exec_driver_sql(
            f"CREATE INDEX IF NOT EXISTS ix_strangler_change_txid ON {CHANGE_TABLE} (txid)"
        )

    def signature(self, conn: Connection, table: CapturedTable) -> Signature:
        return tuple(
            (column["name"], _kind(column["type"]))
            for column in inspect(conn).get_columns(table.name)
        )

    def install_triggers(
        self, conn: Connection, tables: Sequence[CapturedTable]
    ) -> list[CapturedTable]:
        return [self._install(conn, table) for table in tables]

    def _install(self, conn: Connection, table: CapturedTable) -> CapturedTable:
        quote = conn.dialect.identifier_preparer.quote
        kinds = dict(self.signature(conn, table))
        names = []
        for event, op in _EVENTS:
            name = object_name(table.name, event)
            before = "NULL" if op == "c" else _image("OLD", table.columns, kinds, quote)
            after = "NULL" if op == "d" else _image("NEW", table.columns, kinds, quote)
            pk = _image("OLD" if op == "d" else "NEW", table.primary_key, kinds, quote)
            conn.exec_driver_sql(
                f"CREATE OR REPLACE TRIGGER {quote(name)} AFTER {event.upper()} ON "
                f"{quote(table.name)} FOR EACH ROW BEGIN {_TXID}"
                f"  INSERT INTO {quote(CHANGE_TABLE)} (txid, table_name, op, pk, `before`,"
                f" `after`, captured_at) VALUES (@strangler_txid, {sql_literal(table.name)},"
                f" {sql_literal(op)}, {pk}, {before}, {after}, {_NOW});\nEND"
            )
            names.append(name)
        return CapturedTable(table.name, table.primary_key, table.columns, tuple(names))

    def remove(self, conn: Connection) -> list[str]:
        quote = conn.dialect.identifier_preparer.quote
        triggers = conn.execute(
            sql.text(
                "SELECT TRIGGER_NAME FROM information_schema.TRIGGERS"
                " WHERE TRIGGER_SCHEMA = DATABASE() AND LEFT(TRIGGER_NAME, :n) = :prefix"
                " ORDER BY TRIGGER_NAME"
            ),
            {"n": len(PREFIX), "prefix": PREFIX},
        ).scalars()
        dropped = []
        for name in list(triggers):
            conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS {quote(name)}")
            dropped.append(f"trigger {name}")
        exists = conn.execute(
            sql.text(
                "SELECT 1 FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE()"
                " AND TABLE_NAME = :name AND TABLE_TYPE = 'SEQUENCE'"
            ),
            {"name": SEQUENCE},
        ).first()
        if exists:
            conn.exec_driver_sql(f"DROP SEQUENCE IF EXISTS {SEQUENCE}")
            dropped.append(f"sequence {SEQUENCE}")
        return dropped

    def remove_triggers(self, conn: Connection, table: str) -> list[str]:
        quote = conn.dialect.identifier_preparer.quote
        dropped = []
        for event, _ in _EVENTS:
            name = object_name(table, event)
            conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS {quote(name)}")
            dropped.append(f"trigger {name}")
        return dropped

    def lock_claims(self, conn: Connection) -> None:
        conn.execute(sql.text(f"SELECT install_id FROM {STATE_TABLE} FOR UPDATE"))

    def begin_chunk(self, conn: Connection) -> int:
        return int(conn.execute(sql.text(f"SELECT NEXTVAL({SEQUENCE})")).scalar_one())

    def end_chunk(self, conn: Connection) -> None:
        return None

    def row_image(self, conn: Connection, table: CapturedTable, alias: str) -> str:
        quote = conn.dialect.identifier_preparer.quote
        kinds = dict(self.signature(conn, table))
        return _image(quote(alias), table.columns, kinds, quote)

    def key_image(self, conn: Connection, table: CapturedTable, alias: str) -> str:
        quote = conn.dialect.identifier_preparer.quote
        kinds = dict(self.signature(conn, table))
        return _image(quote(alias), table.primary_key, kinds, quote)

    def now(self) -> str:
        return _NOW

    def estimate_rows(self, conn: Connection, table: str) -> int | None:
        rows = conn.execute(
            sql.text(
                "SELECT TABLE_ROWS FROM information_schema.TABLES"
                " WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = :name"
            ),
            {"name": table},
        ).scalar()
        return None if rows is None else int(rows)

    def schema_token(self, conn: Connection) -> object | None:
        return None


def _kind(column_type: types.TypeEngine[object]) -> str:
    if isinstance(column_type, types.LargeBinary | types.BINARY | types.VARBINARY):
        return "binary"
    if isinstance(column_type, types.DateTime):
        return "datetime"
    return "value"


def _image(
    row: str, columns: tuple[str, ...], kinds: dict[str, str], quote: Callable[[str], str]
) -> str:
    parts = []
    for column in columns:
        value = f"{row}.{quote(column)}"
        kind = kinds.get(column, "value")
        if kind == "binary":  # JSON cannot hold bytes: hex text, like PostgreSQL's bytea
            value = f"CONCAT(CHAR(92 USING utf8mb4), 'x', LOWER(HEX({value})))"
        elif kind == "datetime":  # ISO 8601, like the other dialects
            value = f"REPLACE(CAST({value} AS CHAR), ' ', 'T')"
        parts.append(f"{sql_literal(column)}, {value}")
    return f"JSON_OBJECT({', '.join(parts)})"
