"""``backsync install``: back-sync's tables in the legacy database, its queues."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import insert, inspect, select
from sqlalchemy.engine import Engine

from backsync.tables import OWN_TABLES, origin, position
from backsync.writer import start_position


@dataclass(frozen=True)
class Installed:
    created: tuple[str, ...]
    """Tables that did not exist before (``strangler_origin`` when the bridge is not
    installed, back-sync's own on a first install)."""


def install_tables(engine: Engine, queue: str) -> Installed:
    """Create the origin marker table (when the bridge has not), back-sync's tables and
    its position row for ``queue`` (idempotent)."""
    with engine.begin() as connection:
        existing = set(inspect(connection).get_table_names())
        created = []
        for table in (origin, *OWN_TABLES):
            if table.name not in existing:
                table.create(connection)
                created.append(table.name)
        known = connection.scalar(select(position.c.queue).where(position.c.queue == queue))
        if known is None:
            connection.execute(insert(position).values(start_position(queue)))
    return Installed(tuple(created))


def missing_tables(engine: Engine) -> list[str]:
    """The tables back-sync needs that the legacy database lacks."""
    with engine.connect() as connection:
        existing = set(inspect(connection).get_table_names())
    return [t.name for t in (origin, *OWN_TABLES) if t.name not in existing]
