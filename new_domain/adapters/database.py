"""Engines for the new domain's database (PostgreSQL or SQLite)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, TypeVar

import sqlalchemy
from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Engine, make_url

from new_domain.ingest.ports import describe_error as describe_error  # one line per error

SQLITE_BUSY_TIMEOUT_S = 30.0
RECYCLE_S = 1800

T = TypeVar("T")


def create_engine(
    url: str,
    *,
    for_writes: bool = False,
    for_reads: bool = False,
    time_limit: float | None = None,
) -> Engine:
    """An engine for ``url``.

    On SQLite: foreign keys on, WAL journal (readers do not block the writer), a busy
    timeout, and with ``for_writes`` every transaction starts with ``BEGIN IMMEDIATE``
    so concurrent writers queue for the lock instead of failing on upgrade. Elsewhere:
    connections are pinged before use so a restarted server is reconnected; with
    ``for_reads`` (single-statement reads: the read route) there is neither a ping nor a
    ``BEGIN``/``ROLLBACK`` around each statement, one round trip per query, and the
    caller retries once on a connection found dead (:func:`retry_on_disconnect`).

    ``time_limit`` (PostgreSQL, with ``for_reads``): seconds a statement may run
    (``statement_timeout``), a pooled connection may be waited for, and unacknowledged
    data may stay on the wire (``tcp_user_timeout``, so a server that vanished fails the
    query instead of hanging it); connecting may take at least 2 s (libpq's minimum).
    """
    if make_url(url).get_backend_name() != "sqlite":
        if for_reads:
            limits: dict[str, Any] = {}
            if time_limit is not None and make_url(url).get_backend_name() == "postgresql":
                ms = max(1, round(time_limit * 1000))
                limits = {
                    "pool_timeout": time_limit,
                    "connect_args": {
                        "options": f"-c statement_timeout={ms}",
                        "connect_timeout": max(2, math.ceil(time_limit)),
                        "tcp_user_timeout": ms,
                    },
                }
            return sqlalchemy.create_engine(
                url, isolation_level="AUTOCOMMIT", pool_recycle=RECYCLE_S, **limits
            )
        return sqlalchemy.create_engine(url, pool_pre_ping=True)
    engine = sqlalchemy.create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # SQLAlchemy emits BEGIN itself
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE" if for_writes else "BEGIN")

    return engine


def retry_on_disconnect(query: Callable[[], T]) -> T:
    """Run ``query``; once more if it failed on a connection the server had closed (a
    restart, an idle timeout): the pool has discarded that connection by then."""
    try:
        return query()
    except sa_exc.DBAPIError as error:
        if not error.connection_invalidated:
            raise
        return query()


def safe_url(url: str) -> str:
    """``url`` without its password, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - an unparsable URL is shown as given
        return url


class ConcurrentUpdate(Exception):
    """Another transaction changed a row this one changed too (retry the work)."""


def is_transient(error: BaseException) -> bool:
    """True for failures of the database itself rather than of what was written.

    Lost connections, locks, timeouts, serialisation failures and concurrent updates
    pass with time; a missing table means the schema is not migrated yet (retrying
    beats dead-lettering every message). Integrity and data errors are the data's fault.
    """
    if isinstance(error, sa_exc.DBAPIError) and error.connection_invalidated:
        return True
    return isinstance(
        error,
        sa_exc.OperationalError
        | sa_exc.InterfaceError
        | sa_exc.ProgrammingError
        | sa_exc.TimeoutError
        | sa_exc.DisconnectionError
        | ConcurrentUpdate,
    )
