"""The legacy shop's tables, deliberately shaped unlike the new domain's model."""

from __future__ import annotations

from sqlalchemy import (
    Column,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    UniqueConstraint,
)
from sqlalchemy.engine import Engine

metadata = MetaData()

prod_catalog = Table(
    "prod_catalog",
    metadata,
    Column("prod_id", Integer, primary_key=True, autoincrement=True),
    Column("prod_code", String(64), nullable=False, unique=True),
    Column("descr", String(200), nullable=True),
    sqlite_autoincrement=True,
)

stock_lot = Table(
    "stock_lot",
    metadata,
    Column("lot_id", Integer, primary_key=True, autoincrement=True),
    Column("lot_ref", String(64), nullable=False, unique=True),
    Column("prod_id", Integer, ForeignKey("prod_catalog.prod_id"), nullable=False),
    Column("qty_units", Integer, nullable=False),
    Column("arrival_date", Date, nullable=True),
    Column("created_at", DateTime, nullable=False),
    Index("ix_stock_lot_prod_id", "prod_id"),
    sqlite_autoincrement=True,
)

cust_order_line = Table(
    "cust_order_line",
    metadata,
    Column("line_id", Integer, primary_key=True, autoincrement=True),
    Column("order_no", String(64), nullable=False),
    Column("prod_id", Integer, ForeignKey("prod_catalog.prod_id"), nullable=False),
    Column("qty_units", Integer, nullable=False),
    UniqueConstraint("order_no", "prod_id", name="uq_cust_order_line_order_prod"),
    sqlite_autoincrement=True,
)

lot_allocation = Table(
    "lot_allocation",
    metadata,
    Column("alloc_id", Integer, primary_key=True, autoincrement=True),
    Column("lot_id", Integer, ForeignKey("stock_lot.lot_id"), nullable=False),
    Column("line_id", Integer, ForeignKey("cust_order_line.line_id"), nullable=False, unique=True),
    Column("allocated_at", DateTime, nullable=False),
    Index("ix_lot_allocation_lot_id", "lot_id"),
    sqlite_autoincrement=True,
)

TABLES: tuple[str, ...] = ("prod_catalog", "stock_lot", "cust_order_line", "lot_allocation")
"""The shop's tables in dependency order (the default set to capture)."""


def create_schema(engine: Engine) -> None:
    """Create the tables that do not exist yet."""
    metadata.create_all(engine, checkfirst=True)
