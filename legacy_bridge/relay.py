"""The relay: publishes captured changes to the broker in commit order, with confirms.

Each cycle first publishes again what was claimed but not confirmed (after a crash or a
failed publish), else claims the next safe batch of whole transactions (see
:mod:`legacy_bridge.change_log`); it publishes the batch in ``pos`` order (persistent
messages, many confirms in flight), waits for the broker's confirms, and only then stores
the checkpoint. The look for re-sends is skipped while this relay knows there are none
(its last batch was confirmed whole and held everything it had claimed); the claim and
reading the claimed rows back share one transaction, committed before publishing.
Nothing is lost, whatever line a crash (even SIGKILL) interrupts: a change
is either confirmed by the broker before the checkpoint passes it, or published again
with the same message id.

:meth:`Relay.run` adds what a long-running relay needs: retries with exponential backoff
(tenacity) while the database or the broker is unavailable, reconnecting the broker
through its factory and re-declaring the durable topology; waking on new changes
(:mod:`legacy_bridge.wakeup`); heartbeats when idle (:mod:`legacy_bridge.heartbeat`);
and, every ``maintenance_interval`` seconds, trigger refresh after column changes
(:mod:`legacy_bridge.drift`) and pruning of confirmed changes
(:mod:`legacy_bridge.retention`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Engine
from tenacity import RetryCallState, Retrying, retry_if_exception, wait_exponential

from broker import Broker, BrokerError, BrokerRefused
from legacy_bridge import metrics
from legacy_bridge.capture import CaptureDialect, dialect_for
from legacy_bridge.change_log import (
    Change,
    RelayState,
    backlog,
    check_installed,
    claim,
    confirm,
    mark_seen,
    read_state,
    unconfirmed,
)
from legacy_bridge.database import make_engine
from legacy_bridge.drift import DriftWatch
from legacy_bridge.envelope import Source, change_message
from legacy_bridge.heartbeat import heartbeat_message
from legacy_bridge.retention import DEFAULT_RETENTION_S, prune
from legacy_bridge.throughput import ThroughputLog
from legacy_bridge.wakeup import wakeup_for

log = logging.getLogger(__name__)

DEFAULT_EXCHANGE = "legacy.cdc"
DEFAULT_BATCH_SIZE = 1000
DEFAULT_HEARTBEAT_INTERVAL_S = 5.0
DEFAULT_MAINTENANCE_INTERVAL_S = 5.0
SEEN_INTERVAL_S = 5.0
"""How often a running relay records that it runs (``relay_seen_at``)."""


def is_transient(error: BaseException) -> bool:
    """True for failures that a retry may cure: broker or database unreachable, a lock
    or serialization conflict."""
    if isinstance(error, BrokerRefused):
        return False  # credentials, virtual host or URL: waiting does not change them
    if isinstance(error, BrokerError | sa_exc.OperationalError | sa_exc.InterfaceError):
        return True
    if isinstance(error, sa_exc.TimeoutError):
        return True
    return isinstance(error, sa_exc.DBAPIError) and error.connection_invalidated


class Relay:
    """Relays ``strangler_change`` rows to the topic exchange ``exchange``.

    ``legacy_db`` is an Engine or a URL (then the relay owns the engine). ``broker`` is
    used first; ``broker_factory`` (if given) replaces it after a broker failure, so a
    restarted RabbitMQ is reconnected instead of ending :meth:`run`. The alternate
    exchange ``<exchange>.unrouted`` keeps changes no queue is bound for. One relay runs
    per legacy database; a relay is used by one thread.

    ``heartbeat_interval``: seconds without publishing after which :meth:`run` publishes
    a heartbeat (None or 0: never). ``retention``: seconds a confirmed change stays in the
    change table (None: forever). ``maintenance_interval``: how often :meth:`run` checks
    for column changes and prunes.
    """

    def __init__(
        self,
        legacy_db: str | Engine,
        broker: Broker | None = None,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        exchange: str = DEFAULT_EXCHANGE,
        broker_factory: Callable[[], Broker] | None = None,
        max_backoff: float = 10.0,
        heartbeat_interval: float | None = DEFAULT_HEARTBEAT_INTERVAL_S,
        retention: float | None = DEFAULT_RETENTION_S,
        maintenance_interval: float = DEFAULT_MAINTENANCE_INTERVAL_S,
    ) -> None:
        if broker is None and broker_factory is None:
            raise ValueError("a Relay needs a broker or a broker_factory")
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self._engine, self._owns_engine = make_engine(legacy_db)
        self._broker = broker
        self._owns_broker = False
        self._broker_factory = broker_factory
        self._declared = False
        self._batch_size = batch_size
        self._exchange = exchange
        self._max_backoff = max_backoff
        self._heartbeat_interval = heartbeat_interval or None
        self._retention = retention
        self._maintenance_interval = maintenance_interval
        self._dialect: CaptureDialect | None = None
        self._drift: DriftWatch | None = None
        self._db_name = ""
        self._schema: str | None = None
        self._last_sent = time.monotonic()
        self._resends_possible = True  # claimed rows may wait unconfirmed (a crash)
        self._broker_lost = False  # a broker failure dropped the connection: log the next
        self.throughput = ThroughputLog(log)

    @property
    def exchange(self) -> str:
        return self._exchange

    def check_installed(self) -> None:
        """Raise :class:`~legacy_bridge.BridgeNotInstalled` unless capture is installed."""
        self._prepare()

    def backlog(self) -> int:
        """Captured changes the broker has not confirmed yet."""
        self._prepare()
        with self._engine.connect() as conn:
            return backlog(conn, read_state(conn).last_confirmed_pos)

    def run_once(self) -> int:
        """Publish one batch (re-sends first, else newly claimed); return its size."""
        dialect = self._prepare()
        broker = self._ready_broker()
        batch: list[Change] = []
        if self._resends_possible:
            with self._engine.begin() as conn:
                state = read_state(conn)
                batch = unconfirmed(conn, state.last_confirmed_pos, self._batch_size)
        if not batch:
            self._resends_possible = False
            # the claim and reading the claimed rows back: one transaction, the claim
            # first in it (SQLite must not read before it takes its write lock)
            with self._engine.begin() as conn:
                claimed = claim(conn, dialect, self._batch_size)
                if not claimed:
                    return 0
                state = read_state(conn)
                batch = unconfirmed(conn, state.last_confirmed_pos, self._batch_size)
            if not batch:
                return 0
        # until the checkpoint passes the batch, a failure leaves rows to send again
        self._resends_possible = True
        now = datetime.now(UTC)
        source = self._source(state)
        broker.publish(self._exchange, [change_message(c, source, now) for c in batch])
        newest = max(c.captured_at for c in batch)
        with self._engine.begin() as conn:
            confirm(conn, batch[-1].pos, newest, datetime.now(UTC))
        # rows claimed beyond this batch (a claim larger than a batch) are sent next
        self._resends_possible = len(batch) == self._batch_size
        self._last_sent = time.monotonic()
        self.throughput.record(len(batch), batch[-1].pos)
        metrics.CHANGES_PUBLISHED.inc(len(batch))
        return len(batch)

    def heartbeat(self) -> None:
        """Publish a heartbeat now (confirmed)."""
        self._prepare()
        broker = self._ready_broker()
        with self._engine.connect() as conn:
            state = read_state(conn)
        message = heartbeat_message(
            self._source(state),
            datetime.now(UTC),
            state.last_captured_at,
            state.last_confirmed_pos,
        )
        broker.publish(self._exchange, [message])
        metrics.HEARTBEATS_PUBLISHED.inc()
        self._last_sent = time.monotonic()

    def maintain(self) -> None:
        """Re-create triggers of tables whose columns changed; prune confirmed changes."""
        self._prepare()
        assert self._drift is not None
        with self._engine.begin() as conn:
            self._drift.check(conn)
        if self._retention is not None:
            pruned = prune(self._engine, self._retention)
            if pruned:
                log.info("pruned %d confirmed changes", pruned)

    def run(self, stop: threading.Event, poll_interval: float = 0.2) -> None:
        """Relay until ``stop`` is set; the batch in flight is finished first.

        While the database or the broker is unavailable, retries with exponential backoff
        (reconnecting the broker through the factory) instead of giving up. Between
        cycles it waits for new changes (:mod:`legacy_bridge.wakeup`): a few milliseconds
        while changes keep coming, at most ``poll_interval`` seconds when idle.
        """

        def sleep(seconds: float) -> None:
            stop.wait(seconds)  # wakes at once when stopped

        retrying = Retrying(
            retry=retry_if_exception(is_transient),
            wait=wait_exponential(multiplier=0.1, min=0.1, max=self._max_backoff),
            stop=lambda _state: stop.is_set(),
            sleep=sleep,
            before_sleep=self._before_retry,
            reraise=True,
        )
        wakeup = wakeup_for(self._engine)
        next_maintenance = next_seen = 0.0
        try:
            # ready only once capture is installed and the broker took the exchange: a
            # relay that cannot work fails here, before it says it is relaying
            try:
                retrying(self._prepare)
                retrying(self._ready_broker)
            except Exception as error:
                if is_transient(error) and stop.is_set():
                    return
                raise
            if stop.is_set():
                return
            log.info("relaying captured changes to exchange %r", self._exchange)
            self._last_sent = time.monotonic()
            wakeup.listen()
            while not stop.is_set():
                try:
                    if time.monotonic() >= next_maintenance:
                        next_maintenance = time.monotonic() + self._maintenance_interval
                        self._maintain_or_log(retrying)
                    published = retrying(self.run_once)
                    if not published and self._heartbeat_due() and not stop.is_set():
                        retrying(self.heartbeat)
                    if time.monotonic() >= next_seen:
                        next_seen = time.monotonic() + SEEN_INTERVAL_S
                        retrying(self._mark_seen)
                except Exception as error:
                    if is_transient(error) and stop.is_set():
                        break
                    raise
                if published < self._batch_size:  # else more is waiting: no pause
                    wakeup.wait(self._idle_wait(poll_interval), stop, published)
        finally:
            wakeup.close()

    def close(self) -> None:
        """Release what the relay created (engine from a URL, brokers from the factory)."""
        self._drop_broker()
        if self._owns_engine:
            self._engine.dispose()

    def __enter__(self) -> Relay:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _maintain_or_log(self, retrying: Retrying) -> None:
        """Maintenance that fails for good (a captured table renamed, say) is logged and
        tried again later: it must not stop the relay."""
        try:
            retrying(self.maintain)
        except Exception as error:
            if is_transient(error):
                raise
            log.error("maintenance failed: %s", f"{type(error).__name__}: {error}".splitlines()[0])

    def _mark_seen(self) -> None:
        with self._engine.begin() as conn:
            mark_seen(conn, datetime.now(UTC))

    def _heartbeat_due(self) -> bool:
        interval = self._heartbeat_interval
        return interval is not None and time.monotonic() - self._last_sent >= interval

    def _idle_wait(self, poll_interval: float) -> float:
        if self._heartbeat_interval is None:
            return poll_interval
        until_heartbeat = self._last_sent + self._heartbeat_interval - time.monotonic()
        return max(0.0, min(poll_interval, until_heartbeat))

    def _prepare(self) -> CaptureDialect:
        if self._dialect is None:
            with self._engine.connect() as conn:
                dialect = dialect_for(conn)
                schema = dialect.schema_name(conn)
                check_installed(conn, schema)
                read_state(conn)
                self._db_name = dialect.database_name(conn)
                self._schema = schema
            self._drift = DriftWatch(dialect, schema)
            self._dialect = dialect
        return self._dialect

    def _source(self, state: RelayState) -> Source:
        assert self._dialect is not None
        return Source(
            connector=self._dialect.connector,
            name=state.server_name,
            db=self._db_name,
            schema=self._schema,
            install_id=state.install_id,
            real_txids=self._dialect.real_txids,
        )

    def _ready_broker(self) -> Broker:
        if self._broker is None:
            assert self._broker_factory is not None
            self._broker = self._broker_factory()
            self._owns_broker = True
            self._declared = False
            if self._broker_lost:
                self._broker_lost = False
                log.info("reconnected to the broker")
        if not self._declared:
            self._broker.declare_exchange(
                self._exchange, alternate_exchange=f"{self._exchange}.unrouted"
            )
            self._declared = True
        return self._broker

    def _drop_broker(self) -> None:
        if self._broker is not None and self._owns_broker:
            try:
                self._broker.close()
            except BrokerError:
                log.debug("closing a failed broker connection", exc_info=True)
        if self._owns_broker or self._broker_factory is not None:
            self._broker = None
            self._owns_broker = False

    def _before_retry(self, state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        delay = state.next_action.sleep if state.next_action else 0.0
        what = "broker" if isinstance(error, BrokerError) else "legacy database"
        summary = f"{type(error).__name__}: {error}".splitlines()[0]
        log.warning("%s unavailable (%s); retrying in %.1f s", what, summary, delay)
        if isinstance(error, BrokerError) and self._broker_factory is not None:
            self._broker_lost = self._broker_lost or self._broker is not None
            self._drop_broker()
