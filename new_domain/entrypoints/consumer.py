"""The consumer of legacy change events: queue -> anti-corruption layer -> message bus.

Per batch taken from the broker:

1. decode every change (heartbeats are skipped; an undecodable message becomes a
   dead letter);
2. apply them all in ONE unit of work (one database transaction) and commit;
3. if that fails because of a message, apply them again one at a time, each in its own
   transaction, and dead-letter those that fail alone;
4. publish the dead letters to ``<queue>.dlx`` (confirmed), THEN ack the whole batch.

Acking only after the commit gives at-least-once; the position stored with each
effect makes a redelivered change a no-op (exactly-once effect). When the database is
unreachable nothing is acked: the batch is retried with back-off, then handed back to
the queue. When the broker is unreachable, :meth:`Consumer.run` reconnects through the
factory.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import exc as sa_exc
from sqlalchemy.orm.exc import StaleDataError
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    sleep_using_event,
    stop_after_delay,
    stop_when_event_set,
    wait_exponential,
    wait_random,
)

from broker import Broker, BrokerError, Delivery, QueueSpec
from new_domain import acl
from new_domain.service_layer.legacy_changes import apply_changes
from new_domain.service_layer.messagebus import MessageBus

logger = logging.getLogger(__name__)

DEFAULT_QUEUE = "new_domain.legacy_cdc"
DEFAULT_EXCHANGE = "legacy.cdc"
HEARTBEAT = "heartbeat"
MAX_ERROR_LENGTH = 500


class DatabaseUnavailable(Exception):
    """The new database could not be written; the batch went back to the queue."""


def is_transient(error: BaseException) -> bool:
    """True for failures of the database itself rather than of a message.

    Lost connections, locks, timeouts, serialisation failures and concurrent updates
    pass with time; a missing table means the schema is not migrated yet — retrying
    beats dead-lettering every message. Integrity and data errors are a message's fault.
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
        | StaleDataError,
    )


@dataclass(frozen=True)
class _Failure:
    delivery: Delivery
    error: BaseException
    attempts: int


