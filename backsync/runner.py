"""Back-sync's loop: ``new_domain.events`` from its own queue -> legacy transactions.

One consumer on the durable queue ``strangler.backsync`` (bound to every routing key of
the ``new_domain.events`` topic exchange), in queue order per product:

- the events of one decision are gathered by decision id and written in ONE legacy
  transaction (origin marker, legacy's rows, position) once the last has arrived;
- complete decisions at the head of the queue are written ``lanes`` at a time, each
  product's in a lane of its own and in queue order (a product's decisions never overtake
  each other; two products' may commit in either order, as two legacy requests would);
  a move, or a decision still arriving, waits until everything before it is written;
- an ``OwnershipMoved`` writes its fence: at once for a hand-back, for a takeover when
  the move is ``settle`` seconds old;
- an event with ``"decision": null`` is legacy's own fact: acknowledged, nothing written.

Messages are acknowledged only after their transaction committed; a redelivered decision
or fence is acknowledged without writing. A message that can never be written (malformed,
or refused by legacy's state) is published, with confirms, to the dead-letter exchange
``<queue>.dlx`` (queue ``<queue>.dlq``) with the reason in headers, logged, counted, and
then acknowledged. A decision whose events stop arriving is dead-lettered after
``incomplete_timeout``. While the broker or the legacy database is unavailable the loop
retries with back-off; nothing is skipped.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import TypeVar

from sqlalchemy.exc import DataError, IntegrityError, SQLAlchemyError
from tenacity import RetryCallState

from backsync import metrics
from backsync.database import first_line
from backsync.dead_letters import replay_exchange
from backsync.messages import LegacyFact, MalformedMessage, MoveMessage, Unreadable
from backsync.mimic import Refused
from backsync.pending import Group, Pending, Single, Unit
from backsync.retrying import failure_of, reconnecting
from backsync.writer import Writer, Written, utc_now
from broker import Broker, BrokerError, Message, QueueSpec

logger = logging.getLogger(__name__)

T = TypeVar("T")

QUEUE = "strangler.backsync"
EXCHANGE = "new_domain.events"
DEFAULT_SETTLE = 3.0
DEFAULT_PREFETCH = 1000
DEFAULT_MAX_ATTEMPTS = 3
DEFAULT_INCOMPLETE_TIMEOUT = 60.0
DEFAULT_LANES = 4
MAX_LANES = 32
MAX_WAVE = 512
"""Complete decisions written in one round of lanes at most."""
MAX_PREFETCH = 65535  # AMQP's prefetch count is a short

NEVER_WRITTEN = (Refused, MalformedMessage, IntegrityError, DataError)
"""Errors a decision meets again however often it is tried."""


class LegacyUnavailable(Exception):
    """The legacy database could not be written now (down, a lost connection, a lock
    timeout, a missing table): the decision in hand is tried again."""


def dead_letter_exchange(queue: str) -> str:
    return f"{queue}.dlx"


def dead_letter_queue(queue: str) -> str:
    return f"{queue}.dlq"


def declare(broker: Broker, queue: str = QUEUE, exchange: str = EXCHANGE) -> None:
    """Back-sync's queue (bound to every routing key of ``exchange``, and of its own
    ``<queue>.replay`` for dead letters sent back) and its dead-letter exchange and queue
    (idempotent)."""
    broker.declare_exchange(exchange)
    dlx = dead_letter_exchange(queue)
    broker.declare_exchange(dlx)
    broker.declare_queue(QueueSpec(dead_letter_queue(queue), [(dlx, "#")]))
    bindings = [(exchange, "#"), (replay_exchange(queue), "#")]
    broker.declare_queue(QueueSpec(queue, bindings, dead_letter_exchange=dlx))


class BackSync:
    """Writes the new system's decisions and fences into the legacy database. One thread."""

    def __init__(
        self,
        writer: Writer,
        broker_factory: Callable[[], Broker],
        *,
        exchange: str = EXCHANGE,
        settle: float = DEFAULT_SETTLE,
        prefetch: int = DEFAULT_PREFETCH,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        incomplete_timeout: float = DEFAULT_INCOMPLETE_TIMEOUT,
        poll_timeout: float = 0.5,
        reconnect_delay: float = 1.0,
        clock: Callable[[], datetime] = utc_now,
        monotonic: Callable[[], float] = time.monotonic,
        lanes: int = DEFAULT_LANES,
    ) -> None:
        if not 1 <= prefetch <= MAX_PREFETCH:
            raise ValueError(f"prefetch must be between 1 and {MAX_PREFETCH}")
        if not 1 <= lanes <= MAX_LANES:
            raise ValueError(f"lanes must be between 1 and {MAX_LANES}")
        self.lanes = lanes
        self._pool: ThreadPoolExecutor | None = None
        self.writer = writer
        self.broker_factory = broker_factory
        self.queue = writer.queue
        self.exchange = exchange
        self.settle = settle
        self.prefetch = prefetch
        self.max_attempts = max_attempts
        self.incomplete_timeout = incomplete_timeout
        self.poll_timeout = poll_timeout
        self.reconnect_delay = reconnect_delay
        self.clock = clock
        self.monotonic = monotonic
        self.pending = Pending()
        self.decisions_written = self.fences_written = self.skipped = self.dead_lettered = 0
        self._attempts: dict[str, int] = {}
        self._broker: Broker | None = None
        self._to_ack: list[int] = []

    # -- the loop ------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Work until ``stop`` is set, retrying with back-off (``reconnect_delay``,
        doubling up to 30 s) while the broker or the legacy database is unavailable."""
        retrying = reconnecting(stop, self.reconnect_delay, self._after_failure)
        try:
            while not stop.is_set():
                retrying(self.run_once)
        finally:
            self.close()

    def run_once(self) -> int:
        """Take what the queue has ready (waiting up to ``poll_timeout`` when nothing can
        be written yet), then write and acknowledge, in order, every unit that can be;
        how many messages were acknowledged. Raises :class:`LegacyUnavailable` (the unit
        in hand stays in hand) or ``BrokerError``."""
        broker = self._connected()
        deliveries = broker.get_batch(self.queue, self._window(), self._wait())
        now = self.monotonic()
        for delivery in deliveries:
            self.pending.add(delivery, now)
        settled = 0
        try:
            while True:
                wave = self._wave()
                if wave:
                    settled += self._settle_wave(broker, wave)
                    continue
                unit = self.pending.head
                if unit is None or not self._settle(broker, unit):
                    return settled
                self.pending.pop()
                settled += len(unit.deliveries)
        finally:
            self._flush_acks(broker)

    def connect(self) -> None:
        """Connect and declare the queue and its dead-letter pair (idempotent)."""
        self._connected()

    def close(self) -> None:
        """Disconnect; unacknowledged messages go back to the queue."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)
        broker, self._broker = self._broker, None
        self.pending = Pending()  # their delivery tags mean nothing on a new connection
        self._to_ack = []
        if broker is not None:
            try:
                broker.close()
            except Exception:  # noqa: BLE001 - already broken; the server requeues
                logger.debug("closing the broker failed", exc_info=True)

    # -- one unit ------------------------------------------------------------------------

    def _settle(self, broker: Broker, unit: Unit) -> bool:
        """Write (or skip, or dead-letter) ``unit`` and acknowledge it; False when it
        cannot be settled yet (a decision still arriving, a takeover still settling)."""
        if isinstance(unit, Group):
            return self._settle_decision(broker, unit)
        parsed = unit.parsed
        if isinstance(parsed, LegacyFact):
            self._ack(unit)
            return True
        if isinstance(parsed, Unreadable):
            self._dead_letter(broker, unit, parsed.error)
            return True
        if self._settling_for(parsed) > 0:
            return False
        return self._write(broker, unit, parsed.message_id, lambda: self._fence(parsed))

    def _settle_decision(self, broker: Broker, group: Group) -> bool:
        if group.error is not None:
            self._dead_letter(broker, group, group.error)
            return True
        if group.complete:
            decision = group.decision()
            return self._write(broker, group, decision.id, lambda: self._decision(group))
        if group.applied is None:  # a re-sent part of a decision written before?
            group.applied = self._legacy(self.writer.is_applied, group.block.id)
        if group.applied:
            self._skipped(broker, group)
            return True
        waited = self.monotonic() - group.first_seen
        if waited < self.incomplete_timeout:
            return False
        b = group.block
        error = MalformedMessage(
            f"incomplete decision {b.id}: {len(group.parts)} of its {b.events} events "
            f"arrived in {waited:.0f} s"
        )
        self._dead_letter(broker, group, error)
        return True

    # -- lanes ---------------------------------------------------------------------------

    def _wave(self) -> list[Unit]:
        """The units at the head that are written side by side (none when ``lanes`` is 1
        or fewer than two decisions are ready): complete decisions, and the legacy facts
        between them (only acknowledged), up to the first unit that must wait for
        everything before it (a move, an unreadable message, a decision still arriving)."""
        if self.lanes < 2:
            return []
        wave: list[Unit] = []
        decisions = 0
        for unit in self.pending.units:
            if isinstance(unit, Group):
                if not unit.complete:
                    break
                decisions += 1
            elif not isinstance(unit.parsed, LegacyFact):
                break
            wave.append(unit)
            if len(wave) >= MAX_WAVE:
                break
        return wave if decisions >= 2 else []

    def _settle_wave(self, broker: Broker, wave: Sequence[Unit]) -> int:
        """Write the wave's decisions, a lane per product, then settle its units in queue
        order as :meth:`_settle` would; how many messages were acknowledged. A unit that
        failed stays at the head (raising as :meth:`_failed` does); decisions after it
        that were written are found written when they come round again."""
        lanes: dict[str, list[Group]] = {}
        for unit in wave:
            if isinstance(unit, Group):
                lanes.setdefault(unit.block.sku, []).append(unit)
        outcomes: dict[int, Written | Exception] = {}
        pool = self._lane_pool()
        for future in [pool.submit(self._write_lane, lane, outcomes) for lane in lanes.values()]:
            future.result()
        settled = 0
        for unit in wave:
            if isinstance(unit, Group):
                outcome = outcomes.get(id(unit))
                if outcome is None:  # not tried: its product's decision before it failed
                    return settled
                if isinstance(outcome, Exception):
                    self._failed(broker, unit, unit.block.id, outcome)
                else:
                    self._count_decision(unit, outcome)
                    self._written(broker, unit, unit.block.id, outcome)
            else:
                self._ack(unit)  # a legacy fact
            popped = self.pending.pop()
            assert popped is unit
            settled += len(unit.deliveries)
        return settled

    def _write_lane(self, lane: Sequence[Group], outcomes: dict[int, Written | Exception]) -> None:
        """One product's decisions in order, in a thread of the pool; stops at a failure."""
        for group in lane:
            try:
                outcomes[id(group)] = self._legacy(self.writer.write_decision, group.decision())
            except Exception as error:  # noqa: BLE001 - settled in the loop's thread
                outcomes[id(group)] = error
                return

    def _lane_pool(self) -> ThreadPoolExecutor:
        if self._pool is None:
            numbers = itertools.count(1)  # each thread of the pool its own lane row
            self._pool = ThreadPoolExecutor(
                self.lanes,
                thread_name_prefix="backsync-lane",
                initializer=lambda: self.writer.use_lane(next(numbers)),
            )
        return self._pool

    def _decision(self, group: Group) -> Written:
        written = self.writer.write_decision(group.decision())
        self._count_decision(group, written)
        return written

    def _count_decision(self, group: Group, written: Written) -> None:
        decision = group.decision()
        if written.written and written.at is not None:
            self.decisions_written += 1
            metrics.DECISIONS_WRITTEN.labels(decision.route).inc()
            metrics.LAG_SECONDS.observe(
                max(0.0, (written.at - decision.occurred_at).total_seconds())
            )

    def _fence(self, message: MoveMessage) -> Written:
        written = self.writer.write_fence(message)
        if written.written:
            self.fences_written += 1
            kind = "takeover" if message.move.takeover else "handback"
            metrics.FENCES_WRITTEN.labels(kind).inc()
            logger.info(
                "fence of %s epoch %d written (%s: %s -> %s)",
                message.move.group,
                message.move.epoch,
                kind,
                message.move.previous_rule,
                message.move.rule,
            )
        return written

    def _write(self, broker: Broker, unit: Unit, key: str, write: Callable[[], Written]) -> bool:
        try:
            written = self._legacy(write)
        except Exception as error:  # noqa: BLE001 - settled or raised by _failed
            self._failed(broker, unit, key, error)
            return True
        self._written(broker, unit, key, written)
        return True

    def _failed(self, broker: Broker, unit: Unit, key: str, error: Exception) -> None:
        """``unit`` could not be written: dead-lettered when it never will be (or has
        failed ``max_attempts`` times), else ``error`` is raised (it stays in hand)."""
        if isinstance(error, NEVER_WRITTEN):
            self._dead_letter(broker, unit, error)
            return
        if isinstance(error, LegacyUnavailable):
            raise error
        attempts = self._attempts[key] = self._attempts.get(key, 0) + 1
        if attempts < self.max_attempts:
            raise error
        self._dead_letter(broker, unit, error)

    def _ack(self, unit: Unit) -> None:
        """``unit`` is settled (written, found written, dead-lettered or only acknowledged):
        its deliveries are acknowledged by :meth:`_flush_acks` before ``run_once`` returns."""
        self._to_ack.extend(delivery.delivery_tag for delivery in unit.deliveries)

    def _flush_acks(self, broker: Broker) -> None:
        """Acknowledge the settled deliveries: one multiple ack for those below every
        delivery still in hand (the usual case: all of them), one each for the rest. An
        acknowledgement per delivery cost back-sync's loop most of its CPU (pika flushes
        and polls its socket for each); a multiple ack cannot be used across a delivery
        still in hand (a decision's events may interleave with another's)."""
        tags, self._to_ack = sorted(self._to_ack), []
        if not tags or broker is not self._broker:
            return
        in_hand = [d.delivery_tag for unit in self.pending.units for d in unit.deliveries]
        floor = min(in_hand, default=tags[-1] + 1)
        below = [tag for tag in tags if tag < floor]
        if below:
            broker.ack(below[-1], multiple=True)
        for tag in tags[len(below) :]:
            broker.ack(tag)

    def _written(self, broker: Broker, unit: Unit, key: str, written: Written) -> None:
        self._attempts.pop(key, None)
        if written.written:
            self._ack(unit)
        else:
            self._skipped(broker, unit)

    def _legacy(self, work: Callable[..., T], *args: object) -> T:
        """``work(*args)``; a database error that is not the decision's own (the database
        down, a lock timeout, a missing table) becomes :class:`LegacyUnavailable`."""
        try:
            return work(*args)
        except (IntegrityError, DataError):
            raise
        except SQLAlchemyError as error:
            raise LegacyUnavailable(f"legacy database: {first_line(error)}") from error

    def _skipped(self, broker: Broker, unit: Unit) -> None:
        self._ack(unit)
        self.skipped += 1
        metrics.DECISIONS_SKIPPED.inc()

    def _dead_letter(self, broker: Broker, unit: Unit, error: BaseException) -> None:
        """Publish ``unit``'s messages (confirmed) to the dead-letter exchange with the
        reason, then acknowledge them."""
        reason, kind = first_line(error)[:1000], type(error).__name__
        failed_at = self.clock().isoformat()
        broker.publish(
            dead_letter_exchange(self.queue),
            [_failed(d.message, reason, kind, failed_at) for d in unit.deliveries],
        )
        self._ack(unit)
        self.dead_lettered += len(unit.deliveries)
        metrics.DEAD_LETTERS.labels(kind).inc(len(unit.deliveries))
        logger.error(
            "back-sync: %d message(s) sent to %s (%s: %s)",
            len(unit.deliveries),
            dead_letter_queue(self.queue),
            kind,
            reason,
        )

    # -- waiting -------------------------------------------------------------------------

    def _settling_for(self, message: MoveMessage) -> float:
        """Seconds until a takeover may be fenced (0 for a hand-back)."""
        if not message.move.takeover:
            return 0.0
        ripe = message.occurred_at + timedelta(seconds=self.settle)
        return max(0.0, (ripe - self.clock()).total_seconds())

    def _wait(self) -> float:
        """How long to wait for deliveries: not at all when the head can be settled now."""
        head = self.pending.head
        if head is None:
            return self.poll_timeout
        if isinstance(head, Single):
            if isinstance(head.parsed, MoveMessage):
                return min(self.poll_timeout, self._settling_for(head.parsed))
            return 0.0
        if head.complete or head.error is not None or head.applied:
            return 0.0
        left = self.incomplete_timeout - (self.monotonic() - head.first_seen)
        return max(0.0, min(self.poll_timeout, left))

    def _window(self) -> int:
        """The prefetch window: wide enough for the decision at the head to arrive whole."""
        head = self.pending.head
        if isinstance(head, Group):
            self.prefetch = max(self.prefetch, min(head.block.events + 1, MAX_PREFETCH))
        return self.prefetch

    # -- connection ----------------------------------------------------------------------

    def _connected(self) -> Broker:
        if self._broker is None:
            broker = self.broker_factory()
            try:
                declare(broker, self.queue, self.exchange)
            except BaseException:
                broker.close()
                raise
            self._broker = broker
        return self._broker

    def _after_failure(self, state: RetryCallState) -> None:
        error, delay = failure_of(state)
        if isinstance(error, LegacyUnavailable):
            logger.warning("back-sync cannot write now (%s); retrying in %.1fs", error, delay)
            return  # the unit in hand stays in hand
        if isinstance(error, BrokerError):
            logger.warning(
                "back-sync: broker unavailable (%s); reconnecting in %.1fs", error, delay
            )
        else:
            logger.error("back-sync failed; retrying in %.1fs", delay, exc_info=error)
        self.close()


def _failed(message: Message, reason: str, kind: str, failed_at: str) -> Message:
    headers = {
        **message.headers,
        "x-error": reason,
        "x-error-type": kind,
        "x-failed-at": failed_at,
    }
    return Message(
        routing_key=message.routing_key,
        body=message.body,
        message_id=message.message_id,
        type=message.type,
        content_type=message.content_type,
        headers=headers,
        timestamp=message.timestamp,
    )
