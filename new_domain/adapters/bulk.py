"""Reading and writing many rows with one statement each, and few round trips.

On PostgreSQL every call is ONE statement with ONE parameter whatever the number of
rows: the rows go as a JSON array (encoded by the C JSON encoder) and
``json_to_recordset`` turns them back into typed rows (``INSERT ... SELECT FROM
json_to_recordset(...)``, ``UPDATE ... FROM ...``, ``DELETE ... USING ...``). The SQL
text depends only on the table and columns, so the server prepares it once. That is
several times faster than an ``executemany`` (a round of parameter handling per row)
or array parameters (escaped element by element).

Reads (:func:`fetch`) pass their keys the same way (one JSON array parameter), so
their SQL text is constant too.

Inside :func:`pipelined`, statements are not sent one by one: they go to the server
together, in order, when the block ends (psycopg's pipeline mode), and reads hand their
rows to their callbacks then. A unit of work's writes cost one round trip; so do the
reads a batch of changes needs ahead. Other databases (SQLite) run each statement at
once (writes with the driver's ``executemany``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime
from functools import cache
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    ColumnElement,
    Integer,
    Select,
    String,
    Table,
    Text,
    and_,
    any_,
    bindparam,
    cast,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from new_domain.adapters.upsert import upsert_many

Rows = Sequence[Mapping[str, Any]]
PIPELINE = "new_domain.bulk.pipeline"


@dataclass(frozen=True)
class _Statement:
    sql: str
    params: dict[str, Any]
    rows: int | None = None  # rows it must affect, else ``error``
    error: type[Exception] | None = None
    on_rows: Callable[[list[Any]], None] | None = None  # a read: gets the rows


def member(
    column: ColumnElement[Any], name: str, connection: Connection, *, few: bool = False
) -> ColumnElement[bool]:
    """``column IN (<the list bound as name>)``, one JSON parameter on PostgreSQL (pass
    the list itself to :func:`fetch`).

    On PostgreSQL it is ``column IN (SELECT json_array_elements_text(:name))``: the
    planner assumes 100 keys and, for the long lists the consumer reads a batch with,
    hashes them against the table, which is what a long list wants. With ``few`` (a
    handful of keys: one decision of the new write path) it is ``column = ANY ((SELECT
    array_agg(value) FROM json_array_elements_text(:name)))`` instead: the array is
    computed once and the column's index is probed per key. The first form made the
    write path's read of one order's lines a sequential scan (4.5 ms on 27,000
    allocations, against 0.03 ms); the second, used for every list, halved the
    consumer's rate on ``pipeline_throughput`` (3,838 -> 1,972 changes/s)."""
    if not _is_postgresql(connection):
        return column.in_(bindparam(name, expanding=True))
    elements = func.json_array_elements_text(cast(bindparam(name, type_=String), JSON))
    if not few:
        value: ColumnElement[Any] = elements
        if isinstance(column.type, Integer):
            value = cast(value, BigInteger)
        return column.in_(select(value))
    element: Any = BigInteger() if isinstance(column.type, Integer) else Text()
    keys = select(func.array_agg(cast(elements.table_valued("value").c.value, element)))
    return column == any_(cast(keys.scalar_subquery(), postgresql.ARRAY(element)))


FEW = 8
"""At most this many keys count as few (see :func:`member`)."""


def fetch(
    connection: Connection,
    name: str,
    build: Callable[[], Select[Any]],
    params: Mapping[str, Any],
    on_rows: Callable[[list[Any]], None],
) -> None:
    """Run the query ``build()`` makes (built once per dialect and ``name``) with
    ``params`` (lists for :func:`member`) and pass its rows to ``on_rows``: at once, or
    when the enclosing :func:`pipelined` block ends."""
    if not _is_postgresql(connection):
        on_rows(list(connection.execute(build(), dict(params)).all()))
        return
    sql, defaults = _compiled(connection, name, build)
    values = {k: json.dumps(v) if isinstance(v, list | tuple) else v for k, v in params.items()}
    _send(connection, _Statement(sql, {**defaults, **values}, on_rows=on_rows))


_COMPILED: dict[str, tuple[str, dict[str, Any]]] = {}


def _compiled(
    connection: Connection, name: str, build: Callable[[], Select[Any]]
) -> tuple[str, dict[str, Any]]:
    """The SQL of the query ``name`` and the values of the literals it binds."""
    found = _COMPILED.get(name)
    if found is None:
        compiled = build().compile(dialect=connection.dialect)
        found = _COMPILED[name] = (str(compiled), dict(compiled.params))
    return found