class Consumer:
    """Applies ``legacy.cdc`` changes from ``queue`` to the new domain. One thread."""

    def __init__(
        self,
        bus: MessageBus,
        broker_factory: Callable[[], Broker],
        queue: str = DEFAULT_QUEUE,
        *,
        exchange: str = DEFAULT_EXCHANGE,
        batch_size: int = 500,
        batch_timeout: float = 0.2,
        db_retry_timeout: float = 60.0,
        reconnect_delay: float = 1.0,
    ) -> None:
        self.bus = bus
        self.broker_factory = broker_factory
        self.queue = queue
        self.exchange = exchange
        self.batch_size = batch_size
        self.batch_timeout = batch_timeout
        self.db_retry_timeout = db_retry_timeout
        self.reconnect_delay = reconnect_delay
        self._broker: Broker | None = None
        self._stop = threading.Event()

    @property
    def dead_letter_exchange(self) -> str:
        return f"{self.queue}.dlx"

    @property
    def dead_letter_queue(self) -> str:
        return f"{self.queue}.dlq"

    def run(self, stop: threading.Event) -> None:
        """Consume until ``stop`` is set; the batch in hand is finished first."""
        self._stop = stop
        delay = self.reconnect_delay
        try:
            while not stop.is_set():
                try:
                    self.run_once()
                    delay = self.reconnect_delay
                except BrokerError as error:
                    logger.warning("broker unavailable (%s); reconnecting in %.1fs", error, delay)
                    self._disconnect()
                except DatabaseUnavailable as error:
                    logger.warning("%s; retrying in %.1fs", error, delay)
                except Exception:
                    logger.exception("unexpected failure; reconnecting in %.1fs", delay)
                    self._disconnect()
                else:
                    continue
                stop.wait(delay)
                delay = min(delay * 2, 30.0)
        finally:
            self._disconnect()

    def run_once(self) -> int:
        """Take one batch (waiting up to ``batch_timeout``), apply and ack it.

        Returns the number of messages taken. Raises :class:`DatabaseUnavailable` (the
        batch is back in the queue) or ``BrokerError``.
        """
        broker = self._connected()
        deliveries = broker.get_batch(self.queue, self.batch_size, self.batch_timeout)
        if deliveries:
            self._process(broker, deliveries)
        return len(deliveries)

    def connect(self) -> None:
        """Connect and declare the queue, its bindings and the dead-letter pair (idempotent)."""
        self._connected()

    def close(self) -> None:
        """Close the broker connection (unacknowledged messages go back to the queue)."""
        self._disconnect()

    def _connected(self) -> Broker:
        if self._broker is None:
            broker = self.broker_factory()
            try:
                self._declare(broker)
            except BaseException:
                broker.close()
                raise
            self._broker = broker
        return self._broker

    def _declare(self, broker: Broker) -> None:
        broker.declare_exchange(self.exchange, alternate_exchange=f"{self.exchange}.unrouted")
        broker.declare_queue(QueueSpec(self.queue, [(self.exchange, "#")]))
        broker.declare_exchange(self.dead_letter_exchange)
        broker.declare_queue(QueueSpec(self.dead_letter_queue, [(self.dead_letter_exchange, "#")]))

    def _disconnect(self) -> None:
        broker, self._broker = self._broker, None
        if broker is not None:
            try:
                broker.close()
            except Exception:  # noqa: BLE001 - already broken; the server requeues
                logger.debug("closing the broker failed", exc_info=True)

    def _process(self, broker: Broker, deliveries: Sequence[Delivery]) -> None:
        changes: list[tuple[Delivery, acl.LegacyChange]] = []
        failures: list[_Failure] = []
        for delivery in deliveries:
            if delivery.message.type == HEARTBEAT:
                continue
            try:
                change = acl.parse_change(delivery.message.body, delivery.message.message_id)
            except Exception as error:  # parsing is pure: any failure is the message's
                failures.append(_Failure(delivery, error, attempts=1))
            else:
                changes.append((delivery, change))
        try:
            failures.extend(self._apply(changes))
        except DatabaseUnavailable:
            for delivery in reversed(deliveries):  # back in their original order
                broker.reject(delivery.delivery_tag, requeue=True)
            raise
        if failures:
            self._dead_letter(broker, failures)
        broker.ack(deliveries[-1].delivery_tag, multiple=True)
        logger.debug("acked %d messages", len(deliveries))

    def _apply(self, changes: Sequence[tuple[Delivery, acl.LegacyChange]]) -> list[_Failure]:
        if not changes:
            return []
        try:
            self._with_db_retry([change for _, change in changes])
            return []
        except DatabaseUnavailable:
            raise
        except Exception as error:
            if len(changes) == 1:
                return [_Failure(changes[0][0], error, attempts=1)]
            logger.info("batch of %d failed (%s); applying one at a time", len(changes), error)
        failures = []
        for delivery, change in changes:
            try:
                self._with_db_retry([change])
            except DatabaseUnavailable:
                raise
            except Exception as error:
                failures.append(_Failure(delivery, error, attempts=2))
        return failures

    def _with_db_retry(self, changes: list[acl.LegacyChange]) -> None:
        retrying = Retrying(
            retry=retry_if_exception(is_transient),
            stop=stop_after_delay(self.db_retry_timeout) | stop_when_event_set(self._stop),
            wait=wait_exponential(multiplier=0.05, max=5.0) + wait_random(0, 0.1),
            sleep=sleep_using_event(self._stop),
            before_sleep=_log_retry,
            reraise=True,
        )
        try:
            retrying(apply_changes, self.bus, changes)
        except Exception as error:
            if is_transient(error):
                raise DatabaseUnavailable(
                    f"new database unavailable: {_one_line(error)}"
                ) from error
            raise

    def _dead_letter(self, broker: Broker, failures: Sequence[_Failure]) -> None:
        now = datetime.now(UTC).isoformat()
        messages = []
        for failure in failures:
            original = failure.delivery.message
            reason = _one_line(failure.error)
            headers: dict[str, Any] = dict(original.headers)
            previous_attempts = headers.get("x-attempts")
            headers.update(
                {
                    "x-error": reason,
                    "x-error-type": type(failure.error).__name__,
                    "x-first-failed-at": headers.get("x-first-failed-at") or now,
                    "x-attempts": failure.attempts
                    + (previous_attempts if isinstance(previous_attempts, int) else 0),
                }
            )
            logger.warning(
                "dead-lettering message %s to %s: %s: %s",
                original.message_id,
                self.dead_letter_exchange,
                type(failure.error).__name__,
                reason,
            )
            messages.append(replace(original, headers=headers))
        broker.publish(self.dead_letter_exchange, messages)


def _one_line(error: BaseException) -> str:
    """The error's message on one line (a database error without its SQL)."""
    if isinstance(error, sa_exc.DBAPIError) and error.orig is not None:
        error = error.orig
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= MAX_ERROR_LENGTH else text[: MAX_ERROR_LENGTH - 3] + "..."


def _log_retry(state: RetryCallState) -> None:
    error = state.outcome.exception() if state.outcome else None
    logger.warning(
        "new database unavailable (attempt %d): %s",
        state.attempt_number,
        _one_line(error or Exception()),
    )
