"""Insert-or-update of rows, in one statement per call where the dialect allows it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Table, insert, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

ON_CONFLICT_DIALECTS = ("postgresql", "sqlite")


def upsert(
    connection: Connection,
    table: Table,
    values: Mapping[str, Any],
    key: Sequence[str],
    *,
    update_existing: bool = True,
) -> None:
    """Write ``values`` as the row identified by its ``key`` columns.

    With ``update_existing=False`` an existing row is left as it is.
    """
    upsert_many(connection, table, [values], key, update_existing=update_existing)


def upsert_many(
    connection: Connection,
    table: Table,
    rows: Sequence[Mapping[str, Any]],
    key: Sequence[str],
    *,
    update_existing: bool = True,
) -> None:
    """:func:`upsert` for many rows with the same columns: one ``INSERT ... ON CONFLICT``
    sent as multi-row batches on PostgreSQL and SQLite."""
    if not rows:
        return
    dialect = connection.dialect.name
    if dialect in ON_CONFLICT_DIALECTS:
        dialect_insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        statement = dialect_insert(table)
        others = {name: statement.excluded[name] for name in rows[0] if name not in key}
        if update_existing and others:
            statement = statement.on_conflict_do_update(index_elements=list(key), set_=others)
        else:
            statement = statement.on_conflict_do_nothing(index_elements=list(key))
        connection.execute(statement, [dict(row) for row in rows])
        return
    for values in rows:
        _upsert_one(connection, table, values, key, update_existing)


def _upsert_one(
    connection: Connection,
    table: Table,
    values: Mapping[str, Any],
    key: Sequence[str],
    update_existing: bool,
) -> None:
    where = [table.c[name] == values[name] for name in key]
    others = {name: value for name, value in values.items() if name not in key}
    if update_existing and others:
        result = connection.execute(update(table).where(*where).values(**others))
        if result.rowcount:
            return
    elif connection.execute(table.select().where(*where)).first() is not None:
        return
    connection.execute(insert(table).values(**values))
