"""Schema drift: keep capture working when columns of a captured table change.

PostgreSQL's triggers render ``to_jsonb(NEW)``: images follow the table by themselves.
SQLite's and MariaDB's triggers name the columns, so the relay checks, at start and then
periodically, whether a captured table's columns (and the kinds the images depend on:
binary, datetime) differ from what its triggers were built for, and re-creates those
triggers (atomically: in one transaction on SQLite, ``CREATE OR REPLACE TRIGGER`` on
MariaDB). ``PRAGMA schema_version`` makes the check nearly free on SQLite when nothing
changed. The dialect modules describe what happens between the change and the refresh.
"""

from __future__ import annotations

import logging

from sqlalchemy.engine import Connection

from legacy_bridge.capture import CaptureDialect
from legacy_bridge.registry import record, reflect, registered

log = logging.getLogger(__name__)


class DriftWatch:
    """Re-creates the triggers of tables whose columns changed since the last look."""

    def __init__(self, dialect: CaptureDialect, schema: str | None) -> None:
        self._dialect = dialect
        self._schema = schema
        self._token: object | None = None

    def check(self, conn: Connection) -> list[str]:
        """Refresh drifted tables' triggers in ``conn``'s transaction; return their names."""
        if self._dialect.captures_new_columns:
            return []
        token = self._dialect.schema_token(conn)  # read first: a change after it shows next time
        if token is not None and token == self._token:
            return []
        refreshed = []
        for entry in registered(conn, self._schema):
            if not entry.table.columns:
                log.error("captured table %s no longer exists", entry.table.name)
                continue
            if self._dialect.signature(conn, entry.table) == entry.signature:
                continue
            table = reflect(conn, entry.table.name, self._schema)
            record(conn, self._dialect, self._dialect.install_triggers(conn, [table]))
            log.warning("columns of %s changed: capture triggers re-created", table.name)
            refreshed.append(table.name)
        # a refresh changes the token again: the next check compares once more, finds
        # nothing, and only then settles
        self._token = token
        return refreshed