def insert_rows(
    connection: Connection,
    table: Table,
    rows: Rows,
    *,
    key: Sequence[str] = (),
    on_conflict: str | None = None,
    keep_greatest: Sequence[str] = (),
) -> None:
    """Insert ``rows`` (all with the same columns). With ``on_conflict`` ``"nothing"`` or
    ``"update"`` and the ``key`` columns, an existing row is kept or updated; an update
    keeps the greater of the old and new value of the ``keep_greatest`` columns."""
    if not rows:
        return
    columns = tuple(rows[0])
    if _is_postgresql(connection):
        sql = _insert_sql(table, columns, tuple(key), on_conflict, tuple(keep_greatest))
        _send(connection, _Statement(sql, _rows(columns, rows)))
    elif on_conflict is None:
        connection.execute(insert(table), [dict(row) for row in rows])
    elif keep_greatest:
        _sqlite_upsert_greatest(connection, table, rows, key, keep_greatest)
    else:
        upsert_many(connection, table, rows, key, update_existing=on_conflict == "update")


def update_rows(
    connection: Connection,
    table: Table,
    rows: Rows,
    *,
    key: Sequence[str],
    expect: Mapping[str, str] | None = None,
    all_or: type[Exception] | None = None,
) -> None:
    """Update each row found by its ``key`` columns, setting the other columns given.

    ``expect`` maps extra row fields to the column each must equal for the row to be
    updated (an optimistic check, e.g. ``{"old_version": "version_number"}``); with
    ``all_or``, that exception is raised unless every row was updated.
    """
    if not rows:
        return
    expected = dict(expect or {})
    fields = tuple(rows[0])
    if _is_postgresql(connection):
        sql = _update_sql(table, fields, tuple(key), tuple(sorted(expected.items())))
        _send(connection, _Statement(sql, _rows(fields, rows), len(rows), all_or))
        return
    matches = [table.c[k] == bindparam(f"b_{k}") for k in key]
    matches += [table.c[column] == bindparam(f"b_{f}") for f, column in expected.items()]
    sets: dict[str, Any] = {
        f: bindparam(f"b_{f}") for f in fields if f not in key and f not in expected
    }
    statement = update(table).where(and_(*matches)).values(sets)
    result = connection.execute(
        statement, [{f"b_{f}": value for f, value in row.items()} for row in rows]
    )
    _check(result.rowcount, _Statement("", {}, len(rows), all_or))


def delete_rows(connection: Connection, table: Table, rows: Rows) -> None:
    """Delete the rows whose columns equal each given row's values."""
    if not rows:
        return
    columns = tuple(rows[0])
    if _is_postgresql(connection):
        _send(connection, _Statement(_delete_sql(table, columns), _rows(columns, rows)))
        return
    statement = delete(table).where(and_(*(table.c[c] == bindparam(f"k_{c}") for c in columns)))
    connection.execute(statement, [{f"k_{c}": row[c] for c in columns} for row in rows])


@contextmanager
def pipelined(connection: Connection) -> Iterator[None]:
    """Send the bulk writes and reads made in the block together, in order, when it
    ends (PostgreSQL). Other statements in the block run at once."""
    if not _is_postgresql(connection) or PIPELINE in connection.info:
        yield
        return
    queued: list[_Statement] = []
    connection.info[PIPELINE] = queued
    try:
        yield
    finally:
        del connection.info[PIPELINE]
    if queued:
        _run(connection, queued)


def _send(connection: Connection, statement: _Statement) -> None:
    queued: list[_Statement] | None = connection.info.get(PIPELINE)
    if queued is not None:
        queued.append(statement)
        return
    result = connection.exec_driver_sql(statement.sql, statement.params)
    if statement.on_rows is not None:
        statement.on_rows(list(result.all()))
    _check(result.rowcount, statement)


def _run(connection: Connection, statements: Sequence[_Statement]) -> None:
    """Execute ``statements`` in one pipeline of the driver connection (psycopg)."""
    import psycopg

    raw = connection.connection.driver_connection
    assert isinstance(raw, psycopg.Connection)
    current = statements[0]
    try:
        cursors = []
        with raw.pipeline() if psycopg.Pipeline.is_supported() else _nothing():
            for current in statements:
                cursor = raw.cursor()
                cursor.execute(current.sql, current.params, prepare=True)
                cursors.append(cursor)
    except psycopg.Error as error:
        # what SQLAlchemy does for the statements it runs: a connection the server closed
        # is invalidated (never pooled again) and the error says so
        lost = connection.dialect.is_disconnect(error, raw, None)  # type: ignore[arg-type]
        if lost:
            connection.invalidate(error)
        raise sa_exc.DBAPIError.instance(
            current.sql, None, error, psycopg.Error, connection_invalidated=lost
        ) from error
    for statement, cursor in zip(statements, cursors, strict=True):
        if statement.on_rows is not None:
            statement.on_rows(cursor.fetchall())
        _check(cursor.rowcount, statement)
        cursor.close()


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def _check(rowcount: int, statement: _Statement) -> None:
    if statement.error is not None and statement.rows is not None and rowcount != statement.rows:
        raise statement.error(
            f"{statement.rows - rowcount} of {statement.rows} rows changed meanwhile"
        )


