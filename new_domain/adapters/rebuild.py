"""Rebuilding the new domain's state: the read model from the write model, or
everything from a fresh legacy snapshot.

Both run in ONE transaction, after locking what the consumer writes first (the
stream positions, PostgreSQL), so a running consumer waits and then carries on with
the result; a reader sees the old state until the commit.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import delete, func, select, text, update
from sqlalchemy.engine import Connection, Engine

from new_domain.adapters import orm
from new_domain.adapters.bulk import insert_rows
from new_domain.adapters.chunks import chunked
from new_domain.ingest.ports import AWAITING

Progress = Callable[[int], None]
"""Called with how many more units of work are done."""

PRODUCTS_PER_STEP = 100


def count_products(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(connection.scalar(select(func.count()).select_from(orm.products)) or 0)


def rebuild_read_model(engine: Engine, progress: Progress) -> int:
    """Replace ``allocations_view`` with the allocations the write model holds, product
    by product (``progress`` gets the number of products done); rows written.

    Allocations legacy made to a batch of another product are shown by the read model
    but cannot be held by the write model (an ``unknown_batch`` anomaly): a rebuild
    drops them.
    """
    view, allocations = orm.allocations_view, orm.batch_allocations
    written = 0
    with engine.begin() as connection:
        _lock_consumer_out(connection)
        connection.execute(delete(view))
        skus = list(connection.scalars(select(orm.products.c.sku).order_by(orm.products.c.sku)))
        for chunk in chunked(skus, PRODUCTS_PER_STEP):
            rows = connection.execute(
                select(allocations.c.orderid, allocations.c.sku, allocations.c.batchref).where(
                    allocations.c.sku.in_(chunk)
                )
            ).all()
            insert_rows(
                connection,
                view,
                [{"orderid": o, "sku": s, "batchref": b} for o, s, b in rows],
                key=["orderid", "sku", "batchref"],
                on_conflict="nothing",
            )
            written += len(rows)
            progress(len(chunk))
    return written


def reset_for_snapshot(engine: Engine, progress: Progress) -> list[str]:
    """Empty every table of new-domain state (``progress`` gets one per table) and make
    every known stream await a snapshot: until its first snapshot read arrives, the
    consumer skips the stream's changes (the snapshot contains their effect). The
    outbox and the lag bookkeeping stay. Returns the streams now awaiting a snapshot.
    """
    positions = orm.applied_change_position
    with engine.begin() as connection:
        _lock_consumer_out(connection)
        for table in orm.NEW_DOMAIN_STATE:
            connection.execute(delete(table))
            progress(1)
        connection.execute(update(positions).values(snapshot_state=AWAITING))
        return list(connection.scalars(select(positions.c.stream).order_by(positions.c.stream)))


def _lock_consumer_out(connection: Connection) -> None:
    """Wait for the consumer's batch in progress, and hold off the next one: each batch
    locks its stream positions first. (SQLite: the write engine's ``BEGIN IMMEDIATE``
    has done it already.)"""
    if connection.dialect.name == "postgresql":
        connection.execute(text("LOCK TABLE applied_change_position IN EXCLUSIVE MODE"))
