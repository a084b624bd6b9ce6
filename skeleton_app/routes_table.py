"""The route table: which system answers each route, stored in the new database.

Every facade worker reads the table through its own cached snapshot, reloaded at most every
``refresh_interval`` seconds, so a change made by ``strangler routes set`` (from any process)
takes effect in every worker within that interval, without a restart. A worker that cannot
read the table keeps its last snapshot; one that never could serves everything from legacy.
"""

from __future__ import annotations

import builtins
import logging
import threading
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, create_engine, insert, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from skeleton_app.modes import Mode
from skeleton_app.new_routes import NEW_HANDLERS
from skeleton_app.patterns import (
    PatternMatcher,
    RouteError,
    RouteKey,
    normalise_method,
    validate_pattern,
)
from skeleton_app.schema import facade_route, facade_route_audit

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Route:
    """A route and how it is served; ``updated_at`` is None for a route never set."""

    method: str
    pattern: str
    mode: Mode
    updated_at: datetime | None = None
    updated_by: str | None = None
    reason: str | None = None


@dataclass(frozen=True)
class AuditEntry:
    """One change of a route's mode; ``from_mode`` is None when the route was first set."""

    id: int
    at: datetime
    method: str
    pattern: str
    from_mode: str | None
    to_mode: str
    by: str
    reason: str


@dataclass(frozen=True)
class RouteMatch:
    """The route a request matched, the mode it is served in and its path arguments."""

    method: str
    pattern: str
    mode: Mode
    args: Mapping[str, Any]


class _Snapshot:
    def __init__(self, modes: Mapping[RouteKey, Mode], loaded_at: float) -> None:
        self.modes = modes
        self.loaded_at = loaded_at
        self.matcher = PatternMatcher(modes)


def utc_now() -> datetime:
    return datetime.now(UTC)


