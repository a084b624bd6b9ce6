"""Waking the relay when changes arrive, instead of sleeping a fixed interval.

On PostgreSQL the capture trigger calls ``pg_notify('strangler_change', '')``; the relay
LISTENs on a dedicated autocommit connection (psycopg 3, outside the pool) and waits for
a notification with a timeout of the poll interval. The notification only wakes the
relay (it carries no data, and one lost while the connection was down costs at most one
poll interval): the change table stays the only source of truth. Elsewhere the relay
polls.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Protocol

from sqlalchemy.engine import Engine

log = logging.getLogger(__name__)

CHANNEL = "strangler_change"
_SLICE = 0.25  # longest uninterrupted wait, so that a stop is noticed soon


class Wakeup(Protocol):
    def listen(self) -> None:
        """Start listening (before the first look at the change table)."""

    def wait(self, timeout: float, stop: threading.Event) -> bool:
        """Wait up to ``timeout`` seconds; True when woken by a change."""

    def close(self) -> None: ...


class Sleep:
    """Polling: wait the whole timeout (or until stopped)."""

    def listen(self) -> None:
        return None

    def wait(self, timeout: float, stop: threading.Event) -> bool:
        stop.wait(timeout)
        return False

    def close(self) -> None:
        return None


class PostgresListener:
    """LISTEN on ``strangler_change`` and wake on its notifications."""

    def __init__(self, engine: Engine, retry_after: float = 5.0) -> None:
        self._conninfo = engine.url.set(drivername="postgresql").render_as_string(
            hide_password=False
        )
        self._connection: Any = None
        self._retry_after = retry_after
        self._failed_at: float | None = None

    def wait(self, timeout: float, stop: threading.Event) -> bool:
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
    """The best way to wait for changes on ``engine``'s database."""
    if engine.dialect.name == "postgresql" and engine.dialect.driver == "psycopg":
        return PostgresListener(engine)
    return Sleep()
