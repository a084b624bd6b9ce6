"""The failure policy of ingestion: what happens when a batch of changes cannot be applied.

Given a batch and an ``apply(items)`` callable that applies items in ONE transaction
(raising :class:`~new_domain.ingest.apply.ChangeFailed` with the index of a change at
fault), :meth:`FailurePolicy.apply_all`:

1. applies the whole batch;
2. if a change fails, commits the changes before it, retries it alone until it
   succeeds or has failed ``max_attempts`` times (attempts are counted in the
   dead-letter store, so redeliveries and restarts count too), then gives up on it:
   its row is dead and the stream's position moves past it, in one transaction; and
   goes on with the changes after it. Order is kept and no failing change holds the
   others back;
3. a failure not traced to one change (at commit) splits the items in halves until it
   is.

While the database itself is unavailable (:meth:`AbstractUnitOfWork.is_transient`),
each step is retried with the :func:`database_retry` policy, then
:class:`DatabaseUnavailable` is raised: nothing is given up on because of the database.
Dead rows are the dead-letter exchange's outbox: :meth:`FailurePolicy.publish_dead_letters`
publishes them (confirmed) and only then marks them published, so a crash loses none.

Nothing here knows a broker's deliveries: items are whatever the caller batches, and
``describe(item)`` says what to record when one fails.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC
from typing import TYPE_CHECKING, Any, Generic, TypeVar

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

from broker import Broker, Message
from new_domain import metrics
from new_domain.ingest.apply import ChangeFailed, OutOfSequence
from new_domain.ingest.ports import DeadLetter, FailedMessage, describe_error

if TYPE_CHECKING:
    from new_domain.service_layer.unit_of_work import AbstractUnitOfWork

logger = logging.getLogger(__name__)

T = TypeVar("T")
Item = TypeVar("Item")


class DatabaseUnavailable(Exception):
    """The new database could not be written; the batch goes back to the queue."""


class Interrupted(Exception):
    """Asked to stop while retrying a failing message; the batch goes back to the queue."""


def database_retry(uow: AbstractUnitOfWork, timeout: float, stop: threading.Event) -> Retrying:
    """The retry policy while the new database is unavailable: exponential back-off from
    50 ms to 5 s with jitter, for up to ``timeout`` seconds or until ``stop`` is set."""
    return Retrying(
        retry=retry_if_exception(uow.is_transient),
        stop=stop_after_delay(timeout) | stop_when_event_set(stop),
        wait=wait_exponential(multiplier=0.05, max=5.0) + wait_random(0, 0.1),
        sleep=sleep_using_event(stop),
        before_sleep=_log_retry,
        reraise=True,
    )


@dataclass
class FailurePolicy(Generic[Item]):
    """Split, retry, give up and dead-letter (see the module docstring)."""

    uow: AbstractUnitOfWork
    describe: Callable[[Item], FailedMessage]
    exchange: str
    max_attempts: int = 3
    retry_backoff: float = 0.05
    db_retry_timeout: float = 60.0
    stop: threading.Event = field(default_factory=threading.Event)
    dead_letters_waiting: bool = True  # some may be left from an earlier run

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")

    def with_db_retry(self, work: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``work(*args)``, retried while the database is unavailable (for up to
        ``db_retry_timeout``), then :class:`DatabaseUnavailable`."""
        try:
            return database_retry(self.uow, self.db_retry_timeout, self.stop)(work, *args, **kwargs)
        except Exception as error:
            if self.uow.is_transient(error):
                reason = describe_error(error)
                raise DatabaseUnavailable(f"new database unavailable: {reason}") from error
            raise

    def apply_all(self, items: Sequence[Item], apply: Callable[[Sequence[Item]], object]) -> None:
        """Apply ``items`` in one transaction if possible, else in order around the
        failing ones (each retried alone, then given up on)."""
        try:
            self.with_db_retry(apply, items)
        except ChangeFailed as failed:
            self._apply_in_order(items, apply, failed)
        except (DatabaseUnavailable, Interrupted):
            raise
        except Exception as error:
            self._apply_in_order(items, apply, error)

    def record_undecodable(self, failed: Sequence[tuple[FailedMessage, Exception]]) -> None:
        """Messages that can never be applied (not changes at all, or out of sequence):
        dead at once. A row dead before keeps its dead letter: only the ack was missing."""

        def record() -> list[DeadLetter]:
            with self.uow as uow:
                rows = [
                    uow.dead_letters.record_failure(message, error, dead=True, republish=False)
                    for message, error in failed
                ]
                uow.commit()
            return rows

        for row in self.with_db_retry(record):
            if not row.published:
                self._dead(row)

    def publish_dead_letters(self, broker: Broker) -> int:
        """Publish every dead row not published yet to :attr:`exchange` (confirmed), then
        mark them published; how many were published."""
        published = self.with_db_retry(publish_dead_letters, self.uow, broker, self.exchange)
        self.dead_letters_waiting = False
        return published

    # -- around a failing change --------------------------------------------------------

    def _apply_in_order(
        self,
        items: Sequence[Item],
        apply: Callable[[Sequence[Item]], object],
        failure: BaseException,
    ) -> None:
        remaining = list(items)
        while remaining:
            if isinstance(failure, ChangeFailed):
                index = failure.index
                if index > 0:
                    self._apply_or_split(remaining[:index], apply)
                if isinstance(failure.error, OutOfSequence):
                    self._refuse(remaining[index], failure.error)
                else:
                    self._retry_alone(remaining[index], apply, failure.error)
                remaining = remaining[index + 1 :]
            elif len(remaining) == 1:
                self._retry_alone(remaining[0], apply, failure)
                remaining = []
            else:
                half = len(remaining) // 2
                self._apply_or_split(remaining[:half], apply)
                remaining = remaining[half:]
            if not remaining:
                return
            try:
                self.with_db_retry(apply, remaining)
                return
            except (DatabaseUnavailable, Interrupted):
                raise
            except Exception as error:
                failure = error

    def _apply_or_split(
        self, items: Sequence[Item], apply: Callable[[Sequence[Item]], object]
    ) -> None:
        try:
            self.with_db_retry(apply, items)
        except (DatabaseUnavailable, Interrupted):
            raise
        except Exception as error:
            self._apply_in_order(items, apply, error)

    def _retry_alone(
        self, item: Item, apply: Callable[[Sequence[Item]], object], error: BaseException
    ) -> None:
        """Retry one failing change until it applies or has used up its attempts."""
        message = self.describe(item)
        row = self._record_failure(message, error)
        while row.attempts < self.max_attempts:
            pause = min(self.retry_backoff * 2 ** (row.attempts - 1), 2.0)
            if self.stop.wait(pause):
                raise Interrupted(f"stopped while retrying {message.key}")
            try:
                self.with_db_retry(apply, [item])
                logger.info("change %s applied at attempt %d", message.key, row.attempts + 1)
                return
            except (DatabaseUnavailable, Interrupted):
                raise
            except ChangeFailed as failed:
                row = self._record_failure(message, failed.error)
            except Exception as other:
                row = self._record_failure(message, other)
        self._give_up(message)

    def _refuse(self, item: Item, error: OutOfSequence) -> None:
        """Dead at once, without retries and without moving the stream's position (its
        row carries no position, so the real change at that position stays apart)."""
        metrics.OUT_OF_SEQUENCE.inc()
        logger.warning("refusing change %s: %s", self.describe(item).key, error)
        self.record_undecodable([(replace(self.describe(item), position=None), error)])

    def _record_failure(self, message: FailedMessage, error: BaseException) -> DeadLetter:
        metrics.FAILED_ATTEMPTS.inc()

        def record() -> DeadLetter:
            with self.uow as uow:
                row = uow.dead_letters.record_failure(message, error)
                uow.commit()
            return row

        row = self.with_db_retry(record)
        logger.info(
            "change %s failed (attempt %d of %d): %s: %s",
            message.key,
            row.attempts,
            self.max_attempts,
            row.error_type,
            row.error,
        )
        return row

    def _give_up(self, message: FailedMessage) -> None:
        """The message is dead; its stream's position moves past it (a snapshot state
        stays), in the same transaction, so the stream goes on."""

        def give_up() -> DeadLetter:
            with self.uow as uow:
                row = uow.dead_letters.give_up(message)
                stream, position = message.stream, message.position
                if stream is not None and position is not None:
                    last = uow.positions.get(stream)
                    if last is None or position > last:
                        state = uow.positions.snapshot_state(stream)
                        uow.positions.set(stream, position, state)
                uow.commit()
            return row

        self._dead(self.with_db_retry(give_up))

    def _dead(self, row: DeadLetter) -> None:
        self.dead_letters_waiting = True
        metrics.DEAD_LETTERS.inc()
        logger.warning(
            "dead-lettering message %s to %s after %d attempt(s): %s: %s",
            row.message.key,
            self.exchange,
            row.attempts,
            row.error_type,
            row.error,
        )


