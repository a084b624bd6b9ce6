"""Shadow and A/A comparison results in the new database, shared by every worker and the CLI.

Each facade worker's shadow thread writes its results in batches; anyone (another worker,
``strangler routes list``, the admin API, the cutover gate) reads parity from the same rows.
Rows older than the window are pruned, and per route only the newest ``max_samples`` rows
count (and are kept).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, and_, delete, func, insert, not_, or_, select

from skeleton_app.schema import facade_shadow_result

RouteKey = tuple[str, str]

MATCH, MISMATCH, ERROR = "match", "mismatch", "error"
SHADOW, AA = "shadow", "aa"
"""Kinds: ``shadow`` compares legacy with new, ``aa`` compares legacy with itself."""


@dataclass(frozen=True)
class ShadowResult:
    """One comparison. Times in milliseconds; ``new_*`` is the candidate's (legacy in A/A)."""

    at: datetime
    method: str
    pattern: str
    kind: str
    outcome: str
    path: str
    legacy_status: int
    legacy_ms: float
    new_status: int | None = None
    new_ms: float | None = None
    diff: str | None = None


@dataclass(frozen=True)
class StoredResult(ShadowResult):
    id: int = 0


@dataclass(frozen=True)
class Parity:
    """Comparison counts of one route and kind over the window."""

    matches: int = 0
    mismatches: int = 0
    errors: int = 0

    @property
    def samples(self) -> int:
        return self.matches + self.mismatches + self.errors

    @property
    def percent(self) -> float | None:
        """Matches as a percentage of all samples (errors count against it); None if none."""
        return None if self.samples == 0 else 100.0 * self.matches / self.samples

    def describe(self) -> str:
        if self.percent is None:
            return "no samples"
        return f"{_percent(self.percent)} over {self.samples} samples"

    def to_dict(self) -> dict[str, float | int | None]:
        return {
            "matches": self.matches,
            "mismatches": self.mismatches,
            "errors": self.errors,
            "samples": self.samples,
            "percent": None if self.percent is None else round(self.percent, 4),
        }


def _percent(value: float) -> str:
    """Floor to two decimals, so 99.899% never shows as a passing 99.90%."""
    return f"{int(value * 100) / 100:.2f}%"


@dataclass(frozen=True)
class Window:
    """Which results count: newer than ``seconds`` and, per route, the newest ``max_samples``."""

    seconds: float = 86400.0
    max_samples: int = 10000

    def since(self, now: datetime) -> datetime:
        return now - timedelta(seconds=self.seconds)

    def describe(self) -> str:
        hours = self.seconds / 3600
        span = f"{hours:g} h" if hours >= 1 else f"{self.seconds:g} s"
        return f"the last {span} (newest {self.max_samples} samples)"


