"""The consumer's exchanges and queues on the broker (idempotent declarations)."""

from __future__ import annotations

from collections.abc import Sequence

from broker import Broker, QueueSpec
from new_domain.ingest.shards import Shard, shard_exchange


def declare_consumer(
    broker: Broker, queue: str, exchange: str, bind_exchanges: Sequence[str] = ()
) -> None:
    """``exchange`` (with its alternate exchange ``<exchange>.unrouted``), the dead-letter
    pair ``<queue>.dlx``/``<queue>.dlq``, then ``queue`` bound to ``exchange`` and to each
    of ``bind_exchanges`` (with ``#`` and ``""``: Debezium Server's sink may publish with
    an empty routing key). The dead-letter pair comes first: a quorum queue's own dead
    letters (its delivery limit) go where the consumer's go."""
    broker.declare_exchange(exchange, alternate_exchange=f"{exchange}.unrouted")
    bindings = [(exchange, "#")] + [(x, key) for x in bind_exchanges for key in ("#", "")]
    dlx = f"{queue}.dlx"
    broker.declare_exchange(dlx)
    broker.declare_queue(QueueSpec(f"{queue}.dlq", [(dlx, "#")]))
    broker.declare_queue(QueueSpec(queue, bindings, dead_letter_exchange=dlx))


def declare_shards(broker: Broker, queue: str, shards: Sequence[Shard]) -> None:
    """The shard exchange and each shard's queue (see :func:`declare_shard`)."""
    for shard in shards:
        declare_shard(broker, queue, shard)


def declare_shard(broker: Broker, queue: str, shard: Shard) -> None:
    """``<queue>.shards`` (with its alternate exchange) and shard ``shard``'s queue,
    ``<queue>.shard-<k>-of-<n>``, bound with the shard's routing key, a single active
    consumer, dead-lettering to the unsharded queue's pair ``<queue>.dlx``/``<queue>.dlq``
    (one dead-letter queue for the whole pipeline, whatever the shard)."""
    exchange = shard_exchange(queue)
    broker.declare_exchange(exchange, alternate_exchange=f"{exchange}.unrouted")
    dlx = f"{queue}.dlx"
    broker.declare_exchange(dlx)
    broker.declare_queue(QueueSpec(f"{queue}.dlq", [(dlx, "#")]))
    bindings = [(exchange, shard.routing_key)]
    broker.declare_queue(QueueSpec(shard.queue(queue), bindings, dead_letter_exchange=dlx))
