"""Insert-or-update of one row, in one statement where the dialect allows it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Table, insert, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection


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
    dialect = connection.dialect.name
    if dialect in ("postgresql", "sqlite"):
        dialect_insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        statement = dialect_insert(table).values(**values)
        others = {name: statement.excluded[name] for name in values if name not in key}
        if update_existing and others:
            statement = statement.on_conflict_do_update(index_elements=list(key), set_=others)
        else:
            statement = statement.on_conflict_do_nothing(index_elements=list(key))
        connection.execute(statement)
        return
    where = [table.c[name] == values[name] for name in key]
    others_plain = {name: value for name, value in values.items() if name not in key}
    if update_existing and others_plain:
        result = connection.execute(update(table).where(*where).values(**others_plain))
        if result.rowcount:
            return
    elif connection.execute(table.select().where(*where)).first() is not None:
        return
    connection.execute(insert(table).values(**values))
