"""``bridge status``: what the bridge holds and how far the relay got."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.engine import Engine

from legacy_bridge.capture import dialect_for
from legacy_bridge.change_log import check_installed, read_state
from legacy_bridge.database import make_engine
from legacy_bridge.registry import registered
from legacy_bridge.tables import change, snapshot_progress

THROUGHPUT_WINDOW_S = 60.0
RELAY_GONE_AFTER_S = 15.0
"""A relay not seen for this long is not running (it records itself every 5 s)."""


@dataclass(frozen=True)
class SnapshotState:
    table: str
    rows_read: int
    done: bool


@dataclass(frozen=True)
class BridgeStatus:
    """The bridge's state in one legacy database."""

    connector: str
    database: str
    install_id: str
    server_name: str
    tables: tuple[str, ...]
    pending: int
    """Changes the broker has not confirmed yet (not yet claimed, or claimed)."""
    oldest_pending_age_s: float | None
    last_confirmed_pos: int
    last_confirmed_at: datetime | None
    published_recently: int
    """Changes claimed in the last minute and confirmed since."""
    window_s: float = THROUGHPUT_WINDOW_S
    snapshots: tuple[SnapshotState, ...] = field(default=())
    relay_seen_age_s: float | None = None
    """Seconds since a running relay last recorded itself (None: never)."""

    @property
    def relay_running(self) -> bool:
        """A relay recorded itself within the last ``RELAY_GONE_AFTER_S`` seconds."""
        age = self.relay_seen_age_s
        return age is not None and age <= RELAY_GONE_AFTER_S

    def relay_line(self) -> str:
        age = self.relay_seen_age_s
        if age is None:
            return "not running (never seen: start 'strangler bridge run')"
        if self.relay_running:
            return f"running (last seen {age:.0f} s ago)"
        return f"not running (last seen {_duration(age)} ago: start 'strangler bridge run')"

    def snapshot_line(self) -> str:
        if not self.snapshots:
            return "none taken"
        return ", ".join(
            f"{s.table} {'done' if s.done else 'in progress'} ({s.rows_read} rows)"
            for s in self.snapshots
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "connector": self.connector,
            "database": self.database,
            "install_id": self.install_id,
            "server_name": self.server_name,
            "tables": list(self.tables),
            "pending": self.pending,
            "oldest_pending_age_s": self.oldest_pending_age_s,
            "last_confirmed_pos": self.last_confirmed_pos,
            "last_confirmed_at": None
            if self.last_confirmed_at is None
            else _utc(self.last_confirmed_at).isoformat(),
            "published_last_minute": self.published_recently,
            "throughput_per_s": round(self.published_recently / self.window_s, 2),
            "relay_running": self.relay_running,
            "relay_seen_age_s": self.relay_seen_age_s,
            "snapshots": [
                {"table": s.table, "rows_read": s.rows_read, "done": s.done} for s in self.snapshots
            ],
        }


def bridge_status(legacy_db: str | Engine, now: datetime | None = None) -> BridgeStatus:
    """Read the bridge's state; :class:`BridgeNotInstalled` when there is none."""
    now = now or datetime.now(UTC)
    engine, owned = make_engine(legacy_db)
    try:
        with engine.connect() as conn:
            dialect = dialect_for(conn)
            schema = dialect.schema_name(conn)
            check_installed(conn, schema)
            state = read_state(conn)
            unconfirmed = or_(change.c.pos.is_(None), change.c.pos > state.last_confirmed_pos)
            pending, oldest = conn.execute(
                select(func.count(), func.min(change.c.captured_at)).where(unconfirmed)
            ).one()
            since = now - timedelta(seconds=THROUGHPUT_WINDOW_S)
            if conn.dialect.name != "postgresql":
                since = since.replace(tzinfo=None)
            recent = conn.execute(
                select(func.count()).where(
                    change.c.claimed_at >= since, change.c.pos <= state.last_confirmed_pos
                )
            ).scalar_one()
            snapshots = tuple(
                SnapshotState(str(r.table_name), int(r.rows_read), bool(r.done))
                for r in conn.execute(
                    select(snapshot_progress).order_by(snapshot_progress.c.table_name)
                )
            )
            return BridgeStatus(
                connector=dialect.connector,
                database=dialect.database_name(conn),
                install_id=state.install_id,
                server_name=state.server_name,
                tables=tuple(r.table.name for r in registered(conn, schema)),
                pending=int(pending),
                oldest_pending_age_s=None
                if oldest is None
                else max(0.0, (now - _utc(oldest)).total_seconds()),
                last_confirmed_pos=state.last_confirmed_pos,
                last_confirmed_at=state.last_confirmed_at,
                published_recently=int(recent),
                snapshots=snapshots,
                relay_seen_age_s=None
                if state.relay_seen_at is None
                else max(0.0, (now - _utc(state.relay_seen_at)).total_seconds()),
            )
    finally:
        if owned:
            engine.dispose()


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
