"""Waking the relay soon after changes arrive, without sleeping a fixed interval.

By default the relay polls adaptively (:class:`Poll`): between cycles it looks for a
committed, unclaimed change with one indexed query (``pos IS NULL``, the pending index)
on a connection of its own in autocommit mode. It looks every few milliseconds for a
while after it last published, and backs off (doubling) to the poll interval when nothing
comes, or when what is pending cannot be claimed yet (a transaction that started earlier
is still open; see :mod:`legacy_bridge.change_log`). So a change of a busy legacy
database waits a few milliseconds, and an idle relay costs one query per poll interval.

Why the capture trigger does not notify by default: ``pg_notify`` makes every capturing
transaction commit one at a time (see :mod:`legacy_bridge.capture_postgres`). Where the
install chose it (``bridge install --notify``, recorded in ``strangler_relay_state``),
the relay on PostgreSQL LISTENs on a dedicated autocommit connection (psycopg 3, outside
the pool) and waits for a notification with a timeout of the poll interval
(:class:`PostgresListener`). The notification only wakes the relay (it carries no data,
and one lost while the connection was down costs at most one poll interval): the change
table stays the only source of truth.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Protocol

from sqlalchemy import exc as sa_exc
from sqlalchemy import select
from sqlalchemy.engine import Connection, Engine

from legacy_bridge.tables import change, relay_state

log = logging.getLogger(__name__)

CHANNEL = "strangler_change"
_SLICE = 0.25  # longest uninterrupted wait, so that a stop is noticed soon
FAST_S = 0.005
"""Interval between looks while changes keep coming."""
LINGER_S = 1.0
"""How long after the relay last published it keeps looking every :data:`FAST_S`."""

_PENDING = select(change.c.change_id).where(change.c.pos.is_(None)).limit(1)


class Wakeup(Protocol):
    def listen(self) -> None:
        """Start listening (before the first look at the change table)."""

    def wait(self, timeout: float, stop: threading.Event, published: int = 0) -> bool:
        """Wait up to ``timeout`` seconds; True when woken by a change. ``published``:
        how many changes the relay's cycle before this wait published."""

    def close(self) -> None: ...


class Poll:
    """Adaptive polling of the change table (see the module docstring)."""

    def __init__(self, engine: Engine, fast: float = FAST_S, linger: float = LINGER_S) -> None:
        self._engine = engine
        self._fast = fast
        self._linger = linger
        self._step = fast
        self._active_at = -linger  # monotonic time the relay last published
        self._woke = False
        self._connection: Connection | None = None
        self.looks = 0
        """Queries made so far (for tests and curiosity)."""

    def listen(self) -> None:
        return None

    def wait(self, timeout: float, stop: threading.Event, published: int = 0) -> bool:
        now = time.monotonic()
        if published:
            self._active_at, self._step = now, self._fast
        elif self._woke:  # woken for pending rows that the relay could not claim yet
            self._step = min(self._step * 2, max(timeout, self._fast))
        self._woke = False
        deadline = now + timeout
        while not stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            if self._step > remaining - self._fast:  # the relay's cycle looks at the deadline
                stop.wait(remaining)
                return False
            stop.wait(self._step)
            if stop.is_set():
                return False
            if self._pending():
                self._woke = True
                return True
            if time.monotonic() - self._active_at > self._linger:
                self._step = min(self._step * 2, max(timeout, self._fast))
        return False

    def _pending(self) -> bool:
        self.looks += 1
        try:
            if self._connection is None:
                self._connection = self._engine.connect().execution_options(
                    isolation_level="AUTOCOMMIT"
                )
            return self._connection.execute(_PENDING).first() is not None
        except sa_exc.SQLAlchemyError as error:
            # the relay's next cycle meets the error too, and retries with backoff
            log.debug("looking for changes failed: %s", error)
            self.close()
            return True

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                connection.close()
            except Exception:
                log.debug("closing the poll connection", exc_info=True)


class PostgresListener:
    """LISTEN on ``strangler_change`` and wake on its notifications."""

    def __init__(self, engine: Engine, retry_after: float = 5.0) -> None:
        self._conninfo = engine.url.set(drivername="postgresql").render_as_string(
            hide_password=False
        )
        self._connection: Any = None
        self._retry_after = retry_after
        self._failed_at: float | None = None

    def wait(self, timeout: float, stop: threading.Event, published: int = 0) -> bool:
        deadline = time.monotonic() + timeout
        while not stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            connection = self._connect()
            if connection is None:
                stop.wait(min(remaining, _SLICE))
                continue
            try:
                for _ in connection.notifies(timeout=min(remaining, _SLICE), stop_after=1):
                    return True
            except Exception as error:  # the database went away: poll until it is back
                log.debug("listen connection lost: %s", error)
                self.close()
                self._failed_at = time.monotonic()
        return False

    def listen(self) -> None:
        self._connect()

    def _connect(self) -> Any:
        if self._connection is not None:
            return self._connection
        if self._failed_at is not None and time.monotonic() - self._failed_at < self._retry_after:
            return None
        import psycopg

        try:
            connection = psycopg.connect(self._conninfo, autocommit=True, connect_timeout=5)
            connection.execute(f"LISTEN {CHANNEL}")
        except psycopg.Error as error:
            log.debug("cannot listen for changes: %s", error)
            self._failed_at = time.monotonic()
            return None
        self._connection = connection
        self._failed_at = None
        return connection

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                connection.close()
            except Exception:
                log.debug("closing the listen connection", exc_info=True)


def wakeup_for(engine: Engine) -> Wakeup:
    """The way to wait for changes on ``engine``'s database that its install chose:
    :class:`PostgresListener` when the capture notifies, else :class:`Poll`."""
    postgres = engine.dialect.name == "postgresql" and engine.dialect.driver == "psycopg"
    if postgres and _notifies(engine):
        return PostgresListener(engine)
    return Poll(engine)


def _notifies(engine: Engine) -> bool:
    """The install's choice; False while it cannot be read (the relay's first cycle
    reports why, and a restarted relay reads it again)."""
    try:
        with engine.connect() as conn:
            return bool(conn.execute(select(relay_state.c.notify)).scalar())
    except sa_exc.SQLAlchemyError as error:
        log.debug("cannot read whether the capture notifies: %s", error)
        return False
