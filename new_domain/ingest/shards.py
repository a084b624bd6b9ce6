"""Sharding one legacy change stream by product: the shard router's rules (pure).

``strangler shard-router`` (:mod:`new_domain.entrypoints.shard_router`) takes the
bridge's stream in commit order and re-publishes each change to ONE of ``n`` shards,
chosen by a stable hash of the product it belongs to (:func:`shard_of`), so a product's
changes stay in one shard, in their order. Each shard is a stream of its own,
``<input stream>#<k>/<n>``, numbered densely from 1 by the router: the shard's consumer
checks and stores positions exactly as it does for the bridge's stream (a gap or a
jump is refused, a re-send skipped), so nothing in the consumer changes.

Which product a change belongs to is the anti-corruption layer's knowledge
(:meth:`~new_domain.ingest.translators.Translators.skus`), asked with the key maps the
router learns from the stream itself (a lot_allocation row through its lot, whose
product the lot's insert told). An origin marker (``strangler_origin``) goes with its
product, a fence marker (no product) to every shard; a change whose product cannot be
told (a table the layer does not know, a reference to a row never seen) to shard 0,
where it meets the fate it would meet with one consumer.

A legacy transaction that touches several products is split: each shard gets its part
as a transaction of its own (``transaction.total_order`` counted within the part,
``last`` on the part's last change), so each part is applied atomically and in order
within its shard; there is no order or atomicity across shards (docs/architecture.md).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from new_domain.ingest.envelope import LegacyChange
from new_domain.ingest.origin import ORIGIN_TABLE


def shard_exchange(queue: str) -> str:
    """The exchange the router of ``queue`` (the unsharded consumer's queue) publishes
    to, ``<queue>.shards``: named after the queue, so two pipelines on one virtual host
    never see each other's shards. Each shard queue is bound with its routing key."""
    return f"{queue}.shards"


MAX_SHARDS = 256
_SHARD = re.compile(r"^(\d{1,3})/(\d{1,3})$")


@dataclass(frozen=True, order=True)
class Shard:
    """Shard ``index`` of ``count`` (``2/4``: the third of four)."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if not 1 <= self.count <= MAX_SHARDS or not 0 <= self.index < self.count:
            raise ValueError(f"a shard is K/N with 1 <= N <= {MAX_SHARDS} and 0 <= K < N")

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``K/N`` -> the shard; ValueError for anything else."""
        found = _SHARD.match(text.strip())
        if found is None:
            raise ValueError(f"a shard is written K/N (like 0/4), got {text!r}")
        return cls(int(found[1]), int(found[2]))

    @classmethod
    def all(cls, count: int) -> list[Shard]:
        return [cls(index, count) for index in range(count)]

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    @property
    def routing_key(self) -> str:
        return f"shard.{self.index}.of.{self.count}"

    def queue(self, base: str) -> str:
        """The shard's queue, named after the unsharded consumer's queue ``base``."""
        return f"{base}.shard-{self.index}-of-{self.count}"

    def stream(self, stream: str) -> str:
        return f"{stream}#{self}"


def shard_of(sku: str, count: int) -> int:
    """The shard of product ``sku`` among ``count``: the same on every machine and run
    (the first 8 bytes of its SHA-256, modulo ``count``)."""
    digest = hashlib.sha256(sku.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") % count


def shards_for(change: LegacyChange, skus: list[str], count: int) -> list[int]:
    """The shards ``change`` goes to: its product's (the first of ``skus``, as the key
    maps knew it before the change); every shard for a fence marker; shard 0 when the
    product cannot be told."""
    if change.table == ORIGIN_TABLE:
        sku = change.row.get("sku")
        if isinstance(sku, str) and sku:
            return [shard_of(sku, count)]
        return list(range(count))
    if skus:
        return [shard_of(skus[0], count)]
    return [0]


def resharded(
    envelope: Mapping[str, Any],
    shard: Shard,
    position: int,
    place: tuple[int, int, bool] | None,
    routed_from: tuple[str, int, str],
) -> dict[str, Any]:
    """The change ``envelope`` as shard ``shard`` carries it: ``source.seq`` (and
    ``source.change_id``, which the message id repeats) its ``position`` in the shard,
    ``source.shard`` where it came from (``stream``, ``seq`` and ``message_id`` of the
    input, which the consumer records as the domain events' cause), and its
    ``transaction`` block counted within the shard's part (``place``: total order,
    order among the part's changes of its table, last of the part)."""
    out = dict(envelope)  # shallow: only source and transaction change, both rebuilt
    source = dict(out.get("source") or {})
    stream, seq, message_id = routed_from
    source.update(
        seq=position,
        change_id=position,
        shard={
            "index": shard.index,
            "count": shard.count,
            "stream": stream,
            "seq": seq,
            "message_id": message_id,
        },
    )
    out["source"] = source
    block = out.get("transaction")
    if isinstance(block, Mapping) and place is not None:
        total, in_table, last = place
        out["transaction"] = {
            **block,
            "total_order": total,
            "data_collection_order": in_table,
            "last": last,
        }
    return out


def shard_message_id(install: str, shard: Shard, position: int) -> str:
    """``<install>#<k>/<n>:<position>``: the consumer reads the shard's stream from it
    (the part before the colon names the capture install) and, with ``source.change_id``
    equal to the part after it, knows the stream's positions are dense."""
    return f"{install}#{shard}:{position}"
