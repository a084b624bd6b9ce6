"""The bridge's own tables, installed next to the legacy tables.

``strangler_change`` holds one row per captured row change, written by the capture
triggers; ``pos`` stays NULL until the relay assigns the row its publication position.
``strangler_relay_state`` holds one row: the install's id, the position up to which the
broker confirmed everything, and the server name stamped on events.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB

CHANGE_TABLE = "strangler_change"
STATE_TABLE = "strangler_relay_state"
PREFIX = "strangler_"
"""Every object the bridge installs (tables, triggers, functions) starts with this."""

metadata = MetaData()

_json = JSON().with_variant(JSONB(), "postgresql")
_id = BigInteger().with_variant(Integer(), "sqlite")  # SQLite: an INTEGER PRIMARY KEY rowid

change = Table(
    CHANGE_TABLE,
    metadata,
    Column("change_id", _id, primary_key=True, autoincrement=True),
    Column("txid", BigInteger, nullable=True),
    Column("table_name", String(128), nullable=False),
    Column("op", String(1), nullable=False),
    Column("pk", _json, nullable=False),
    Column("before", _json, nullable=True),
    Column("after", _json, nullable=True),
    Column("captured_at", DateTime(timezone=True), nullable=False),
    Column("pos", BigInteger, nullable=True),
    Index("ix_strangler_change_pos", "pos", unique=True),
    Index(
        "ix_strangler_change_pending",
        "change_id",
        postgresql_where=text("pos IS NULL"),
        sqlite_where=text("pos IS NULL"),
    ),
    # never reuse an id, even after the newest rows were deleted: ids name messages
    sqlite_autoincrement=True,
)

relay_state = Table(
    STATE_TABLE,
    metadata,
    Column("install_id", String(36), primary_key=True),
    Column("last_confirmed_pos", BigInteger, nullable=False, default=0),
    Column("server_name", String(200), nullable=False),
)
