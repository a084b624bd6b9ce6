"""Back-sync's tables in the legacy database.

- ``strangler_origin``: the origin marker (docs/write-path.md). The bridge creates and
  captures it; back-sync only inserts into it, one row first in every legacy transaction
  it commits. Declared here with the same columns so that ``backsync install`` can create
  it where the bridge is not installed (Debezium users).
- ``strangler_backsync_applied``: one row per decision (or fence) written: a redelivered
  one is acknowledged without writing anything.
- ``strangler_backsync_position``: one row per back-sync queue: how many decisions and
  fences it wrote, the last decision, when the new system took it and when legacy
  committed it (the lag).
- ``strangler_backsync_lane``: the same counts and times for the decisions each lane
  wrote (one row per queue and lane): the lanes' transactions each update their own row,
  so they do not wait for one another's commit on the queue's row. A queue's position is
  its row plus its lanes' (:func:`backsync.status.read_status`).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Integer,
    MetaData,
    String,
    Table,
    func,
)
from sqlalchemy.dialects import mysql

ORIGIN_TABLE = "strangler_origin"
APPLIED_TABLE = "strangler_backsync_applied"
POSITION_TABLE = "strangler_backsync_position"
LANE_TABLE = "strangler_backsync_lane"

DECISION = "decision"
FENCE = "fence"

metadata = MetaData()

_time = DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")

origin = Table(
    ORIGIN_TABLE,
    metadata,
    Column("origin_id", Integer, primary_key=True, autoincrement=True),
    Column("kind", String(16), nullable=False),
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

applied = Table(
    APPLIED_TABLE,
    metadata,
    Column("decision_id", String(64), primary_key=True),  # a fence: its event's message id
    Column("kind", String(16), nullable=False),
    Column("applied_at", _time, nullable=False),
    mysql_charset="utf8mb4",
    mariadb_charset="utf8mb4",
)

position = Table(
    POSITION_TABLE,
    metadata,
    Column("queue", String(200), primary_key=True),
    Column("decisions", BigInteger, nullable=False),
    Column("fences", BigInteger, nullable=False),
    Column("last_decision_id", String(64), nullable=True),
    Column("last_occurred_at", _time, nullable=True),
    Column("last_written_at", _time, nullable=True),
    mysql_charset="utf8mb4",
    mariadb_charset="utf8mb4",
)

lane_position = Table(
    LANE_TABLE,
    metadata,
    Column("queue", String(200), primary_key=True),
    Column("lane", Integer, primary_key=True, autoincrement=False),
    Column("decisions", BigInteger, nullable=False),
    Column("last_decision_id", String(64), nullable=True),
    Column("last_occurred_at", _time, nullable=True),
    Column("last_written_at", _time, nullable=True),
    mysql_charset="utf8mb4",
    mariadb_charset="utf8mb4",
)

OWN_TABLES = (applied, position, lane_position)
"""The tables ``backsync install`` creates besides the origin marker."""
