"""The facade's tables in the new database (created by revision ``0002_facade_routes``)."""

from __future__ import annotations

from sqlalchemy import (
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
)

metadata = MetaData()

facade_route = Table(
    "facade_route",
    metadata,
    Column("method", String(16), nullable=False),
    Column("pattern", String(255), nullable=False),
    Column("mode", String(32), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("updated_by", String(128), nullable=False),
    Column("reason", Text, nullable=False),
    PrimaryKeyConstraint("method", "pattern", name="pk_facade_route"),
)

facade_route_audit = Table(
    "facade_route_audit",
    metadata,
    Column("id", Integer, nullable=False, autoincrement=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("method", String(16), nullable=False),
    Column("pattern", String(255), nullable=False),
    Column("from_mode", String(32), nullable=True),
    Column("to_mode", String(32), nullable=False),
    Column("by", String(128), nullable=False),
    Column("reason", Text, nullable=False),
    PrimaryKeyConstraint("id", name="pk_facade_route_audit"),
    Index("ix_facade_route_audit_route", "method", "pattern"),
)
