"""The bridge's own tables, installed next to the legacy tables.

- ``strangler_change``: one row per captured row change, written by the capture triggers,
  or per row read by a snapshot (op ``r``). ``pos`` stays NULL until the relay claims the
  row; the claim also stores the row's place in its legacy transaction (``tx_*``).
- ``strangler_relay_state``: one row: the install's id, the position up to which the
  broker confirmed everything, the server name stamped on events, what heartbeats and
  ``bridge status`` report, and whether the capture trigger notifies the relay
  (``install --notify``, PostgreSQL; see :mod:`legacy_bridge.wakeup`).
- ``strangler_capture``: one row per captured table: its primary key and the column
  signature its triggers were built for (to notice added or dropped columns).
- ``strangler_snapshot_progress``: one row per table being (or done being) snapshotted.
- ``strangler_origin``: the origin marker (see docs/write-path.md). Back-sync inserts one
  row first in every legacy transaction it commits (``kind`` ``decision`` or ``fence``);
  it is captured like the legacy tables, always, so a marker travels with its
  transaction's changes. The bridge only creates and captures it.

Each dialect may add its own helper objects (all named ``strangler_...``).
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    func,
    text,
)
from sqlalchemy.dialects import mysql
from sqlalchemy.dialects.postgresql import JSONB

CHANGE_TABLE = "strangler_change"
STATE_TABLE = "strangler_relay_state"
CAPTURE_TABLE = "strangler_capture"
PROGRESS_TABLE = "strangler_snapshot_progress"
ORIGIN_TABLE = "strangler_origin"
PREFIX = "strangler_"
"""Every object the bridge installs (tables, triggers, functions) starts with this."""
POS_INDEX = "ix_strangler_change_pos"

metadata = MetaData()

_json = JSON().with_variant(JSONB(), "postgresql")
_id = BigInteger().with_variant(Integer(), "sqlite")  # SQLite: an INTEGER PRIMARY KEY rowid
_time = DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")

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
    Column("captured_at", _time, nullable=False),
    Column("pos", BigInteger, nullable=True),
    Column("tx_order", Integer, nullable=True),
    Column("tx_table_order", Integer, nullable=True),
    Column("tx_last", Boolean, nullable=True),
    Column("snapshot_last", Boolean, nullable=True),
    Column("claimed_at", _time, nullable=True),
    # partial on PostgreSQL: a pending row (NULL pos) costs no entry here, only in the
    # pending indexes; every query on pos implies pos IS NOT NULL (max() included)
    Index(POS_INDEX, "pos", unique=True, postgresql_where=text("pos IS NOT NULL")),
    # never reuse an id, even after the newest rows were deleted: ids name messages
    sqlite_autoincrement=True,
    mysql_charset="utf8mb4",
    mariadb_charset="utf8mb4",
)

ADDED_CHANGE_COLUMNS = ("tx_order", "tx_table_order", "tx_last", "snapshot_last", "claimed_at")
"""Columns an install made by bridge 0.1 lacks; ``install`` adds them."""

relay_state = Table(
    STATE_TABLE,
    metadata,
    Column("install_id", String(36), primary_key=True),
    Column("last_confirmed_pos", BigInteger, nullable=False, default=0),
    Column("server_name", String(200), nullable=False),
    Column("last_confirmed_at", _time, nullable=True),
    Column("last_captured_at", _time, nullable=True),
    Column("notify", Boolean, nullable=True),  # NULL (an upgraded install): False
    Column("relay_seen_at", _time, nullable=True),  # a running relay writes it every few s
    mysql_charset="utf8mb4",
    mariadb_charset="utf8mb4",
)

ADDED_STATE_COLUMNS = ("last_confirmed_at", "last_captured_at", "notify", "relay_seen_at")

capture = Table(
    CAPTURE_TABLE,
    metadata,
    Column("table_name", String(128), primary_key=True),
    Column("ordinal", Integer, nullable=False),
    Column("primary_key", Text, nullable=False),  # JSON list of column names
    Column("signature", Text, nullable=False),  # JSON list of [column, kind]
    Column("installed_at", _time, nullable=False),
    mysql_charset="utf8mb4",
    mariadb_charset="utf8mb4",
)

snapshot_progress = Table(
    PROGRESS_TABLE,
    metadata,
    Column("table_name", String(128), primary_key=True),
    Column("next_from", Text, nullable=True),  # JSON list: the next chunk's first key
    Column("rows_read", BigInteger, nullable=False, default=0),
    Column("done", Boolean, nullable=False, default=False),
    Column("started_at", _time, nullable=False),
    Column("updated_at", _time, nullable=False),
    mysql_charset="utf8mb4",
    mariadb_charset="utf8mb4",
)

origin = Table(
    ORIGIN_TABLE,
    metadata,
    Column("origin_id", Integer, primary_key=True, autoincrement=True),
    Column("kind", String(16), nullable=False),  # decision | fence
    Column("group_name", String(64), nullable=False),
    Column("epoch", Integer, nullable=True),
    Column("decision_id", String(64), nullable=True),
    Column("route", String(64), nullable=True),
    Column("sku", String(255), nullable=True),
    Column("summary", String(1000), nullable=True),
    Column("written_at", _time, nullable=False, server_default=func.current_timestamp()),
    sqlite_autoincrement=True,
    mysql_charset="utf8mb4",
    mariadb_charset="utf8mb4",
)

BRIDGE_TABLES = (change, relay_state, capture, snapshot_progress, origin)
"""Created by install (in this order) and dropped by uninstall."""

ALWAYS_CAPTURED = (ORIGIN_TABLE,)
"""The bridge's tables captured like legacy tables, whatever ``--tables`` names."""
