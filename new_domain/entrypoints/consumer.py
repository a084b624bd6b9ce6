"""The consumer of legacy change events: a broker queue -> ingestion, in batches. The
queue and its bindings: :mod:`~new_domain.entrypoints.topology`.

Deliveries are applied in batches, bounded by size (``batch_size``) and by time
(``batch_timeout`` to fill one); a batch is applied as soon as the broker has nothing
more ready and a legacy transaction ends in it (the bridge's ``transaction.last`` marks
the ends, Debezium's END events). The prefetch window is twice the batch size, so the
next batch is arriving while one is applied (see
:class:`~new_domain.entrypoints.batches.Pending`).

Per batch: decode every message; apply them with the failure policy of
:mod:`new_domain.ingest.failures` (one transaction, or in order around failing changes,
which are retried and then dead-lettered); publish the dead letters (confirmed); THEN
ack the batch with one multiple-ack. Acking only after the commit gives at-least-once;
the position stored with each effect makes a redelivered change a no-op. When the
database is unreachable the batch is handed back to the queue; when the broker is,
:meth:`Consumer.run` reconnects through the factory.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection, Sequence

from tenacity import RetryCallState

from broker import Broker, BrokerError, BrokerRefused
from new_domain import metrics
from new_domain.domain.model import TieBreak
from new_domain.entrypoints.batches import Item, Pending
from new_domain.entrypoints.retrying import failure_of, reconnecting
from new_domain.entrypoints.topology import declare_consumer, declare_shard
from new_domain.ingest import (
    LEGACY_SHOP,
    DatabaseUnavailable,
    FailurePolicy,
    Interrupted,
    Parsed,
    Translators,
    apply_changes,
)
from new_domain.ingest.shards import Shard
from new_domain.service_layer.messagebus import MessageBus

logger = logging.getLogger(__name__)

DEFAULT_QUEUE = "new_domain.legacy_cdc"
DEFAULT_EXCHANGE = "legacy.cdc"
DEFAULT_BATCH_SIZE = 500
DEFAULT_MAX_ATTEMPTS = 3
MAX_PREFETCH = 65535  # AMQP's prefetch count is a short


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
        translators: Translators = LEGACY_SHOP,
        tie_break: TieBreak = TieBreak.CREATED,
        journal_decisions: bool = False,
        bind_exchanges: Collection[str] = (),
        tombstone: bytes | None = None,
        shard: Shard | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.bus, self.broker_factory = bus, broker_factory
        # a shard's queue is named after the unsharded one, whose dead-letter pair it uses
        self.base_queue, self.shard = queue, shard
        self.queue = queue if shard is None else shard.queue(queue)
        self.exchange = exchange
        self.batch_size, self.batch_timeout = batch_size, batch_timeout
        self.prefetch = min(prefetch or 2 * batch_size, MAX_PREFETCH)
        self.transaction_hold, self.reconnect_delay = transaction_hold, reconnect_delay
        self.translators = translators
        self.tie_break, self.journal_decisions = tie_break, journal_decisions
        self.failures: FailurePolicy[Item] = FailurePolicy(
            bus.uow,
            Item.failed_message,
            self.dead_letter_exchange,
            max_attempts=max_attempts,
            retry_backoff=retry_backoff,
            db_retry_timeout=db_retry_timeout,
        )
        self.bind_exchanges = tuple(x for x in bind_exchanges if x != exchange)
        self.tombstone = tombstone
        self._broker: Broker | None = None
        self._pending = Pending(tombstone=tombstone)
        self._connections = 0

    @property
    def dead_letter_exchange(self) -> str:
        return f"{self.base_queue}.dlx"

    @property
    def dead_letter_queue(self) -> str:
        return f"{self.base_queue}.dlq"

    def run(self, stop: threading.Event) -> None:
        """Consume until ``stop`` is set; the batch in hand is finished first. While the
        broker or the database is unavailable, retry with back-off (``reconnect_delay``,
        doubling up to 30 s; back to ``reconnect_delay`` after a batch went through); a
        broker refusing the credentials or the virtual host (``BrokerRefused``) ends it."""
        self.failures.stop = stop
        unless = (Interrupted, BrokerRefused)
        retrying = reconnecting(stop, self.reconnect_delay, self._after_failure, unless=unless)
        try:
            while not stop.is_set():
                retrying(self.run_once)
        except Interrupted:
            pass
        finally:
            self._disconnect()

    def run_once(self) -> int:
        """Take one batch (filling it for up to ``batch_timeout``), apply and ack it.

        Returns the number of messages acknowledged (0 while a legacy transaction's
        end is awaited). Raises :class:`DatabaseUnavailable` (the batch is back in the
        queue), :class:`Interrupted` or ``BrokerError``.
        """
        broker = self._connected()
        if self.failures.dead_letters_waiting:
            self.failures.publish_dead_letters(broker)
        self._fill(broker)
        count = self._pending.batch_length(self.batch_size, self.prefetch, self.transaction_hold)
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

    def _after_failure(self, state: RetryCallState) -> None:
        error, delay = failure_of(state)
        if isinstance(error, DatabaseUnavailable):
            logger.warning("%s; retrying in %.1fs", error, delay)
            return
        if isinstance(error, BrokerError):
            logger.warning("broker unavailable (%s); reconnecting in %.1fs", error, delay)
        else:
            logger.error("unexpected failure; reconnecting in %.1fs", delay, exc_info=error)
        self._disconnect()

    def _fill(self, broker: Broker) -> None:
        """Take deliveries until a batch is full (and holds the end of a legacy
        transaction), or the broker has nothing more ready and a legacy transaction
        ends among them (waiting longer would only add latency; under a backlog the
        broker always has more ready), or ``batch_timeout`` has passed."""
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

    def _process(self, broker: Broker, items: Sequence[Item]) -> None:
        started = time.monotonic()
        decoded = [item for item in items if item.error is None]
        if decoded:
            self.failures.apply_all(decoded, self._apply)
        broken = [(item.failed_message(), item.error) for item in items if item.error]
        if broken:
            self.failures.record_undecodable(broken)
        if self.failures.dead_letters_waiting:
            self.failures.publish_dead_letters(broker)
        broker.ack(items[-1].delivery.delivery_tag, multiple=True)
        metrics.BATCH_SECONDS.observe(time.monotonic() - started)
        logger.debug("acked %d messages", len(items))

    def _apply(self, items: Sequence[Item]) -> None:
        parsed: list[Parsed] = [i.parsed for i in items if i.parsed is not None]
        done = apply_changes(
            self.bus, parsed, translators=self.translators, tie_break=self.tie_break,
            journal_decisions=self.journal_decisions,
        )  # fmt: skip
        metrics.CHANGES_APPLIED.inc(done.applied)
        metrics.CHANGES_SKIPPED.inc(done.skipped)

    def _connected(self) -> Broker:
        if self._broker is None:
            broker = self.broker_factory()
            try:
                self._declare(broker)
            except BaseException:
                broker.close()
                raise
            self._broker = broker
            self._connections += 1
            again = "reconnected to the broker: consuming %s again"
            first = "consuming %s (connected to the broker)"
            logger.info(again if self._connections > 1 else first, self.queue)
        return self._broker

    def _declare(self, broker: Broker) -> None:
        if self.shard is not None:
            declare_shard(broker, self.base_queue, self.shard)
        else:
            declare_consumer(broker, self.queue, self.exchange, self.bind_exchanges)

    def _hand_back(self, broker: Broker) -> None:
        if not self._pending.hand_back(broker):
            self._disconnect()

    def _disconnect(self) -> None:
        broker, self._broker = self._broker, None
        self._pending = Pending(tombstone=self.tombstone)  # tags mean nothing on a new connection
        if broker is not None:
            try:
                broker.close()
            except Exception:  # noqa: BLE001 - already broken; the server requeues
                logger.debug("closing the broker failed", exc_info=True)