def _is_postgresql(connection: Connection) -> bool:
    return connection.dialect.name == "postgresql"


def _rows(columns: Sequence[str], rows: Rows) -> dict[str, str]:
    """The one parameter: the rows as a JSON array of objects keyed ``v0``, ``v1``..."""
    names = [f"v{i}" for i in range(len(columns))]
    return {
        "rows": json.dumps(
            [dict(zip(names, (row[c] for c in columns), strict=True)) for row in rows],
            default=_json_value,
            separators=(",", ":"),
        )
    }


def _json_value(value: Any) -> Any:
    if isinstance(value, date | datetime):
        return value.isoformat()
    raise TypeError(f"cannot write {type(value).__name__} in bulk")


def _recordset(table: Table, columns: Sequence[str], types: Mapping[str, str] | None = None) -> str:
    """``json_to_recordset(%(rows)s) AS v(v0 <type>, v1 <type>, ...)``, typed like the
    columns (a field not in the table takes the type of the column ``types`` names)."""
    dialect = postgresql.dialect()  # type: ignore[no-untyped-call]
    other = types or {}
    fields = ", ".join(
        f"v{i} {table.c[other.get(c, c)].type.compile(dialect=dialect)}"
        for i, c in enumerate(columns)
    )
    return f"json_to_recordset(%(rows)s::json) AS v({fields})"


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@cache
def _insert_sql(
    table: Table,
    columns: tuple[str, ...],
    key: tuple[str, ...],
    on_conflict: str | None,
    keep_greatest: tuple[str, ...],
) -> str:
    names = ", ".join(_quoted(c) for c in columns)
    values = ", ".join(f"v.v{i}" for i in range(len(columns)))
    source = _recordset(table, columns)
    sql = f"INSERT INTO {_quoted(table.name)} ({names}) SELECT {values} FROM {source}"
    if on_conflict is None:
        return sql
    target = ", ".join(_quoted(k) for k in key)
    others = [c for c in columns if c not in key]
    if on_conflict == "update" and others:
        name = _quoted(table.name)
        sets = ", ".join(
            f"{_quoted(c)} = GREATEST({name}.{_quoted(c)}, EXCLUDED.{_quoted(c)})"
            if c in keep_greatest
            else f"{_quoted(c)} = EXCLUDED.{_quoted(c)}"
            for c in others
        )
        return f"{sql} ON CONFLICT ({target}) DO UPDATE SET {sets}"
    return f"{sql} ON CONFLICT ({target}) DO NOTHING"


@cache
def _update_sql(
    table: Table,
    fields: tuple[str, ...],
    key: tuple[str, ...],
    expect: tuple[tuple[str, str], ...],
) -> str:
    index = {f: i for i, f in enumerate(fields)}
    expected = dict(expect)
    name = _quoted(table.name)
    sets = ", ".join(
        f"{_quoted(f)} = v.v{index[f]}" for f in fields if f not in key and f not in expected
    )
    matches = [(k, k) for k in key] + list(expect)
    where = " AND ".join(f"{name}.{_quoted(column)} = v.v{index[f]}" for f, column in matches)
    source = _recordset(table, fields, expected)
    return f"UPDATE {name} SET {sets} FROM {source} WHERE {where}"


@cache
def _delete_sql(table: Table, columns: tuple[str, ...]) -> str:
    name = _quoted(table.name)
    where = " AND ".join(f"{name}.{_quoted(c)} = v.v{i}" for i, c in enumerate(columns))
    return f"DELETE FROM {name} USING {_recordset(table, columns)} WHERE {where}"


def _sqlite_upsert_greatest(
    connection: Connection,
    table: Table,
    rows: Rows,
    key: Sequence[str],
    keep_greatest: Sequence[str],
) -> None:
    statement = sqlite.insert(table)
    sets: dict[str, Any] = {}
    for column in rows[0]:
        if column in key:
            continue
        new = statement.excluded[column]
        if column in keep_greatest:
            old = table.c[column]
            sets[column] = func.max(func.coalesce(old, new), func.coalesce(new, old))
        else:
            sets[column] = new
    connection.execute(
        statement.on_conflict_do_update(index_elements=list(key), set_=sets),
        [dict(row) for row in rows],
    )
