"""The legacy database as back-sync reaches it.

Back-sync writes like a legacy request does: one transaction per decision. On SQLite,
which has no row locks, a write transaction starts with ``BEGIN IMMEDIATE`` (as the
legacy shop's own requests do), so it takes the database's write lock before reading and
a concurrent legacy writer waits instead of interleaving.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import SQLAlchemyError

SQLITE_BUSY_TIMEOUT_S = 30.0
_WRITE = "backsync_write"


def make_engine(legacy_db_url: str) -> Engine:
    """An engine on the legacy database (SQLite: explicit BEGINs, a busy timeout).

    Its connections are not pinged before each use (a round trip per decision): a
    connection lost while idle fails the decision's first statement, which is tried again
    (:class:`~backsync.runner.LegacyUnavailable`) on a new connection."""
    url = make_url(legacy_db_url)
    if url.get_backend_name() != "sqlite":
        return create_engine(url)
    engine = create_engine(url, pool_pre_ping=True, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S})
    event.listen(engine, "connect", _sqlite_on_connect)
    event.listen(engine, "begin", _sqlite_on_begin)
    return engine


@contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    """One legacy write transaction: committed when the block ends, rolled back on error."""
    with engine.connect() as connection:
        connection.execution_options(**{_WRITE: True})
        with connection.begin():
            yield connection


def is_locking(connection: Connection) -> bool:
    """True where ``SELECT ... FOR UPDATE`` locks rows (not SQLite: its write transaction
    holds the whole database)."""
    return connection.dialect.name != "sqlite"


def set_lock_timeout(connection: Connection, seconds: float) -> None:
    """Make a row lock wait fail after ``seconds`` in this transaction (it is retried)."""
    name = connection.dialect.name
    if name == "postgresql":
        connection.exec_driver_sql(f"SET LOCAL lock_timeout = '{int(seconds * 1000)}ms'")
    elif name in ("mysql", "mariadb"):
        connection.exec_driver_sql(
            f"SET SESSION innodb_lock_wait_timeout = {max(1, round(seconds))}"
        )


def safe_url(url: str) -> str:
    """``url`` with its password hidden."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - only for messages
        return "<invalid url>"


def first_line(error: BaseException) -> str:
    """The error's first line (database errors carry SQL and parameters after it)."""
    original = getattr(error, "orig", None) if isinstance(error, SQLAlchemyError) else None
    if isinstance(original, BaseException):
        error = original
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None  # SQLAlchemy's "begin" event emits BEGIN
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA foreign_keys = ON")
    finally:
        cursor.close()


def _sqlite_on_begin(connection: Connection) -> None:
    writes = connection.get_execution_options().get(_WRITE, False)
    connection.exec_driver_sql("BEGIN IMMEDIATE" if writes else "BEGIN")
