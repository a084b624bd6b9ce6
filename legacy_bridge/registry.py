"""The captured tables as recorded at install (``strangler_capture``)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import delete, func, insert, inspect, select, update
from sqlalchemy.engine import Connection

from legacy_bridge.capture import CaptureDialect, CapturedTable, Signature
from legacy_bridge.errors import UnknownTable
from legacy_bridge.tables import ALWAYS_CAPTURED, PREFIX, capture


@dataclass(frozen=True)
class Registered:
    """A captured table and the column signature its triggers were built for."""

    table: CapturedTable
    signature: Signature


def record(conn: Connection, dialect: CaptureDialect, tables: Sequence[CapturedTable]) -> None:
    """Remember ``tables`` (added at the end, or refreshed in place)."""
    now = datetime.now(UTC)
    for table in tables:
        values = {
            "primary_key": json.dumps(list(table.primary_key)),
            "signature": json.dumps([list(p) for p in dialect.signature(conn, table)]),
            "installed_at": now,
        }
        known = conn.execute(
            select(capture.c.table_name).where(capture.c.table_name == table.name)
        ).first()
        if known:
            conn.execute(update(capture).where(capture.c.table_name == table.name).values(**values))
        else:
            highest = conn.execute(select(func.max(capture.c.ordinal))).scalar()
            ordinal = int(highest or 0) + 1
            conn.execute(insert(capture).values(table_name=table.name, ordinal=ordinal, **values))


def forget(conn: Connection, name: str) -> None:
    conn.execute(delete(capture).where(capture.c.table_name == name))


def registered(conn: Connection, schema: str | None) -> list[Registered]:
    """Every captured table, in install order (the origin marker last), with its current
    columns."""
    inspector = inspect(conn)
    found = []
    rows = conn.execute(select(capture).order_by(capture.c.ordinal, capture.c.table_name))
    for row in rows:
        name = str(row.table_name)
        columns: tuple[str, ...] = ()
        if inspector.has_table(name, schema=schema):
            columns = tuple(c["name"] for c in inspector.get_columns(name, schema=schema))
        found.append(
            Registered(
                CapturedTable(name, tuple(json.loads(row.primary_key)), columns),
                tuple((str(c), str(k)) for c, k in json.loads(row.signature)),
            )
        )
    found.sort(key=lambda entry: entry.table.name in ALWAYS_CAPTURED)  # stable
    return found


def reflect(conn: Connection, name: str, schema: str | None) -> CapturedTable:
    """``name`` as a table that can be captured, or :class:`UnknownTable`."""
    if name.startswith(PREFIX) and name not in ALWAYS_CAPTURED:
        raise UnknownTable(f"table {name!r} belongs to the bridge and cannot be captured")
    inspector = inspect(conn)
    if not inspector.has_table(name, schema=schema):
        raise UnknownTable(f"no table {name!r} in the legacy database")
    primary_key = tuple(inspector.get_pk_constraint(name, schema=schema)["constrained_columns"])
    if not primary_key:
        raise UnknownTable(f"table {name!r} has no primary key: capture needs one")
    columns = tuple(column["name"] for column in inspector.get_columns(name, schema=schema))
    return CapturedTable(name, primary_key, columns)
