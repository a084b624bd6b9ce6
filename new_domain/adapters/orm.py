"""The new domain's tables (SQLAlchemy Core); the migrations' target metadata.

The domain model knows nothing of them: :mod:`new_domain.adapters.repository` maps
``Product``, ``Batch`` and ``OrderLine`` onto ``products``, ``batches`` and
``batch_allocations`` itself, loading only what a unit of work touches and writing
each kind of change with one statement per transaction.

``batch_allocations.seq`` numbers a batch's lines in allocation order (the newest
highest; ``batches.last_allocation_seq`` is the highest number handed out), so a
quantity cut can deallocate a batch's most recent allocations.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.sql.expression import false
from sqlalchemy.types import TypeDecorator, TypeEngine

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)
"""Every table of the new domain (and nothing else): the migrations' target."""

BigId = BigInteger().with_variant(Integer(), "sqlite")
"""A 64-bit key that SQLite still numbers itself (only INTEGER keys are row ids there)."""


class Position(TypeDecorator[int]):
    """A stream position: a non-negative integer of up to 40 digits (Debezium's are wider
    than 64 bits, see ``new_domain/ingest/debezium.py``). ``NUMERIC(40)`` where the
    database has it; on SQLite, whose integers stop at 64 bits, its decimal digits."""

    impl = Numeric(40, 0)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(String(40))
        return dialect.type_descriptor(Numeric(40, 0))

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        return str(int(value)) if dialect.name == "sqlite" else Decimal(int(value))

    def process_result_value(self, value: Any, dialect: Dialect) -> int | None:
        return None if value is None else int(value)


# -- write model --------------------------------------------------------------------------

products = Table(
    "products",
    metadata,
    Column("sku", String(255), primary_key=True),
    Column("version_number", Integer, nullable=False, server_default="0"),
)

batches = Table(
    "batches",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("reference", String(255), nullable=False, unique=True),
    Column("sku", String(255), ForeignKey("products.sku"), nullable=False, index=True),
    Column("purchased_quantity", Integer, nullable=False),
    Column("eta", Date, nullable=True),
    Column("allocated_quantity", Integer, nullable=False, server_default="0"),
    Column("last_allocation_seq", Integer, nullable=False, server_default="0"),
    # the batch's place in its product's creation order (model.Product.add_batch)
    Column("creation_number", BigInteger, nullable=True),
)

batch_allocations = Table(
    "batch_allocations",
    metadata,
    Column("batchref", String(255), ForeignKey("batches.reference"), primary_key=True),
    Column("orderid", String(255), primary_key=True),
    Column("sku", String(255), nullable=False),
    Column("qty", Integer, nullable=False),
    Column("seq", Integer, nullable=False, server_default="0"),
    Index("ix_batch_allocations_orderid", "orderid"),
)

# -- read model ---------------------------------------------------------------------------

allocations_view = Table(
    "allocations_view",
    metadata,
    Column("orderid", String(255), primary_key=True),
    Column("sku", String(255), primary_key=True),
    Column("batchref", String(255), primary_key=True),
)

# -- anti-corruption layer: legacy keys -> ours -------------------------------------------

legacy_product_map = Table(
    "legacy_product_map",
    metadata,
    Column("prod_id", BigInteger, primary_key=True, autoincrement=False),
    Column("sku", String(255), nullable=False),
)

legacy_lot_map = Table(
    "legacy_lot_map",
    metadata,
    Column("lot_id", BigInteger, primary_key=True, autoincrement=False),
    Column("batchref", String(255), nullable=False),
    Column("sku", String(255), nullable=False),
)

legacy_line_map = Table(
    "legacy_line_map",
    metadata,
    Column("line_id", BigInteger, primary_key=True, autoincrement=False),
    Column("orderid", String(255), nullable=False),
    Column("sku", String(255), nullable=False),
    Column("qty", Integer, nullable=False),
)