class RouteTable:
    """Reads and changes the route table (tables ``facade_route``, ``facade_route_audit``).

    ``movable`` are the routes the new system can serve (default: ``NEW_HANDLERS``); only
    those may be set to a mode other than legacy. ``clock`` (monotonic seconds) and ``now``
    (timestamps written) are injectable for tests. Safe to share between threads.
    """

    def __init__(
        self,
        db: str | Engine,
        *,
        refresh_interval: float = 1.0,
        movable: Collection[RouteKey] | None = None,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = utc_now,
    ) -> None:
        self._owns_engine = isinstance(db, str)
        self._engine = create_engine(db, pool_pre_ping=True) if isinstance(db, str) else db
        self._refresh_interval = refresh_interval
        self._movable = frozenset(NEW_HANDLERS if movable is None else movable)
        self._clock = clock
        self._now = now
        self._snapshot: _Snapshot | None = None
        self._refresh_lock = threading.Lock()

    # -- reading -----------------------------------------------------------------------

    def list(self) -> list[Route]:
        """Every stored route, plus each movable route never set (as legacy), sorted."""
        with self._engine.connect() as conn:
            rows = conn.execute(select(facade_route)).mappings().all()
        routes = {
            (row["method"], row["pattern"]): Route(
                method=row["method"],
                pattern=row["pattern"],
                mode=self._stored_mode(row["mode"], row["method"], row["pattern"]),
                updated_at=_aware(row["updated_at"]),
                updated_by=row["updated_by"],
                reason=row["reason"],
            )
            for row in rows
        }
        for method, pattern in self._movable:
            routes.setdefault((method, pattern), Route(method, pattern, Mode.LEGACY))
        return sorted(routes.values(), key=lambda r: (r.pattern, r.method))

    def history(
        self, method: str | None = None, pattern: str | None = None
    ) -> builtins.list[AuditEntry]:
        """Audit entries, oldest first, optionally for one route only."""
        query = select(facade_route_audit).order_by(facade_route_audit.c.id)
        if method is not None:
            query = query.where(facade_route_audit.c.method == normalise_method(method))
        if pattern is not None:
            query = query.where(facade_route_audit.c.pattern == pattern)
        with self._engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
        return [
            AuditEntry(
                id=row["id"],
                at=_aware(row["at"]),
                method=row["method"],
                pattern=row["pattern"],
                from_mode=row["from_mode"],
                to_mode=row["to_mode"],
                by=row["by"],
                reason=row["reason"],
            )
            for row in rows
        ]

    def match(self, method: str, path: str) -> RouteMatch | None:
        """The known route ``METHOD path`` matches (cached), or None: then it is legacy."""
        snapshot = self._current_snapshot()
        if snapshot is None:
            return None
        found = snapshot.matcher.match(method, path)
        if found is None:
            return None
        mode = snapshot.modes.get((found.method, found.pattern), Mode.LEGACY)
        return RouteMatch(found.method, found.pattern, mode, found.args)

    def mode_for(self, method: str, path: str) -> Mode:
        """How ``METHOD path`` is served now (cached; legacy unless a route says otherwise)."""
        found = self.match(method, path)
        return Mode.LEGACY if found is None else found.mode

    # -- changing ----------------------------------------------------------------------

    def set(self, method: str, pattern: str, mode: Mode | str, by: str, reason: str = "") -> Route:
        """Set a route's mode and write an audit entry, in one transaction."""
        method = normalise_method(method)
        pattern = validate_pattern(pattern)
        new_mode = parse_mode(mode)
        by = by.strip()
        if not by:
            raise RouteError("who changes the route must be given (--by)")
        if new_mode is not Mode.LEGACY and (method, pattern) not in self._movable:
            movable = ", ".join(f"{m} {p}" for m, p in sorted(self._movable)) or "none"
            raise RouteError(
                f"{method} {pattern} cannot be served by the new system "
                f"(routes that can: {movable})"
            )
        try:
            route = self._write(method, pattern, new_mode, by, reason)
        except IntegrityError:
            route = self._write(method, pattern, new_mode, by, reason)
        self._snapshot = None
        return route

    def close(self) -> None:
        if self._owns_engine:
            self._engine.dispose()

    # -- internals ---------------------------------------------------------------------

    def _write(self, method: str, pattern: str, mode: Mode, by: str, reason: str) -> Route:
        at = self._now()
        key = (facade_route.c.method == method) & (facade_route.c.pattern == pattern)
        with self._engine.begin() as conn:
            previous = conn.execute(
                select(facade_route.c.mode).where(key).with_for_update()
            ).scalar_one_or_none()
            values = {"mode": mode.value, "updated_at": at, "updated_by": by, "reason": reason}
            if previous is None:
                conn.execute(insert(facade_route).values(method=method, pattern=pattern, **values))
            else:
                conn.execute(update(facade_route).where(key).values(**values))
            conn.execute(
                insert(facade_route_audit).values(
                    at=at,
                    method=method,
                    pattern=pattern,
                    from_mode=previous,
                    to_mode=mode.value,
                    by=by,
                    reason=reason,
                )
            )
        return Route(method, pattern, mode, at, by, reason)

    def _current_snapshot(self) -> _Snapshot | None:
        snapshot = self._snapshot
        now = self._clock()
        if snapshot is not None and now - snapshot.loaded_at < self._refresh_interval:
            return snapshot
        # One thread reloads; the others keep answering from the snapshot they have.
        if not self._refresh_lock.acquire(blocking=snapshot is None):
            return snapshot
        try:
            current = self._snapshot
            if current is not None and current is not snapshot:
                return current
            return self._reload(snapshot, now)
        finally:
            self._refresh_lock.release()

    def _reload(self, previous: _Snapshot | None, now: float) -> _Snapshot | None:
        try:
            with self._engine.connect() as conn:
                rows = conn.execute(
                    select(facade_route.c.method, facade_route.c.pattern, facade_route.c.mode)
                ).all()
        except SQLAlchemyError as exc:
            log.warning(
                "route table unreadable, %s: %s",
                "keeping the last snapshot" if previous else "serving everything from legacy",
                str(exc).splitlines()[0],
            )
            # Retry after another interval, not on every request.
            stale = _Snapshot(previous.modes if previous else {}, now)
            self._snapshot = stale
            return stale
        modes: dict[RouteKey, Mode] = {key: Mode.LEGACY for key in self._movable}
        for method, pattern, stored in rows:
            modes[(method, pattern)] = self._stored_mode(stored, method, pattern)
        snapshot = _Snapshot(modes, now)
        self._snapshot = snapshot
        return snapshot

    def _stored_mode(self, stored: str, method: str, pattern: str) -> Mode:
        try:
            mode = Mode(stored)
        except ValueError:
            log.warning("route %s %s has unknown mode %r: serving it from legacy",
                        method, pattern, stored)
            return Mode.LEGACY
        if mode is not Mode.LEGACY and (method, pattern) not in self._movable:
            log.warning("route %s %s is set to %s but the new system cannot serve it: "
                        "serving it from legacy", method, pattern, mode.value)
            return Mode.LEGACY
        return mode


def parse_mode(mode: Mode | str) -> Mode:
    try:
        return Mode(str(mode).strip().lower())
    except ValueError:
        known = ", ".join(m.value for m in Mode)
        raise RouteError(f"unknown mode {mode!r} (known: {known})") from None


def _aware(value: datetime) -> datetime:
    """Timestamps are written in UTC; SQLite hands them back without a zone."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