def publish_dead_letters(uow: AbstractUnitOfWork, broker: Broker, exchange: str) -> int:
    """Publish the dead-letter store's unpublished rows to ``exchange`` (confirmed), then
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


def dead_letter_message(row: DeadLetter) -> Message:
    """The message to publish to the dead-letter exchange: the original, with the
    reason in its headers."""
    m = row.message
    return Message(
        routing_key=m.routing_key,
        body=m.body,
        message_id=m.message_id or "",
        type=m.message_type or "change",
        content_type=m.content_type or "application/json",
        headers=dead_letter_headers(row),
    )


def dead_letter_headers(row: DeadLetter) -> dict[str, Any]:
    """The message's own headers plus why it is dead (the contract's ``x-`` headers)."""
    headers = dict(row.message.headers)
    headers.update(
        {
            "x-error": row.error,
            "x-error-type": row.error_type,
            "x-first-failed-at": row.first_failed_at.replace(
                tzinfo=row.first_failed_at.tzinfo or UTC
            ).isoformat(),
            "x-attempts": row.attempts,
        }
    )
    return headers


def _log_retry(state: RetryCallState) -> None:
    error = state.outcome.exception() if state.outcome else None
    logger.warning(
        "new database unavailable (attempt %d): %s",
        state.attempt_number,
        describe_error(error or Exception()),
    )
