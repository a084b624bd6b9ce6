"""The end-to-end lag: how current the new domain is, per legacy source (table
``consumer_progress``).

For each source (``<server name>/<database>``) the consumer stores, in the transaction
of each batch, the newest legacy commit time it has seen (a change's ``source.ts_ms``,
a heartbeat's ``last_commit_ts_ms``), the time of the newest heartbeat it has
processed (the bridge sends one when it has nothing to publish), and when it applied
them. Everything before a processed message is applied (one queue, in order), so the
read model reflects legacy as of the newer of the two times; the end-to-end lag is
how long ago that was.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.engine import Connection

from new_domain.adapters import orm
from new_domain.adapters.bulk import insert_rows


@dataclass(frozen=True)
class Progress:
    source: str
    newest_commit_at: datetime | None
    heartbeat_at: datetime | None
    applied_at: datetime

    @property
    def current_as_of(self) -> datetime | None:
        """Legacy's state the read model is known to reflect."""
        times = [t for t in (self.newest_commit_at, self.heartbeat_at) if t is not None]
        return max(times) if times else None

    def lag_seconds(self, now: datetime) -> float | None:
        as_of = self.current_as_of
        return None if as_of is None else max(0.0, (now - as_of).total_seconds())


class AbstractProgress:
    """How current the stream is, per source: the newest legacy commit time and heartbeat
    time seen (ms since the epoch), kept in memory (``seen``) until an implementation
    stores them."""

    def __init__(self) -> None:
        self.seen: dict[str, tuple[int | None, int | None]] = {}

    def observe(
        self, source: str, *, commit_ms: int | None = None, heartbeat_ms: int | None = None
    ) -> None:
        """Note a legacy commit time and/or a heartbeat time seen (the newest wins)."""
        commit, heartbeat = self.seen.get(source, (None, None))
        self.seen[source] = (_newest(commit, commit_ms), _newest(heartbeat, heartbeat_ms))

    def sources(self) -> set[str]:
        """Every source known: observed here, or stored."""
        return set(self.seen)


class SqlAlchemyProgress(AbstractProgress):
    """Observations are kept in memory and merged into the table before the commit."""

    def __init__(self, connection: Connection) -> None:
        super().__init__()
        self.connection = connection

    def sources(self) -> set[str]:
        stored = self.connection.scalars(select(orm.consumer_progress.c.source))
        return super().sources() | set(stored)

    def flush(self) -> None:
        """Merge what was observed into the table: the newer time wins."""
        if not self.seen:
            return
        now = datetime.now(UTC)
        rows = [
            {
                "source": source,
                "newest_commit_at": _moment(commit_ms),
                "heartbeat_at": _moment(heartbeat_ms),
                "applied_at": now,
            }
            for source, (commit_ms, heartbeat_ms) in sorted(self.seen.items())
        ]
        insert_rows(
            self.connection,
            orm.consumer_progress,
            rows,
            key=["source"],
            on_conflict="update",
            keep_greatest=["newest_commit_at", "heartbeat_at"],
        )
        self.seen.clear()


def read_progress(connection: Connection) -> list[Progress]:
    t = orm.consumer_progress
    rows = connection.execute(
        select(t.c.source, t.c.newest_commit_at, t.c.heartbeat_at, t.c.applied_at).order_by(
            t.c.source
        )
    )
    return [
        Progress(source, _aware(commit), _aware(heartbeat), _aware(applied) or datetime.now(UTC))
        for source, commit, heartbeat, applied in rows
    ]


def lag_seconds(connection: Connection, now: datetime | None = None) -> float | None:
    """How far the read model is behind legacy: the largest lag over sources; None when
    nothing is recorded yet."""
    moment = now or datetime.now(UTC)
    lags = [lag for p in read_progress(connection) if (lag := p.lag_seconds(moment)) is not None]
    return max(lags) if lags else None


def _newest(a: int | None, b: int | None) -> int | None:
    if a is None:
        return b
    return a if b is None else max(a, b)


def _moment(ms: int | None) -> datetime | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, UTC)


def _aware(moment: datetime | None) -> datetime | None:
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)
