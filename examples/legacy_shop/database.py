"""Engine and transactions of the shop's database.

On PostgreSQL writers serialise per product with ``SELECT ... FOR UPDATE``. SQLite has no
row locks, so a write transaction starts with ``BEGIN IMMEDIATE``: it takes the database's
write lock before reading, and a concurrent writer waits (busy timeout) instead of choosing
a lot from a stale read.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Connection, Engine, make_url

SQLITE_BUSY_TIMEOUT_S = 30.0
_BEGIN_OPTION = "legacy_shop_sqlite_begin"


def make_engine(db_url: str) -> Engine:
    """One engine per app; SQLite engines get explicit BEGINs and a busy timeout."""
    if make_url(db_url).get_backend_name() != "sqlite":
        return create_engine(db_url, pool_pre_ping=True)
    engine = create_engine(
        db_url, pool_pre_ping=True, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S}
    )
    event.listen(engine, "connect", _sqlite_on_connect)
    event.listen(engine, "begin", _sqlite_on_begin)
    return engine


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # Let SQLAlchemy's "begin" event emit BEGIN instead of the driver's implicit one.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA foreign_keys = ON")
    finally:
        cursor.close()


def _sqlite_on_begin(connection: Connection) -> None:
    mode = connection.get_execution_options().get(_BEGIN_OPTION, "DEFERRED")
    connection.exec_driver_sql(f"BEGIN {mode}")


@contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    """One transaction for one write request: committed on success, rolled back on error."""
    with engine.connect() as conn:
        conn.execution_options(**{_BEGIN_OPTION: "IMMEDIATE"})
        with conn.begin():
            yield conn


@contextmanager
def read_transaction(engine: Engine) -> Iterator[Connection]:
    """One consistent read; never writes."""
    with engine.connect() as conn, conn.begin():
        yield conn
