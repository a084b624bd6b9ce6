"""The shard router's bookkeeping in the new database (tables ``shard_route_*``).

:class:`RouteState` is what the router knows between two batches: per input stream the
last position routed, per shard stream the last position given out, and the legacy keys
it learnt (:class:`RouterKeys`). :class:`ShardRouteStore` loads it and saves what a batch
changed in ONE transaction, after the batch's messages were confirmed by the broker and
before its deliveries are acknowledged: a router killed in between finds the state of
before the batch, routes the redelivered changes again to the same shards at the same
positions (the routing is a function of the state and the changes), and the shard
consumers skip what they applied already.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.engine import Engine

from new_domain.adapters import orm
from new_domain.adapters.bulk import insert_rows
from new_domain.ingest.ports import (
    LOT,
    PRODUCT,
    AbstractLegacyKeys,
    LegacyAllocation,
    LegacyLine,
    LegacyLot,
    OpenTransaction,
)


class ShardsNotDrained(Exception):
    """A shard still has routed changes its consumer has not applied."""


class RouterKeys(AbstractLegacyKeys):
    """The keys a change's product is told by: products (id -> sku) and lots (id ->
    reference and sku), learnt from the stream. Order lines and allocations are not
    kept (an allocation row names its lot), so memory grows with products and lots
    only."""

    def __init__(
        self, products: dict[int, str] | None = None, lots: dict[int, LegacyLot] | None = None
    ) -> None:
        self.products = products or {}
        self.lots = lots or {}
        self.new: list[tuple[str, int, str, str | None]] = []

    def product_sku(self, prod_id: int) -> str | None:
        return self.products.get(prod_id)

    def remember_product(self, prod_id: int, sku: str) -> None:
        if self.products.get(prod_id) != sku:
            self.products[prod_id] = sku
            self.new.append((PRODUCT, prod_id, sku, None))

    def lot(self, lot_id: int) -> LegacyLot | None:
        return self.lots.get(lot_id)

    def remember_lot(self, lot_id: int, lot: LegacyLot) -> None:
        if self.lots.get(lot_id) != lot:
            self.lots[lot_id] = lot
            self.new.append((LOT, lot_id, lot.sku, lot.batchref))

    def line(self, line_id: int) -> LegacyLine | None:
        return None

    def remember_line(self, line_id: int, line: LegacyLine) -> None:
        return None

    def forget_line(self, line_id: int) -> None:
        return None

    def allocation(self, alloc_id: int) -> LegacyAllocation | None:
        return None

    def remember_allocation(self, alloc_id: int, allocation: LegacyAllocation) -> None:
        return None

    def forget_allocation(self, alloc_id: int) -> None:
        return None


@dataclass
class StreamRoute:
    """An input stream: the last position routed, over how many shards, and the legacy
    transaction open at that position (routed in part), if any."""

    position: int
    shard_count: int
    open: OpenTransaction | None = None
    reading: bool = False  # the change at ``position`` was a snapshot read


@dataclass
class RouteState:
    streams: dict[str, StreamRoute] = field(default_factory=dict)
    seqs: dict[str, int] = field(default_factory=dict)
    keys: RouterKeys = field(default_factory=RouterKeys)
    changed_streams: set[str] = field(default_factory=set)
    changed_seqs: set[str] = field(default_factory=set)
    stored: dict[str, int] = field(default_factory=dict)  # positions as in the database

    def next_position(self, shard_stream: str) -> int:
        position = self.seqs.get(shard_stream, 0) + 1
        self.seqs[shard_stream] = position
        self.changed_seqs.add(shard_stream)
        return position

    def routed(self, stream: str, route: StreamRoute) -> None:
        self.streams[stream] = route
        self.changed_streams.add(stream)


class ShardRouteStore:
    """Loads and saves :class:`RouteState` (see the module docstring)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def load(self) -> RouteState:
        state = RouteState()
        with self.engine.connect() as connection:
            for row in connection.execute(select(orm.shard_route_position)).mappings():
                opened = row["open_transaction"]
                state.streams[row["stream"]] = StreamRoute(
                    int(row["position"]),
                    int(row["shard_count"]),
                    None if opened is None else OpenTransaction.from_json(json.loads(opened)),
                    bool(row["reading"]),
                )
            state.stored = {name: route.position for name, route in state.streams.items()}
            seqs = connection.execute(select(orm.shard_route_seq)).all()
            state.seqs = {stream: int(position) for stream, position in seqs}
            # what the consumers learnt (all of it, when the router starts on an install
            # that one consumer fed until now), then what the router learnt itself
            products = select(orm.legacy_product_map.c.prod_id, orm.legacy_product_map.c.sku)
            for prod_id, sku in connection.execute(products).all():
                state.keys.products[int(prod_id)] = sku
            lots = orm.legacy_lot_map
            for lot_id, ref, sku in connection.execute(
                select(lots.c.lot_id, lots.c.batchref, lots.c.sku)
            ).all():
                state.keys.lots[int(lot_id)] = LegacyLot(ref, sku)
            for kind, legacy_id, sku, ref in connection.execute(select(orm.shard_route_key)).all():
                if kind == PRODUCT:
                    state.keys.products[int(legacy_id)] = sku
                elif kind == LOT:
                    state.keys.lots[int(legacy_id)] = LegacyLot(ref or "", sku)
        return state

    def stored_positions(self) -> dict[str, int]:
        """How far each input stream is routed, as the database says now."""
        table = orm.shard_route_position
        with self.engine.connect() as connection:
            rows = connection.execute(select(table.c.stream, table.c.position)).all()
            return {stream: int(position) for stream, position in rows}

    def applied_position(self, stream: str) -> int | None:
        """The last position one unsharded consumer applied from ``stream`` (None: none):
        where the router starts on an install one consumer fed until now."""
        table = orm.applied_change_position
        with self.engine.connect() as connection:
            found = connection.scalar(select(table.c.position).where(table.c.stream == stream))
        return None if found is None else int(found)

    def unshard(self) -> dict[str, int]:
        """Give every routed stream back to one consumer: store its routed position as the
        unsharded consumer's and forget the routing (the learnt keys stay). Refused with
        :class:`ShardsNotDrained` while a shard has routed changes not applied. Returns the
        streams and their positions."""
        positions, seqs = orm.shard_route_position, orm.shard_route_seq
        applied = orm.applied_change_position
        with self.engine.begin() as connection:
            routed = {
                s: int(p)
                for s, p in connection.execute(
                    select(positions.c.stream, positions.c.position)
                ).all()
            }  # noqa: E501
            given = {s: int(p) for s, p in connection.execute(select(seqs)).all()}
            done = {
                s: int(p)
                for s, p in connection.execute(select(applied.c.stream, applied.c.position)).all()
            }
            behind = sorted(s for s, last in given.items() if done.get(s) != last)
            if behind:
                raise ShardsNotDrained(
                    f"shard stream(s) {', '.join(behind)} not applied up to where they are"
                    " routed: let their consumers drain them first"
                )
            rows = [{"stream": s, "position": p, "snapshot_state": None} for s, p in routed.items()]
            insert_rows(connection, applied, rows, key=["stream"], on_conflict="update")
            connection.execute(positions.delete())
            connection.execute(seqs.delete())
        return routed

    def save(self, state: RouteState) -> None:
        """Store what changed since the last save, in one transaction."""
        streams = [
            {
                "stream": name,
                "position": route.position,
                "shard_count": route.shard_count,
                "open_transaction": (
                    None if route.open is None else json.dumps(route.open.to_json())
                ),
                "reading": route.reading,
            }
            for name, route in sorted(state.streams.items())
            if name in state.changed_streams
        ]
        seqs = [
            {"stream": name, "position": state.seqs[name]} for name in sorted(state.changed_seqs)
        ]
        latest = {(kind, legacy_id): (sku, ref) for kind, legacy_id, sku, ref in state.keys.new}
        keys = [
            {"kind": kind, "legacy_id": legacy_id, "sku": sku, "ref": ref}
            for (kind, legacy_id), (sku, ref) in sorted(latest.items())
        ]
        if not (streams or seqs or keys):
            return
        with self.engine.begin() as connection:
            insert_rows(
                connection, orm.shard_route_position, streams, key=["stream"], on_conflict="update"
            )
            insert_rows(connection, orm.shard_route_seq, seqs, key=["stream"], on_conflict="update")
            insert_rows(
                connection,
                orm.shard_route_key,
                keys,
                key=["kind", "legacy_id"],
                on_conflict="update",
            )
        for name in state.changed_streams:
            state.stored[name] = state.streams[name].position
        state.changed_streams.clear()
        state.changed_seqs.clear()
        state.keys.new.clear()
