"""The facade's tables in the new database.

``facade_route`` and ``facade_route_audit`` come from revision ``0002_facade_routes``;
revision ``0004_facade_shadow`` adds route options, the cutover gate's evidence in the audit
and ``facade_shadow_result`` (one row per shadow or A/A comparison, pruned to a window);
revision ``0010_facade_lag_samples`` adds ``facade_lag_sample`` (the end-to-end lag as the
facade measured it, one row per sampling interval, pruned to the last hours).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Double,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    false,
    text,
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
    Column("options", Text, nullable=False, server_default=text("'{}'")),
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
    Column("options", Text, nullable=False, server_default=text("'{}'")),
    Column("forced", Boolean, nullable=False, server_default=false()),
    Column("gate", Text, nullable=True),
    PrimaryKeyConstraint("id", name="pk_facade_route_audit"),
    Index("ix_facade_route_audit_route", "method", "pattern"),
)

facade_shadow_result = Table(
    "facade_shadow_result",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), nullable=False, autoincrement=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("method", String(16), nullable=False),
    Column("pattern", String(255), nullable=False),
    Column("kind", String(8), nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("path", Text, nullable=False),
    Column("legacy_status", Integer, nullable=False),
    Column("new_status", Integer, nullable=True),
    Column("legacy_ms", Double, nullable=False),
    Column("new_ms", Double, nullable=True),
    Column("diff", Text, nullable=True),
    PrimaryKeyConstraint("id", name="pk_facade_shadow_result"),
    Index("ix_facade_shadow_result_route", "method", "pattern", "kind", "id"),
    Index("ix_facade_shadow_result_at", "at"),
)

facade_lag_sample = Table(
    "facade_lag_sample",
    metadata,
    Column("at", DateTime(timezone=True), nullable=False),
    Column("lag_seconds", Double, nullable=True),
    PrimaryKeyConstraint("at", name="pk_facade_lag_sample"),
)
