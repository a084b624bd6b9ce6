"""The new domain's tables and their imperative mapping onto the domain model.

The model knows nothing of SQLAlchemy: :func:`start_mappers` (called by bootstrap,
never at import) maps ``Product``, ``Batch`` and the frozen ``OrderLine`` value object.
``OrderLine`` cannot carry ORM state itself, so each allocated line is stored in a
private row class and ``Batch._allocations`` becomes an association proxy over those
rows: the domain keeps using a plain set of frozen ``OrderLine``s.
"""

from __future__ import annotations

import threading
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    event,
)
from sqlalchemy.ext.associationproxy import association_proxy
from sqlalchemy.orm import composite, registry, relationship

from new_domain.domain.model import Batch, OrderLine, Product

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)
"""Every table of the new domain (and nothing else): the migrations' target."""

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
)

order_lines = Table(
    "order_lines",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("orderid", String(255), nullable=False, index=True),
    Column("sku", String(255), nullable=False),
    Column("qty", Integer, nullable=False),
)

allocations = Table(
    "allocations",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("orderline_id", Integer, ForeignKey("order_lines.id"), nullable=False, unique=True),
    Column("batch_id", Integer, ForeignKey("batches.id"), nullable=False, index=True),
)

allocations_view = Table(
    "allocations_view",
    metadata,
    Column("orderid", String(255), primary_key=True),
    Column("sku", String(255), primary_key=True),
    Column("batchref", String(255), primary_key=True),
)

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

applied_change_position = Table(
    "applied_change_position",
    metadata,
    Column("stream", Text, primary_key=True),
    Column("position", BigInteger, nullable=False),
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


class _AllocatedLine:
    """Storage row of one allocated ``OrderLine`` (private to this module)."""

    def __init__(self, line: OrderLine) -> None:
        self.line = line


mapper_registry = registry(metadata=metadata)
_lock = threading.Lock()
_started = False


def start_mappers() -> None:
    """Map the domain classes onto the tables (idempotent, thread-safe)."""
    global _started
    with _lock:
        if _started:
            return
        mapper_registry.map_imperatively(
            _AllocatedLine,
            order_lines,
            properties={
                "line": composite(
                    OrderLine, order_lines.c.orderid, order_lines.c.sku, order_lines.c.qty
                )
            },
        )
        mapper_registry.map_imperatively(
            Batch,
            batches,
            properties={
                "_purchased_quantity": batches.c.purchased_quantity,
                "_lines": relationship(
                    _AllocatedLine,
                    secondary=allocations,
                    collection_class=set,
                    cascade="all, delete-orphan",
                    single_parent=True,
                    lazy="selectin",
                ),
            },
        )
        Batch._allocations = association_proxy(  # type: ignore[assignment]
            "_lines", "line", creator=_AllocatedLine
        )
        mapper_registry.map_imperatively(
            Product,
            products,
            properties={
                "batches": relationship(
                    Batch,
                    order_by=batches.c.id,
                    cascade="all, delete-orphan",
                    lazy="selectin",
                ),
            },
            version_id_col=products.c.version_number,
            version_id_generator=False,
        )
        event.listen(Product, "load", _receive_load)
        _started = True


def _receive_load(product: Product, _context: Any) -> None:
    """Loaded aggregates skip ``__init__``: give them their event list."""
    product.events = []
