"""The consumer of legacy change events: queue -> anti-corruption layer -> message bus.

Deliveries are applied in batches, bounded by size (``batch_size``) and by time
(``batch_timeout`` to fill one); a batch is applied as soon as the broker has nothing
more ready (and a legacy transaction ends in it), so at a steady rate changes do not
wait for the window. The prefetch window is twice the batch size, so the next batch is
arriving while one is applied. A batch ends at a legacy transaction
boundary when the events carry Debezium's ``transaction`` block: an incomplete
transaction at its end waits (unacknowledged) for its remaining events, so one legacy
transaction is applied in one database transaction (unless it is larger than the
prefetch window, or its end has not come after ``transaction_hold`` seconds).

Per batch:

1. decode every message; heartbeats only record how current the stream is, and a
   message that is not a change envelope is dead at once (decoding cannot succeed
   later);
2. apply all changes in ONE unit of work (one database transaction) and commit;
3. if a change fails, commit the changes before it, retry it alone until it succeeds
   or has failed ``max_attempts`` times (attempts are counted in the ``dead_letter``
   table, so redeliveries and restarts count too), then go on with the changes after
   it: order is kept and no failing message holds the others back;
4. publish the messages given up on to ``<queue>.dlx`` with the reason in their
   headers (confirmed; from the ``dead_letter`` table, so a crash loses none), THEN
   ack the batch with one multiple-ack.

Acking only after the commit gives at-least-once; the position stored with each
effect makes a redelivered change a no-op (exactly-once effect). When the database is
unreachable nothing is acked: the batch is retried with back-off, then handed back to
the queue. When the broker is unreachable, :meth:`Consumer.run` reconnects through the
factory.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

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
from new_domain import acl, metrics
from new_domain.adapters.database import describe_error, is_transient
from new_domain.adapters.dead_letters import DeadLetter, FailedMessage, dead_letter_message
from new_domain.service_layer.legacy_changes import Applied, ChangeFailed, apply_changes
from new_domain.service_layer.messagebus import MessageBus
from new_domain.service_layer.unit_of_work import AbstractUnitOfWork

logger = logging.getLogger(__name__)


DEFAULT_QUEUE = "new_domain.legacy_cdc"
DEFAULT_EXCHANGE = "legacy.cdc"
DEFAULT_BATCH_SIZE = 500
DEFAULT_MAX_ATTEMPTS = 3
MAX_PREFETCH = 65535  # AMQP's prefetch count is a short
T = TypeVar("T")


class DatabaseUnavailable(Exception):
    """The new database could not be written; the batch went back to the queue."""


class Interrupted(Exception):
    """Asked to stop while retrying a failing message; the batch went back to the queue."""


@dataclass
class _Item:
    """A delivery and what it decoded to."""

    delivery: Delivery
    parsed: acl.LegacyChange | acl.Heartbeat | None = None
    error: Exception | None = None

    @property
    def ends_transaction(self) -> bool:
        return not isinstance(self.parsed, acl.LegacyChange) or self.parsed.ends_transaction


@dataclass
class _Pending:
    """Deliveries taken from the queue and not acknowledged yet."""

    items: list[_Item] = field(default_factory=list)
    since: float = 0.0  # when the oldest of them arrived

    def extend(self, deliveries: Sequence[Delivery]) -> None:
        if not self.items:
            self.since = time.monotonic()
        self.items.extend(_decode(delivery) for delivery in deliveries)

    def has_boundary(self) -> bool:
        """Does a legacy transaction end among them?"""
        return any(item.ends_transaction for item in reversed(self.items))

    def take(self, count: int) -> list[_Item]:
        taken, self.items = self.items[:count], self.items[count:]
        self.since = time.monotonic()
        return taken


class Consumer:
    """Applies ``legacy.cdc`` changes from ``queue`` to the new domain. One thread."""

    def __init__(
        self,
        bus: MessageBus,
        broker_factory: Callable[[], Broker],
        queue: str = DEFAULT_QUEUE,
        *,
        exchange: str = DEFAULT_EXCHANGE,
        batch_size: int = DEFAULT_BATCH_SIZE,
        batch_timeout: float = 0.1,
        prefetch: int | None = None,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        retry_backoff: float = 0.05,
        transaction_hold: float = 1.0,
        db_retry_timeout: float = 60.0,
        reconnect_delay: float = 1.0,
    ) -> None:
        if batch_size < 1 or max_attempts < 1:
            raise ValueError("batch_size and max_attempts must be at least 1")
        self.bus = bus
        self.broker_factory = broker_factory
        self.queue = queue
        self.exchange = exchange
        self.batch_size = batch_size
        self.batch_timeout = batch_timeout
        self.prefetch = min(prefetch or 2 * batch_size, MAX_PREFETCH)
        self.max_attempts = max_attempts
        self.retry_backoff = retry_backoff
        self.transaction_hold = transaction_hold
        self.db_retry_timeout = db_retry_timeout
        self.reconnect_delay = reconnect_delay
        self._broker: Broker | None = None
        self._pending = _Pending()
        self._dead_letters_waiting = True  # some may be left from an earlier run
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
                except Interrupted:
                    break
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
        """Take one batch (filling it for up to ``batch_timeout``), apply and ack it.

        Returns the number of messages acknowledged (0 while a legacy transaction's
        end is awaited). Raises :class:`DatabaseUnavailable` (the batch is back in the
        queue), :class:`Interrupted` or ``BrokerError``.
        """
        broker = self._connected()
        if self._dead_letters_waiting:
            self._publish_dead_letters(broker)
        self._fill(broker)
        count = self._batch_length()
        if count == 0:
            return 0
        batch = self._pending.items[:count]
        try:
            self._process(broker, batch)
        except (DatabaseUnavailable, Interrupted):
            self._hand_back(broker)
            raise
        self._pending.take(count)
        return count

    def connect(self) -> None:
        """Connect and declare the queue, its bindings and the dead-letter pair (idempotent)."""
        self._connected()

    def close(self) -> None:
        """Close the broker connection (unacknowledged messages go back to the queue)."""
        self._disconnect()

    # -- taking batches -------------------------------------------------------------------

    def _fill(self, broker: Broker) -> None:
        """Take deliveries until a batch is full (and holds the end of a legacy
        transaction), or the broker has nothing more ready and a legacy transaction
        ends among them, or ``batch_timeout`` has passed.

        Waiting for more once a whole transaction is in hand would only add latency:
        at a steady rate every change would wait the full window. Under a backlog the
        broker always has more ready, so batches still fill up to ``batch_size``."""
        deadline = time.monotonic() + self.batch_timeout
        polled = False
        while len(self._pending.items) < self.prefetch:
            complete = self._pending.has_boundary()
            if complete and len(self._pending.items) >= self.batch_size:
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0 and polled:
                return
            wait = 0.0 if complete else max(remaining, 0.0)
            deliveries = broker.get_batch(self.queue, self.prefetch, wait)
            polled = True
            if not deliveries:
                return
            self._pending.extend(deliveries)

    def _batch_length(self) -> int:
        """How many pending deliveries to apply now: at most ``batch_size``, ending with a
        legacy transaction (see the module docstring); 0 to wait for more."""
        items = self._pending.items
        if not items:
            return 0
        limit = min(len(items), self.batch_size)
        for count in range(limit, 0, -1):
            if items[count - 1].ends_transaction:
                return count
        for count in range(limit + 1, len(items) + 1):
            if items[count - 1].ends_transaction:
                return count  # one legacy transaction larger than a batch
        waited = time.monotonic() - self._pending.since
        if len(items) >= self.prefetch or waited >= self.transaction_hold:
            logger.info(
                "applying %d changes of an unfinished legacy transaction after %.1fs",
                len(items),
                waited,
            )
            return len(items)
        return 0

    # -- applying -----------------------------------------------------------------------

    def _process(self, broker: Broker, items: Sequence[_Item]) -> None:
        started = time.monotonic()
        changes = [i for i in items if isinstance(i.parsed, acl.LegacyChange)]
        heartbeats = [i.parsed for i in items if isinstance(i.parsed, acl.Heartbeat)]
        broken = [i for i in items if i.error is not None]
        self._apply_all(changes, heartbeats)
        if broken:
            self._record_undecodable(broken)
        if self._dead_letters_waiting:
            self._publish_dead_letters(broker)
        broker.ack(items[-1].delivery.delivery_tag, multiple=True)
        metrics.BATCH_SECONDS.observe(time.monotonic() - started)
        logger.debug("acked %d messages", len(items))

    def _apply_all(self, items: Sequence[_Item], heartbeats: Sequence[acl.Heartbeat]) -> None:
        """Apply in one transaction if possible, else in order around failing changes."""
        if not items:
            if heartbeats:
                self._apply([], heartbeats)
            return
        try:
            self._apply(items, heartbeats)
            return
        except ChangeFailed as failed:
            self._apply_in_order(items, failed)
        except (DatabaseUnavailable, Interrupted):
            raise
        except Exception as error:
            self._apply_in_order(items, error)
        if heartbeats:
            self._apply([], heartbeats)

    def _apply_in_order(self, items: Sequence[_Item], failure: BaseException) -> None:
        """``items`` failed together with ``failure``: apply what precedes the failing
        change, retry it alone, go on after it. A failure not traced to one change (at
        commit) splits the items in halves until it is."""
        remaining = list(items)
        while remaining:
            if isinstance(failure, ChangeFailed):
                index = failure.index
                if index > 0:
                    self._apply_or_split(remaining[:index])
                self._retry_alone(remaining[index], failure.error)
                remaining = remaining[index + 1 :]
            elif len(remaining) == 1:
                self._retry_alone(remaining[0], failure)
                remaining = []
            else:
                half = len(remaining) // 2
                self._apply_or_split(remaining[:half])
                remaining = remaining[half:]
            if not remaining:
                return
            try:
                self._apply(remaining, ())
                return
            except (DatabaseUnavailable, Interrupted):
                raise
            except Exception as error:
                failure = error

    def _apply_or_split(self, items: Sequence[_Item]) -> None:
        try:
            self._apply(items, ())
        except (DatabaseUnavailable, Interrupted):
            raise
        except Exception as error:
            self._apply_in_order(items, error)

    def _apply(self, items: Sequence[_Item], heartbeats: Sequence[acl.Heartbeat]) -> Applied:
        changes = [_change(item) for item in items]
        done = self._with_db_retry(apply_changes, self.bus, changes, heartbeats=heartbeats)
        metrics.CHANGES_APPLIED.inc(done.applied)
        metrics.CHANGES_SKIPPED.inc(done.skipped)
        return done

    def _retry_alone(self, item: _Item, error: BaseException) -> None:
        """Retry one failing change until it applies or has used up its attempts."""
        change = _change(item)
        message = _failed_message(item.delivery, change)
        row = self._record_failure(message, error)
        while row.attempts < self.max_attempts:
            pause = min(self.retry_backoff * 2 ** (row.attempts - 1), 2.0)
            if self._stop.wait(pause):
                raise Interrupted(f"stopped while retrying {message.key}")
            try:
                self._with_db_retry(apply_changes, self.bus, [change])
                metrics.CHANGES_APPLIED.inc()
                logger.info("change %s applied at attempt %d", message.key, row.attempts + 1)
                return
            except (DatabaseUnavailable, Interrupted):
                raise
            except ChangeFailed as failed:
                row = self._record_failure(message, failed.error)
            except Exception as other:
                row = self._record_failure(message, other)
        self._give_up(message, change)

    def _record_failure(self, message: FailedMessage, error: BaseException) -> DeadLetter:
        metrics.FAILED_ATTEMPTS.inc()

        def record() -> DeadLetter:
            with self.bus.uow as uow:
                row = uow.dead_letters.record_failure(message, error)
                uow.commit()
            return row

        row = self._with_db_retry(record)
        logger.info(
            "change %s failed (attempt %d of %d): %s: %s",
            message.key,
            row.attempts,
            self.max_attempts,
            row.error_type,
            row.error,
        )
        return row

    def _give_up(self, message: FailedMessage, change: acl.LegacyChange) -> None:
        def give_up() -> DeadLetter:
            with self.bus.uow as uow:
                row = uow.dead_letters.give_up(message)
                last = uow.positions.get(change.stream)
                if last is None or change.position > last:  # (a snapshot state stays)
                    state = uow.positions.snapshot_state(change.stream)
                    uow.positions.set(change.stream, change.position, state)
                uow.commit()
            return row

        self._dead(self._with_db_retry(give_up))

    def _record_undecodable(self, items: Sequence[_Item]) -> None:
        def record() -> list[DeadLetter]:
            with self.bus.uow as uow:
                rows = [
                    uow.dead_letters.record_failure(
                        _failed_message(item.delivery, None), _error(item), dead=True,
                        republish=False,
                    )
                    for item in items
                ]
                uow.commit()
            return rows

        for row in self._with_db_retry(record):
            if not row.published:  # else only the ack was missing before a restart
                self._dead(row)

    def _dead(self, row: DeadLetter) -> None:
        self._dead_letters_waiting = True
        metrics.DEAD_LETTERS.inc()
        logger.warning(
            "dead-lettering message %s to %s after %d attempt(s): %s: %s",
            row.message.key,
            self.dead_letter_exchange,
            row.attempts,
            row.error_type,
            row.error,
        )

    def _publish_dead_letters(self, broker: Broker) -> None:
        """Publish every dead row not published yet to ``<queue>.dlx`` (confirmed)."""
        self._with_db_retry(publish_dead_letters, self.bus.uow, broker, self.dead_letter_exchange)
        self._dead_letters_waiting = False

    def _with_db_retry(self, work: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``work(*args)``, retried while the database is unavailable (for up to
        ``db_retry_timeout``), then :class:`DatabaseUnavailable`."""
        retrying = Retrying(
            retry=retry_if_exception(is_transient),
            stop=stop_after_delay(self.db_retry_timeout) | stop_when_event_set(self._stop),
            wait=wait_exponential(multiplier=0.05, max=5.0) + wait_random(0, 0.1),
            sleep=sleep_using_event(self._stop),
            before_sleep=_log_retry,
            reraise=True,
        )
        try:
            return retrying(work, *args, **kwargs)
        except Exception as error:
            if is_transient(error):
                reason = describe_error(error)
                raise DatabaseUnavailable(f"new database unavailable: {reason}") from error
            raise

    # -- the broker ---------------------------------------------------------------------

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

    def _hand_back(self, broker: Broker) -> None:
        """Requeue every pending delivery, in its original order."""
        items, self._pending = self._pending.items, _Pending()
        try:
            for item in reversed(items):
                broker.reject(item.delivery.delivery_tag, requeue=True)
        except BrokerError:
            self._disconnect()  # closing the connection requeues them as well

    def _disconnect(self) -> None:
        broker, self._broker = self._broker, None
        self._pending = _Pending()  # their delivery tags mean nothing on a new connection
        if broker is not None:
            try:
                broker.close()
            except Exception:  # noqa: BLE001 - already broken; the server requeues
                logger.debug("closing the broker failed", exc_info=True)