legacy_allocation_map = Table(
    "legacy_allocation_map",
    metadata,
    Column("alloc_id", BigInteger, primary_key=True, autoincrement=False),
    Column("line_id", BigInteger, nullable=False),
    Column("lot_id", BigInteger, nullable=False),
)
"""Which order line an allocation row allocates to which lot: a delete that carries only
the row's key (Debezium under PostgreSQL's default REPLICA IDENTITY) is resolved here."""

# -- consumer bookkeeping -----------------------------------------------------------------

applied_change_position = Table(
    "applied_change_position",
    metadata,
    Column("stream", Text, primary_key=True),
    Column("position", Position, nullable=False),
    Column("snapshot_state", String(16), nullable=True),
    Column("echo_txid", String(64), nullable=True),
)
"""Per stream: the last applied position, the snapshot state, and the legacy transaction
id of the echo the last applied change belongs to (see ``ingest/origin.py``)."""

dead_letter = Table(
    "dead_letter",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("message_key", String(255), nullable=False, unique=True),
    Column("message_id", String(255), nullable=True),
    Column("stream", Text, nullable=True),
    Column("position", Position, nullable=True),
    Column("routing_key", String(255), nullable=False),
    Column("message_type", String(64), nullable=True),
    Column("content_type", String(128), nullable=True),
    Column("headers", Text, nullable=False),
    Column("body", LargeBinary, nullable=False),
    Column("state", String(16), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("error", Text, nullable=False),
    Column("error_type", String(255), nullable=False),
    Column("first_failed_at", DateTime(timezone=True), nullable=False),
    Column("last_failed_at", DateTime(timezone=True), nullable=False),
    Column("dead_at", DateTime(timezone=True), nullable=True),
    Column("published_at", DateTime(timezone=True), nullable=True),
    Column("resolved_at", DateTime(timezone=True), nullable=True),
    Index("ix_dead_letter_stream_position", "stream", "position"),
    Index("ix_dead_letter_state", "state"),
)

consumer_progress = Table(
    "consumer_progress",
    metadata,
    Column("source", String(255), primary_key=True),
    Column("newest_commit_at", DateTime(timezone=True), nullable=True),
    Column("heartbeat_at", DateTime(timezone=True), nullable=True),
    Column("applied_at", DateTime(timezone=True), nullable=False),
)

anomaly = Table(
    "anomaly",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("recorded_at", DateTime(timezone=True), nullable=False),
    Column("kind", String(64), nullable=False),
    Column("sku", String(255), nullable=True),
    Column("detail", Text, nullable=False),
    Column("message_id", String(255), nullable=True),
    Index("ix_anomaly_recorded_at", "recorded_at"),
)

decision_parity = Table(
    "decision_parity",
    metadata,
    Column("route", String(64), primary_key=True),
    Column("agree", BigInteger, nullable=False),
    Column("differ", BigInteger, nullable=False),
)

decision_difference = Table(
    "decision_difference",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("recorded_at", DateTime(timezone=True), nullable=False),
    Column("route", String(64), nullable=False),
    Column("sku", String(255), nullable=False),
    Column("legacy", Text, nullable=False),
    Column("new", Text, nullable=False),
    Column("state", Text, nullable=False),
    Column("change_id", String(255), nullable=True),
    Index("ix_decision_difference_route", "route", "id"),
)

decision_journal = Table(
    "decision_journal",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("recorded_at", DateTime(timezone=True), nullable=False),
    Column("route", String(64), nullable=False),
    Column("sku", String(255), nullable=False),
    Column("agreed", Boolean, nullable=False),
    Column("entry", Text, nullable=False),
    Column("change_id", String(255), nullable=True),
)

write_ownership = Table(
    "write_ownership",
    metadata,
    Column("group_name", String(64), primary_key=True),
    Column("rule", String(32), nullable=False),
    Column("previous_rule", String(32), nullable=True),
    Column("epoch", Integer, nullable=False),
    Column("state", String(16), nullable=False),
    Column("changed_at", DateTime(timezone=True), nullable=False),
    Column("changed_by", String(255), nullable=True),
)
"""Each write group's ownership of products (see docs/write-path.md)."""

ownership_violation = Table(
    "ownership_violation",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("recorded_at", DateTime(timezone=True), nullable=False),
    Column("group_name", String(64), nullable=False),
    Column("sku", String(255), nullable=False),
    Column("change_id", String(255), nullable=True),
    Column("stream", String(255), nullable=True),
    Column("position", Position, nullable=True),
    Column("detail", Text, nullable=False),
    Column("resolved_at", DateTime(timezone=True), nullable=True),
    Column("resolved_by", String(255), nullable=True),
    Column("resolution", Text, nullable=True),
    Index("ix_ownership_violation_resolved_at", "resolved_at"),
)
"""A legacy change to a product the new system owns that was not its own echo."""

echo_anomaly = Table(
    "echo_anomaly",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("recorded_at", DateTime(timezone=True), nullable=False),
    Column("decision_id", String(64), nullable=True),
    Column("route", String(64), nullable=True),
    Column("sku", String(255), nullable=True),
    Column("expected", Text, nullable=False),
    Column("found", Text, nullable=False),
    Column("change_id", String(255), nullable=True),
    Column("resolved_at", DateTime(timezone=True), nullable=True),
    Column("resolved_by", String(255), nullable=True),
    Column("resolution", Text, nullable=True),
    Index("ix_echo_anomaly_resolved_at", "resolved_at"),
)
"""An echo of the new system's decision whose legacy rows show something else."""

outbox = Table(
    "outbox",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("message_id", String(64), nullable=False, unique=True),
    Column("event_type", String(64), nullable=False),
    Column("routing_key", String(255), nullable=False),
    Column("body", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("published_at", DateTime(timezone=True), nullable=True),
    Index("ix_outbox_published_at", "published_at"),
)

# -- the shard router (new_domain/entrypoints/shard_router.py) ----------------------------

shard_route_position = Table(
    "shard_route_position",
    metadata,
    Column("stream", Text, primary_key=True),
    Column("position", Position, nullable=False),
    Column("shard_count", Integer, nullable=False),
    Column("open_transaction", Text, nullable=True),
    Column("reading", Boolean, nullable=False, server_default=false()),
)
"""Per input stream: the last position routed (published to its shard and confirmed),
the number of shards it was routed over, the legacy transaction still open at that
position (JSON: its id and each shard's count of its changes so far), if any, and whether
that change was a snapshot read."""

shard_route_seq = Table(
    "shard_route_seq",
    metadata,
    Column("stream", Text, primary_key=True),
    Column("position", Position, nullable=False),
)
"""Per shard stream (``<input stream>#<k>/<n>``): the last position given out."""

shard_fence = Table(
    "shard_fence",
    metadata,
    Column("group_name", String(64), primary_key=True),
    Column("epoch", Integer, primary_key=True, autoincrement=False),
    Column("stream", Text, primary_key=True),
    Column("shard_count", Integer, nullable=False),
)
"""A write group's fence, per shard stream that applied it: with shards, the move of
``epoch`` settles once every shard has applied the fence (each has applied legacy's
writes of its products from before it)."""

shard_route_key = Table(
    "shard_route_key",
    metadata,
    Column("kind", String(16), primary_key=True),
    Column("legacy_id", BigInteger, primary_key=True, autoincrement=False),
    Column("sku", String(255), nullable=False),
    Column("ref", String(255), nullable=True),
)
"""What the router learnt of legacy's keys to tell a change's product: ``product`` ids
and ``lot`` ids, with their sku (and a lot's reference)."""

NEW_DOMAIN_STATE = (
    batch_allocations,
    batches,
    products,
    allocations_view,
    legacy_allocation_map,
    legacy_line_map,
    legacy_lot_map,
    legacy_product_map,
    anomaly,
    dead_letter,
)
"""Tables a reset empties (children first); the outbox and progress stay."""
