"""The shard router (``strangler shard-router``): the consumer's queue in, one stream per
product shard out (the rules: :mod:`new_domain.ingest.shards`).

It takes the bridge's changes from the unsharded consumer's queue in batches of whole
legacy transactions, checks each stream's positions as the consumer does (a re-send at
or below the last routed position is dropped; a gap or a jump is refused and
dead-lettered, the position kept), tells each change's product through the
anti-corruption layer, and publishes the batch to ``<queue>.shards``, each change
with the next position of its shard. Per batch: publish (confirmed), THEN store the
routing state (one transaction), THEN ack the batch. A router killed anywhere in
between routes the redelivered batch again from the stored state: the same changes to
the same shards at the same positions, which the shard consumers skip. Heartbeats go
to every shard.

Only the kit's bridge streams are routed (dense positions); a Debezium change, or a
change without the bridge's message id, is refused with that reason: run one
consumer on such a stream (docs/architecture.md).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from tenacity import RetryCallState

from broker import Broker, BrokerRefused, Message
from new_domain import metrics
from new_domain.adapters.shard_routes import RouteState, ShardRouteStore, StreamRoute
from new_domain.entrypoints.batches import Item, Pending
from new_domain.entrypoints.consumer import DEFAULT_EXCHANGE, DEFAULT_QUEUE, MAX_PREFETCH
from new_domain.entrypoints.retrying import failure_of, reconnecting
from new_domain.entrypoints.topology import declare_consumer, declare_shards
from new_domain.ingest import (
    LEGACY_SHOP,
    FailedMessage,
    FailurePolicy,
    Heartbeat,
    Interrupted,
    LegacyChange,
    OutOfSequence,
    Tombstone,
    Translators,
)
from new_domain.ingest.origin import ORIGIN_TABLE
from new_domain.ingest.ports import OpenTransaction
from new_domain.ingest.shards import (
    Shard,
    resharded,
    shard_exchange,
    shard_message_id,
    shards_for,
)
from new_domain.service_layer.unit_of_work import AbstractUnitOfWork

logger = logging.getLogger(__name__)

DEFAULT_ROUTER_BATCH = 1000


class NotShardable(Exception):
    """A message the router cannot route by product (see the module docstring)."""


class StaleRouteState(Exception):
    """Another router moved the stored routing on since this one loaded it (this one was
    a standby until now): the batch goes back to the queue and the state is read again."""


class ShardCountChanged(Exception):
    """The stored routing used another number of shards."""


@dataclass
class _Group:
    """Consecutive changes of one legacy transaction in a batch, with their shards."""

    changes: list[tuple[Item, LegacyChange, list[int]]] = field(default_factory=list)
    opened: OpenTransaction | None = None  # the transaction, as routed before the group


class ShardRouter:
    """Routes ``queue`` (bound to ``exchange``) to ``shards`` shard queues. One thread."""

    def __init__(
        self,
        uow: AbstractUnitOfWork,
        store: ShardRouteStore,
        broker_factory: Callable[[], Broker],
        shards: int,
        queue: str = DEFAULT_QUEUE,
        *,
        exchange: str = DEFAULT_EXCHANGE,
        batch_size: int = DEFAULT_ROUTER_BATCH,
        batch_timeout: float = 0.05,
        transaction_hold: float = 5.0,
        reconnect_delay: float = 1.0,
        translators: Translators = LEGACY_SHOP,
        reshard: bool = False,
    ) -> None:
        self.shards = Shard.all(shards)
        self.reshard = reshard
        self.store = store
        self.broker_factory = broker_factory
        self.queue, self.exchange = queue, exchange
        self.batch_size, self.batch_timeout = batch_size, batch_timeout
        self.prefetch = min(4 * batch_size, MAX_PREFETCH)
        self.transaction_hold, self.reconnect_delay = transaction_hold, reconnect_delay
        self.translators = translators
        self.failures: FailurePolicy[Item] = FailurePolicy(uow, Item.failed_message, f"{queue}.dlx")
        self._broker: Broker | None = None
        self._pending = Pending()
        self._state: RouteState | None = None

    def run(self, stop: threading.Event) -> None:
        """Route until ``stop`` is set, reconnecting with back-off (as the consumer)."""
        self.failures.stop = stop
        unless = (Interrupted, BrokerRefused, ShardCountChanged)
        retrying = reconnecting(stop, self.reconnect_delay, self._after_failure, unless=unless)
        try:
            while not stop.is_set():
                retrying(self.run_once)
        except Interrupted:
            pass
        finally:
            self.close()

    def run_once(self, *, retry_stale: bool = True) -> int:
        """Route one batch of whole legacy transactions; how many messages were acked."""
        broker = self._connected()
        state = self._loaded(broker)
        if self.failures.dead_letters_waiting:
            self.failures.publish_dead_letters(broker)
        self._fill(broker)
        count = self._pending.batch_length(self.batch_size, self.prefetch, self.transaction_hold)
        if count == 0:
            return 0
        batch = self._pending.items[:count]
        try:
            self._route(broker, state, batch)
        except StaleRouteState:
            logger.info("the routing moved on elsewhere (a standby taking over): reloading it")
            self._state = None
            self._hand_back(broker)
            return self.run_once(retry_stale=False) if retry_stale else 0
        except BaseException:
            self._state = None  # what this batch did in memory is not stored
            self._hand_back(broker)
            raise
        self._pending.take(count)
        return count

    def close(self) -> None:
        broker, self._broker = self._broker, None
        self._pending = Pending()
        if broker is not None:
            try:
                broker.close()
            except Exception:  # noqa: BLE001 - already broken; the server requeues
                logger.debug("closing the broker failed", exc_info=True)

    # -- one batch ------------------------------------------------------------------------

    def _route(self, broker: Broker, state: RouteState, items: Sequence[Item]) -> None:
        out: list[Message] = []
        refused: list[tuple[FailedMessage, Exception]] = []
        group = _Group()
        for item in items:
            if item.error is not None:
                refused.append((item.failed_message(), item.error))
            elif isinstance(item.parsed, Heartbeat):
                out.extend(self._heartbeats(item))
            elif isinstance(item.parsed, LegacyChange):
                change = item.parsed
                problem = self._check(state, change)
                if problem is not None:
                    refused.append((item.failed_message(), problem))
                    continue
                if change.position <= self._last(state, change.stream):
                    continue  # a re-send of what is routed already
                if change.op == "r" and not group.changes and not self._reading(state, change):
                    out.extend(self._snapshot_starts(state, item, change))
                opened = self._advance(state, change)
                if group.opened is None:
                    group.opened = opened
                group.changes.append((item, change, self._shards_of(state, change)))
                if change.ends_transaction:
                    out.extend(self._publishable(state, group, ended=True))
                    group = _Group()
            elif not isinstance(item.parsed, Tombstone):
                why = "a Debezium transaction boundary: sharding takes the kit bridge's streams"
                refused.append((item.failed_message(), NotShardable(why)))
        out.extend(self._publishable(state, group, ended=False))
        if refused:
            self.failures.record_undecodable(refused)
        if self.failures.with_db_retry(self.store.stored_positions) != state.stored:
            raise StaleRouteState
        if out:
            broker.publish(shard_exchange(self.queue), out)
        self.failures.with_db_retry(self.store.save, state)
        if self.failures.dead_letters_waiting:
            self.failures.publish_dead_letters(broker)
        broker.ack(items[-1].delivery.delivery_tag, multiple=True)
        metrics.ROUTED.inc(len(out))

    def _check(self, state: RouteState, change: LegacyChange) -> Exception | None:
        if change.debezium or not change.dense or not change.message_id:
            return NotShardable(
                "only the kit bridge's streams (dense positions) are routed to shards; run"
                " one consumer on a Debezium stream"
            )
        route = state.streams.get(change.stream) or self._seed(state, change.stream)
        if route is None or change.position <= route.position:
            return None
        if change.position != route.position + 1:
            metrics.OUT_OF_SEQUENCE.inc()
            return OutOfSequence(change.stream, route.position, change.position)
        return None

    def _seed(self, state: RouteState, stream: str) -> StreamRoute | None:
        """A stream new to the router starts where one unsharded consumer left it, if one
        applied it: what that consumer applied is not routed again."""
        applied = self.failures.with_db_retry(self.store.applied_position, stream)
        if applied is None:
            return None
        route = StreamRoute(applied, len(self.shards))
        state.routed(stream, route)
        logger.info("stream %s: routing from position %d on (applied so far)", stream, applied)
        return route

    @staticmethod
    def _last(state: RouteState, stream: str) -> int:
        route = state.streams.get(stream)
        return -1 if route is None else route.position

    def _advance(self, state: RouteState, change: LegacyChange) -> OpenTransaction:
        """Move the stream's routed position to the change; the legacy transaction it
        belongs to (one routed in part before, which it continues, or a new one)."""
        route = state.streams.get(change.stream)
        opened = route.open if route is not None else None
        first = change.transaction_order in (None, 1)
        if opened is None or first or opened.id != change.transaction_id:
            opened = OpenTransaction(change.transaction_id)
        state.routed(
            change.stream,
            StreamRoute(
                change.position,
                len(self.shards),
                None if change.ends_transaction else opened,
                change.op == "r",
            ),
        )
        return opened

    def _shards_of(self, state: RouteState, change: LegacyChange) -> list[int]:
        """The change's shard (every shard for a fence), told before it teaches the key
        maps what it knows."""
        skus = self.translators.skus(change, state.keys)
        try:
            self.translators.translate(change, state.keys)
        except Exception:  # noqa: BLE001 - the shard's consumer reports it
            logger.debug("change %s teaches the router no key", change.message_id)
        return shards_for(change, skus, len(self.shards))

    def _publishable(self, state: RouteState, group: _Group, *, ended: bool) -> list[Message]:
        """The group's changes as their shards carry them (see :func:`resharded`)."""
        if not group.changes or group.opened is None:
            return []
        copies = [
            (item, change, index) for item, change, shards in group.changes for index in shards
        ]
        last_of = {index: at for at, (_, _, index) in enumerate(copies)}
        opened = group.opened
        messages = []
        for at, (item, change, index) in enumerate(copies):
            shard = self.shards[index]
            total, in_table = opened.add(index, change.table)
            place = (total, in_table, ended and last_of[index] == at)
            position = state.next_position(shard.stream(change.stream))
            envelope = json.loads(item.delivery.message.body)
            routed_from = (change.stream, change.position, change.message_id or "")
            body = resharded(envelope, shard, position, place, routed_from)
            install = (change.message_id or "").partition(":")[0]
            original = item.delivery.message
            messages.append(
                Message(
                    routing_key=shard.routing_key,
                    body=json.dumps(body, separators=(",", ":")).encode(),
                    message_id=shard_message_id(install, shard, position),
                    type=original.type or "change",
                    headers=dict(original.headers),
                    timestamp=original.timestamp,
                )
            )
        return messages

    @staticmethod
    def _reading(state: RouteState, change: LegacyChange) -> bool:
        route = state.streams.get(change.stream)
        return route is not None and route.reading

    def _snapshot_starts(
        self, state: RouteState, item: Item, change: LegacyChange
    ) -> list[Message]:
        """A snapshot begins: every shard gets a snapshot read of the kit's own
        ``strangler_origin`` table (which means nothing to the consumer) first, so that a
        shard awaiting a snapshot (after ``strangler rebuild --from-snapshot``) starts
        loading it even when none of its products has a row in it."""
        base = json.loads(item.delivery.message.body)
        base.update(op="r", before=None, after={"origin_id": 0, "kind": "snapshot"})
        base["source"] = {**base.get("source", {}), "table": ORIGIN_TABLE, "snapshot": True}
        base.pop("transaction", None)
        install = (change.message_id or "").partition(":")[0]
        messages = []
        for shard in self.shards:
            position = state.next_position(shard.stream(change.stream))
            routed_from = (change.stream, change.position, change.message_id or "")
            body = resharded(base, shard, position, None, routed_from)
            messages.append(
                Message(
                    routing_key=shard.routing_key,
                    body=json.dumps(body, separators=(",", ":")).encode(),
                    message_id=shard_message_id(install, shard, position),
                )
            )
        return messages

    def _heartbeats(self, item: Item) -> list[Message]:
        original = item.delivery.message
        return [
            Message(
                routing_key=shard.routing_key,
                body=original.body,
                message_id=f"{original.message_id or 'heartbeat'}#{shard}",
                type=original.type or "heartbeat",
                headers=dict(original.headers),
                timestamp=original.timestamp,
            )
            for shard in self.shards
        ]

    # -- the broker -----------------------------------------------------------------------

    def _fill(self, broker: Broker) -> None:
        """Take what is ready (waiting up to ``batch_timeout`` for the first delivery)
        until a batch is full and ends with a whole legacy transaction."""
        wait = self.batch_timeout
        while len(self._pending.items) < self.prefetch:
            if self._pending.has_boundary() and len(self._pending.items) >= self.batch_size:
                return
            deliveries = broker.get_batch(self.queue, self.prefetch, wait)
            if not deliveries:
                return
            self._pending.extend(deliveries)
            wait = 0.0

    def _loaded(self, broker: Broker) -> RouteState:
        if self._state is None:
            state = self.failures.with_db_retry(self.store.load)
            counts = {route.shard_count for route in state.streams.values()} - {len(self.shards)}
            if counts and not self.reshard:
                raise ShardCountChanged(
                    f"the stored routing used {', '.join(map(str, sorted(counts)))} shard(s),"
                    f" not {len(self.shards)}: drain the shard queues, then start the router"
                    " with --reshard (docs/architecture.md)"
                )
            if counts:
                self._reshard(broker, state, counts)
            self._state = state
        return self._state

    def _reshard(self, broker: Broker, state: RouteState, counts: set[int]) -> None:
        """Route over the new number of shards from here on: only once every queue of
        the old shards is empty (a product's older changes would otherwise race its
        newer ones in another shard)."""
        for count in sorted(counts):
            for shard in Shard.all(count):
                waiting = broker.queue_depth(shard.queue(self.queue))
                if waiting:
                    raise ShardCountChanged(
                        f"shard queue {shard.queue(self.queue)} still holds {waiting}"
                        " message(s): let its consumer drain it before --reshard"
                    )
        for name, route in state.streams.items():
            opened = None if route.open is None else OpenTransaction(route.open.id)
            state.routed(name, StreamRoute(route.position, len(self.shards), opened))
        logger.warning("resharding: routing over %d shard(s) from now on", len(self.shards))

    def _connected(self) -> Broker:
        if self._broker is None:
            broker = self.broker_factory()
            try:
                declare_consumer(broker, self.queue, self.exchange)
                declare_shards(broker, self.queue, self.shards)
            except BaseException:
                broker.close()
                raise
            self._broker = broker
            logger.info("routing %s to %d shard(s)", self.queue, len(self.shards))
        return self._broker

    def _hand_back(self, broker: Broker) -> None:
        if not self._pending.hand_back(broker):
            self.close()

    def _after_failure(self, state: RetryCallState) -> None:
        error, delay = failure_of(state)
        logger.warning("shard router: %s; retrying in %.1fs", error, delay)
        self._state = None
        self.close()
