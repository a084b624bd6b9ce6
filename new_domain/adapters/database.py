"""Engines for the new domain's database (PostgreSQL or SQLite)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any, TypeVar

import sqlalchemy
from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Engine, make_url

from new_domain.ingest.ports import describe_error as describe_error  # one line per error

SQLITE_BUSY_TIMEOUT_S = 30.0
RECYCLE_S = 1800
PING_AFTER_IDLE_S = 1.0
"""A pooled connection idle at least this long is pinged before use (see
:func:`ping_when_idle`)."""

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
    a connection idle for a second or more is pinged before use so a restarted server is
    reconnected (:func:`ping_when_idle`; the callers retry work that met a connection
    closed since); with
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
        return ping_when_idle(sqlalchemy.create_engine(url))
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


def ping_when_idle(engine: Engine, idle: float = PING_AFTER_IDLE_S) -> Engine:
    """Ping a pooled connection before use only when it was idle ``idle`` seconds or
    more; a dead one is replaced (the pool's own retry on ``DisconnectionError``).

    ``pool_pre_ping`` pings at every checkout: one more round trip per transaction,
    which was a seventh of a new write path decision's time under load (a py-spy
    profile of the facade in ``write_path``). A connection used within the last second
    is not pinged: a server restarted or a backend terminated since then shows as a
    statement failing with ``connection_invalidated``, which the callers treat as
    transient (the write path retries a decision that failed so before its commit,
    the consumer and the relay retry their batch)."""

    @event.listens_for(engine, "checkin")
    def _checked_in(_dbapi_connection: Any, record: Any) -> None:
        if record is not None:
            record.info["checked_in_at"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checked_out(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get("checked_in_at")
        if since is None or time.monotonic() - since < idle:
            return  # a new connection, or one in use a moment ago
        try:
            alive = engine.dialect.do_ping(dbapi_connection)
        except Exception as error:  # noqa: BLE001 - any failure: the connection is gone
            raise sa_exc.DisconnectionError(describe_error(error)) from error
        if not alive:
            raise sa_exc.DisconnectionError("the connection did not answer a ping")

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
