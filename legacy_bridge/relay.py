"""The relay: publishes captured changes to the broker in commit order, with confirms.

Each cycle first publishes again what was claimed but not confirmed (after a crash or a
failed publish), else claims the next safe batch (see :mod:`legacy_bridge.change_log`);
it publishes the batch in ``pos`` order, waits for the broker's confirms, and only then
stores the checkpoint. Nothing is lost: a change is either confirmed by the broker before
the checkpoint passes it, or published again with the same message id.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Engine
from tenacity import RetryCallState, Retrying, retry_if_exception, wait_exponential

from broker import Broker, BrokerError
from legacy_bridge.capture import CaptureDialect, dialect_for
from legacy_bridge.change_log import (
    Change,
    backlog,
    check_installed,
    claim,
    confirm,
    read_state,
    unconfirmed,
)
from legacy_bridge.database import make_engine
from legacy_bridge.envelope import Source, change_message
from legacy_bridge.throughput import ThroughputLog

log = logging.getLogger(__name__)

DEFAULT_EXCHANGE = "legacy.cdc"
DEFAULT_BATCH_SIZE = 1000


def is_transient(error: BaseException) -> bool:
    """True for failures that a retry may cure: broker or database unreachable."""
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
        self._dialect: CaptureDialect | None = None
        self._db_name = ""
        self._schema: str | None = None
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
        with self._engine.begin() as conn:
            state = read_state(conn)
            batch = unconfirmed(conn, state.last_confirmed_pos, self._batch_size)
        if not batch:
            with self._engine.begin() as conn:
                if not claim(conn, dialect, self._batch_size):
                    return 0
            with self._engine.begin() as conn:
                state = read_state(conn)
                batch = unconfirmed(conn, state.last_confirmed_pos, self._batch_size)
            if not batch:
                return 0
        self._publish(broker, batch, state.install_id, state.server_name)
        with self._engine.begin() as conn:
            confirm(conn, batch[-1].pos)
        self.throughput.record(len(batch), batch[-1].pos)
        return len(batch)

    def run(self, stop: threading.Event, poll_interval: float = 0.2) -> None:
        """Relay until ``stop`` is set; the batch in flight is finished first.

        While the database or the broker is unavailable, retries with exponential backoff
        (reconnecting the broker through the factory) instead of giving up.
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
        while not stop.is_set():
            try:
                published = retrying(self.run_once)
            except Exception as error:
                if is_transient(error) and stop.is_set():
                    break
                raise
            if published < self._batch_size:
                stop.wait(poll_interval)

    def close(self) -> None:
        """Release what the relay created (engine from a URL, brokers from the factory)."""
        self._drop_broker()
        if self._owns_engine:
            self._engine.dispose()

    def __enter__(self) -> Relay:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _prepare(self) -> CaptureDialect:
        if self._dialect is None:
            with self._engine.connect() as conn:
                dialect = dialect_for(conn)
                schema = dialect.schema_name(conn)
                check_installed(conn, schema)
                read_state(conn)
                self._db_name = dialect.database_name(conn)
                self._schema = schema
            self._dialect = dialect
        return self._dialect

    def _ready_broker(self) -> Broker:
        if self._broker is None:
            assert self._broker_factory is not None
            self._broker = self._broker_factory()
            self._owns_broker = True
            self._declared = False
        if not self._declared:
            self._broker.declare_exchange(
                self._exchange, alternate_exchange=f"{self._exchange}.unrouted"
            )
            self._declared = True
        return self._broker

    def _publish(
        self, broker: Broker, batch: list[Change], install_id: str, server_name: str
    ) -> None:
        assert self._dialect is not None
        source = Source(
            connector=self._dialect.connector,
            name=server_name,
            db=self._db_name,
            schema=self._schema,
            install_id=install_id,
        )
        now = datetime.now(UTC)
        broker.publish(self._exchange, [change_message(c, source, now) for c in batch])

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
            self._drop_broker()
