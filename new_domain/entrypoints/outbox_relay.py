"""The outbox relay: publishes the domain events in ``outbox`` to ``new_domain.events``.

Each round takes the oldest unpublished rows (locked on PostgreSQL, so a second relay
waits rather than publishing them too), publishes them with publisher confirms, and
marks them published in the same transaction. A crash after the broker confirmed but
before the commit publishes those rows again with the same ``message_id``: delivery
is at least once, duplicates carry the id a subscriber deduplicates by. Rows are
published in the order they were written.

Between rounds the relay waits adaptively (:class:`Pace`): every ``fast`` seconds (5 ms)
for ``linger`` seconds after it last published, so that an event of a busy write path
waits a few milliseconds rather than half a poll interval (back-sync's lag starts
here); then the wait doubles up to ``poll_interval``, so an idle relay costs one query
per poll interval.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import timedelta

from sqlalchemy.engine import Engine
from tenacity import RetryCallState

from broker import Broker, BrokerError, Message
from new_domain import metrics
from new_domain.adapters.database import create_engine, describe_error, is_transient
from new_domain.adapters.outbox import (
    EVENTS_EXCHANGE,
    mark_published,
    prune_published,
    unpublished,
)
from new_domain.entrypoints.retrying import failure_of, reconnecting

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 1000
FAST_S = 0.005
"""Wait between rounds while events keep coming."""
LINGER_S = 1.0
"""How long after the relay last published it keeps waiting only :data:`FAST_S`."""


class Pace:
    """How long the relay waits before its next round (see the module docstring)."""

    def __init__(
        self,
        poll_interval: float,
        fast: float = FAST_S,
        linger: float = LINGER_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.poll_interval = poll_interval
        self.fast = min(fast, poll_interval)
        self.linger = linger
        self._clock = clock
        self._active_at: float | None = None
        self._wait = poll_interval

    def next_wait(self, published: int) -> float:
        """The wait after a round that published ``published`` events."""
        now = self._clock()
        if published:
            self._active_at = now
            self._wait = self.fast
        elif self._active_at is None or now - self._active_at >= self.linger:
            self._wait = min(max(self._wait * 2, self.fast), self.poll_interval)
        return self._wait


class OutboxRelay:
    """Relays the outbox of the new database to the broker. One thread."""

    def __init__(
        self,
        engine: Engine,
        broker_factory: Callable[[], Broker],
        *,
        exchange: str = EVENTS_EXCHANGE,
        batch_size: int = DEFAULT_BATCH_SIZE,
        poll_interval: float = 0.1,
        fast: float = FAST_S,
        linger: float = LINGER_S,
        retention: timedelta | None = timedelta(days=7),
        reconnect_delay: float = 1.0,
    ) -> None:
        self.engine = engine
        self.broker_factory = broker_factory
        self.exchange = exchange
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.pace = Pace(poll_interval, fast, linger)
        self.retention = retention
        self.reconnect_delay = reconnect_delay
        self._broker: Broker | None = None
        self.published = 0

    def run(self, stop: threading.Event) -> None:
        """Publish until ``stop`` is set, waiting as :class:`Pace` says when there is
        nothing more to publish; while the broker or the database is unavailable, retry
        with the ``reconnecting`` policy (from ``reconnect_delay`` up to 30 s)."""
        retrying = reconnecting(stop, self.reconnect_delay, self._after_failure)
        rounds = 0
        try:
            while not stop.is_set():
                count = retrying(self.run_once)
                if count is None:
                    return  # stopped while waiting to retry
                rounds += 1
                if rounds % 600 == 0:
                    self.prune()
                if count < self.batch_size:
                    stop.wait(self.pace.next_wait(count))
        finally:
            self._disconnect()

    def _after_failure(self, state: RetryCallState) -> None:
        error, delay = failure_of(state)
        if isinstance(error, BrokerError):
            logger.warning("outbox relay: broker unavailable (%s)", error)
        elif error is not None and is_transient(error):
            logger.warning("outbox relay: database unavailable (%s)", describe_error(error))
        else:
            logger.error("outbox relay failed; retrying in %.1fs", delay, exc_info=error)
        self._disconnect()

    def run_once(self) -> int:
        """Publish one batch of unpublished events; how many were published."""
        broker = self._connected()
        with self.engine.begin() as connection:
            rows = unpublished(connection, self.batch_size)
            if not rows:
                return 0
            broker.publish(
                self.exchange,
                [
                    Message(
                        routing_key=row.routing_key,
                        body=row.body.encode(),
                        message_id=row.message_id,
                        type=row.event_type,
                        headers={"x-event-type": row.event_type},
                    )
                    for row in rows
                ],
            )
            mark_published(connection, [row.id for row in rows])
        metrics.EVENTS_PUBLISHED.inc(len(rows))
        self.published += len(rows)
        logger.debug("published %d domain events", len(rows))
        return len(rows)

    def drain(self) -> int:
        """Publish until nothing is left; how many were published."""
        total = 0
        while count := self.run_once():
            total += count
        return total

    def prune(self) -> None:
        """Delete rows published longer ago than ``retention``."""
        if self.retention is None:
            return
        with self.engine.begin() as connection:
            pruned = prune_published(connection, self.retention)
        if pruned:
            logger.info("pruned %d published outbox rows", pruned)

    def close(self) -> None:
        self._disconnect()

    def _connected(self) -> Broker:
        if self._broker is None:
            broker = self.broker_factory()
            try:
                broker.declare_exchange(self.exchange)
            except BaseException:
                broker.close()
                raise
            self._broker = broker
        return self._broker

    def _disconnect(self) -> None:
        broker, self._broker = self._broker, None
        if broker is not None:
            try:
                broker.close()
            except Exception:  # noqa: BLE001 - already broken
                logger.debug("closing the broker failed", exc_info=True)


def open_outbox_relay(
    new_db_url: str, broker_factory: Callable[[], Broker], *, exchange: str = EVENTS_EXCHANGE
) -> OutboxRelay:
    """An outbox relay over the new database at ``new_db_url`` (its own engine: close
    the relay, then dispose ``relay.engine``)."""
    return OutboxRelay(
        create_engine(new_db_url, for_writes=True), broker_factory, exchange=exchange
    )