def publish_dead_letters(uow: AbstractUnitOfWork, broker: Broker, exchange: str) -> int:
    """Publish the dead-letter table's unpublished rows to ``exchange`` (confirmed), then
    mark them published; how many were published."""
    total = 0
    while True:
        with uow:
            rows = uow.dead_letters.unpublished()
        if not rows:
            return total
        broker.publish(exchange, [dead_letter_message(row) for row in rows])
        with uow:
            uow.dead_letters.mark_published([row.id for row in rows])
            uow.commit()
        total += len(rows)


def _decode(delivery: Delivery) -> _Item:
    message = delivery.message
    try:
        parsed = acl.parse_message(message.body, message.message_id, message.type)
    except Exception as error:  # decoding is pure: any failure is the message's own
        return _Item(delivery, error=error)
    return _Item(delivery, parsed)


def _change(item: _Item) -> acl.LegacyChange:
    assert isinstance(item.parsed, acl.LegacyChange)
    return item.parsed


def _error(item: _Item) -> Exception:
    assert item.error is not None
    return item.error


def _failed_message(delivery: Delivery, change: acl.LegacyChange | None) -> FailedMessage:
    message = delivery.message
    return FailedMessage(
        message_id=message.message_id or None,
        routing_key=message.routing_key,
        body=message.body,
        headers=dict(message.headers),
        message_type=message.type or None,
        content_type=message.content_type or None,
        stream=change.stream if change else None,
        position=change.position if change else None,
    )


def _log_retry(state: RetryCallState) -> None:
    error = state.outcome.exception() if state.outcome else None
    logger.warning(
        "new database unavailable (attempt %d): %s",
        state.attempt_number,
        describe_error(error or Exception()),
    )