class ShadowResults:
    """Reads and writes ``facade_shadow_result``; safe to share between threads."""

    def __init__(self, engine: Engine, window: Window | None = None) -> None:
        self._engine = engine
        self.window = window or Window()

    def write(self, results: Sequence[ShadowResult]) -> None:
        """Insert a batch in one transaction."""
        if not results:
            return
        rows = [
            {
                "at": r.at,
                "method": r.method,
                "pattern": r.pattern,
                "kind": r.kind,
                "outcome": r.outcome,
                "path": _storable(r.path),
                "legacy_status": r.legacy_status,
                "new_status": r.new_status,
                "legacy_ms": r.legacy_ms,
                "new_ms": r.new_ms,
                "diff": None if r.diff is None else _storable(r.diff),
            }
            for r in results
        ]
        with self._engine.begin() as conn:
            conn.execute(insert(facade_shadow_result), rows)

    def parity(
        self,
        method: str,
        pattern: str,
        kind: str = SHADOW,
        now: datetime | None = None,
        after: datetime | None = None,
    ) -> Parity:
        """One route's parity in the window; with ``after``, only results newer than it."""
        return self.parity_by_route(kind, now, routes=[(method, pattern)], after=after).get(
            (method, pattern), Parity()
        )

    def parity_by_route(
        self,
        kind: str = SHADOW,
        now: datetime | None = None,
        routes: Iterable[RouteKey] | None = None,
        after: datetime | None = None,
        fresh_since: Mapping[RouteKey, datetime] | None = None,
    ) -> dict[RouteKey, Parity]:
        """Parity of every route with results in the window (or of ``routes`` only);
        with ``after``, only results newer than it; with ``fresh_since``, a route's
        results only when newer than its time there (its last move back to legacy)."""
        t = facade_shadow_result
        since = self.window.since(now or datetime.now(UTC))
        rank = (
            func.row_number()
            .over(partition_by=(t.c.method, t.c.pattern), order_by=t.c.id.desc())
            .label("rank")
        )
        conditions = [t.c.kind == kind, t.c.at >= since]
        if after is not None:
            conditions.append(t.c.at > after)
        for (method, pattern), since_move in (fresh_since or {}).items():
            conditions.append(
                not_(and_(t.c.method == method, t.c.pattern == pattern, t.c.at <= since_move))
            )
        wanted = list(routes) if routes is not None else None
        if wanted is not None:
            if not wanted:
                return {}
            conditions.append(or_(*[and_(t.c.method == m, t.c.pattern == p) for m, p in wanted]))
        recent = select(t.c.method, t.c.pattern, t.c.outcome, rank).where(*conditions).subquery()
        query = (
            select(recent.c.method, recent.c.pattern, recent.c.outcome, func.count())
            .where(recent.c.rank <= self.window.max_samples)
            .group_by(recent.c.method, recent.c.pattern, recent.c.outcome)
        )
        counts: dict[RouteKey, dict[str, int]] = {}
        with self._engine.connect() as conn:
            for method, pattern, outcome, count in conn.execute(query):
                counts.setdefault((method, pattern), {})[outcome] = int(count)
        return {
            key: Parity(c.get(MATCH, 0), c.get(MISMATCH, 0), c.get(ERROR, 0))
            for key, c in counts.items()
        }

    def recent(
        self,
        method: str,
        pattern: str,
        kind: str = SHADOW,
        outcomes: Sequence[str] = (MISMATCH, ERROR),
        limit: int = 10,
    ) -> list[StoredResult]:
        """The newest results of a route with one of ``outcomes``, newest first."""
        t = facade_shadow_result
        query = (
            select(t)
            .where(
                t.c.method == method,
                t.c.pattern == pattern,
                t.c.kind == kind,
                t.c.outcome.in_(list(outcomes)),
            )
            .order_by(t.c.id.desc())
            .limit(limit)
        )
        with self._engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
        return [
            StoredResult(
                id=row["id"],
                at=_aware(row["at"]),
                method=row["method"],
                pattern=row["pattern"],
                kind=row["kind"],
                outcome=row["outcome"],
                path=row["path"],
                legacy_status=row["legacy_status"],
                legacy_ms=row["legacy_ms"],
                new_status=row["new_status"],
                new_ms=row["new_ms"],
                diff=row["diff"],
            )
            for row in rows
        ]

    def prune(self, now: datetime | None = None) -> int:
        """Delete rows outside the window; returns how many."""
        t = facade_shadow_result
        since = self.window.since(now or datetime.now(UTC))
        with self._engine.begin() as conn:
            deleted = conn.execute(delete(t).where(t.c.at < since)).rowcount or 0
            keys = conn.execute(select(t.c.method, t.c.pattern, t.c.kind).distinct()).all()
            for method, pattern, kind in keys:
                route = (t.c.method == method, t.c.pattern == pattern, t.c.kind == kind)
                oldest_kept = conn.execute(
                    select(t.c.id)
                    .where(*route)
                    .order_by(t.c.id.desc())
                    .offset(self.window.max_samples - 1)
                    .limit(1)
                ).scalar_one_or_none()
                if oldest_kept is not None:
                    deleted += (
                        conn.execute(delete(t).where(*route, t.c.id < oldest_kept)).rowcount or 0
                    )
        return deleted


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _storable(text: str) -> str:
    """Text every database takes: PostgreSQL refuses NUL in text (and the whole batch)."""
    return text.replace("\x00", "\\x00")
