"""The route table: which system answers each route, stored in the new database.

Every facade worker reads the table through its own cached snapshot, reloaded at most every
``refresh_interval`` seconds, so a change made by ``strangler routes set`` (from any process)
takes effect in every worker within that interval, without a restart. A worker that cannot
read the table keeps its last snapshot; one that never could serves everything from legacy.

Reloads never hold up requests: a reload runs on a thread of its own, and the request that
found the snapshot stale waits for it at most ``refresh_wait`` seconds (every other request
meanwhile answers from the snapshot it has). A new database that hangs, or a lock on
``facade_route`` (a migration takes one), therefore costs requests nothing but fresh routes.
On PostgreSQL the table's engine bounds connecting, statements, lock waits and unanswered
TCP data (see ``route_table_engine``), so a reload against a server that is gone, slow or
locked gives up and is retried. A server whose host still acknowledges the bytes but never
answers on an open connection holds that one reload until it answers; the last known
table serves meanwhile.
"""

from __future__ import annotations

import builtins
import itertools
import logging
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from sqlalchemy import Engine, create_engine, delete, func, insert, or_, select, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from new_domain import ReadModel
from skeleton_app.errors import printable
from skeleton_app.gate import CutoverGate, GateVerdict
from skeleton_app.modes import LEGACY, Mode, RouteMode
from skeleton_app.new_routes import NEW_HANDLERS, WRITE_GROUPS, WriteGroup
from skeleton_app.patterns import (
    PatternMatcher,
    RouteError,
    RouteKey,
    has_control_characters,
    normalise_method,
    validate_pattern,
)
from skeleton_app.route_options import DEFAULT_OPTIONS, RouteOptions
from skeleton_app.schema import facade_route, facade_route_audit
from skeleton_app.shadow_results import Parity, ShadowResults
from skeleton_app.write_path import Ownership, move_ownership, read_ownership

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Route:
    """A route and how it is served; ``updated_at`` is None for a route never set.

    ``percent`` is the canary share (only in ``canary`` mode); ``setting`` is the mode as
    text (``canary 10``).
    """

    method: str
    pattern: str
    mode: Mode
    updated_at: datetime | None = None
    updated_by: str | None = None
    reason: str | None = None
    percent: float | None = None
    options: RouteOptions = DEFAULT_OPTIONS
    group: str | None = None
    """The write group the route belongs to (it moves only with its group)."""

    @property
    def setting(self) -> str:
        return str(RouteMode(self.mode, self.percent))


@dataclass(frozen=True)
class AuditEntry:
    """One change of a route; ``from_mode`` is None when the route was first set.

    Modes are text (``canary 10``). ``options`` are the route's options after the change;
    ``gate`` is the cutover gate's evidence when the change went to ``new``, and ``forced``
    says the gate refused and ``--force`` overrode it.
    """

    id: int
    at: datetime
    method: str
    pattern: str
    from_mode: str | None
    to_mode: str
    by: str
    reason: str
    options: RouteOptions = DEFAULT_OPTIONS
    forced: bool = False
    gate: str | None = None


@dataclass(frozen=True)
class RouteMatch:
    """The route a request matched, how it is served and its path arguments."""

    method: str
    pattern: str
    mode: Mode
    args: Mapping[str, Any]
    percent: float | None = None
    options: RouteOptions = DEFAULT_OPTIONS
    group: str | None = None
    ownership: Ownership | None = None
    """For a route of a write group: the group's ownership as last read (None: never read,
    the route table could not be read yet)."""


@dataclass(frozen=True)
class Change:
    """What one change of the route table set: one route, or every route of a write group
    (``group``) with the group's ``ownership`` after the move. ``gate`` is the cutover
    gate's evidence and ``forced`` says ``--force`` overrode it."""

    routes: tuple[Route, ...]
    group: str | None = None
    ownership: Ownership | None = None
    gate: str | None = None
    forced: bool = False


MAX_BY = 128
"""Longest ``by`` (who acted) kept in the audit."""

MAX_REASON = 1000
"""Longest ``reason`` kept in the audit."""


def checked_text(name: str, value: str, limit: int) -> str:
    """``value`` if it fits the audit (at most ``limit`` characters, no control characters:
    a CR, LF or escape code would forge lines where it is printed), else RouteError."""
    if len(value) > limit:
        raise RouteError(f"{name} is longer than {limit} characters")
    if has_control_characters(value):
        raise RouteError(f"{name} must not hold control characters (NUL, CR, LF, ESC ...)")
    return value


DELETED = "deleted"
"""``to_mode`` of the audit entry of a deleted route."""


class RouteNotFound(RouteError):
    """No such route is stored."""


class UnknownRoute(RouteNotFound):
    """A route pattern the table does not know (neither stored, movable nor audited)."""


class CutoverRefused(RouteError):
    """The cutover gate refused a move to ``new``."""

    def __init__(self, message: str, verdict: GateVerdict) -> None:
        super().__init__(message)
        self.verdict = verdict


@dataclass(frozen=True)
class Routing:
    """Who serves what, as read at one moment (:meth:`RouteTable.read_routing`): every
    route's mode (never-set movable routes as legacy), the write groups' ownership, the
    write group of each of their routes, and the matcher the facade's workers build from
    the same routes."""

    modes: Mapping[RouteKey, Mode]
    ownership: Mapping[str, Ownership]
    group_of: Mapping[RouteKey, str]
    matcher: PatternMatcher


@dataclass(frozen=True)
class _State:
    mode: RouteMode
    options: RouteOptions


class _Snapshot:
    def __init__(
        self,
        states: Mapping[RouteKey, _State],
        loaded_at: float,
        ticket: int = 0,
        ownership: Mapping[str, Ownership] | None = None,
    ) -> None:
        self.states = states
        self.loaded_at = loaded_at
        self.ticket = ticket
        self.ownership: Mapping[str, Ownership] = ownership or {}
        self.matcher = PatternMatcher(states)


def utc_now() -> datetime:
    return datetime.now(UTC)


STATEMENT_TIMEOUT_S = 5.0
"""Seconds a statement on the route table's engine may run (PostgreSQL) before it fails."""


def route_table_engine(url: str) -> Engine:
    """An engine for the route table (and the shadow results next to it).

    On PostgreSQL every wait is bounded: connecting (2 s, libpq's minimum), statements
    (``statement_timeout``), lock waits (``lock_timeout``, so a migration's ``LOCK TABLE``
    fails a reload instead of queueing it), a pooled connection (``pool_timeout``) and
    data the server does not acknowledge (``tcp_user_timeout`` and keepalives, so a
    server that vanished fails the query instead of hanging it).
    """
    if make_url(url).get_backend_name() != "postgresql":
        return create_engine(url, pool_pre_ping=True)
    ms = round(STATEMENT_TIMEOUT_S * 1000)
    return create_engine(
        url,
        pool_pre_ping=True,
        pool_timeout=STATEMENT_TIMEOUT_S,
        connect_args={
            "connect_timeout": 2,
            "options": f"-c statement_timeout={ms} -c lock_timeout={ms // 2}",
            "tcp_user_timeout": ms,
            "keepalives": 1,
            "keepalives_idle": 5,
            "keepalives_interval": 2,
            "keepalives_count": 2,
        },
    )


class RouteTable:
    """Reads and changes the route table (tables ``facade_route``, ``facade_route_audit``).

    ``movable`` are the routes the new system can serve (default: ``NEW_HANDLERS``), and
    every route of the write ``groups`` (default: ``WRITE_GROUPS``); only those may be set
    to ``shadow``, ``canary`` or ``new`` (``legacy`` and ``aa`` suit any other route).
    With a ``gate``, a move that lets new answer clients is refused unless the route's
    shadow parity passes it (``force=True`` overrides, and the audit says so).

    A route of a write group never moves alone: setting it (or rolling it back) moves the
    whole group in one transaction, every route's row and audit entry and the group's
    ownership (``write_ownership``, with ``OwnershipMoved`` in the outbox); ``aa`` is
    refused (legacy would apply each write twice), and so is deleting one of its routes.
    The gate judges a group on its routes' decision parity, summed, and refuses while
    unresolved ownership violations or echo anomalies exist (``evidence`` reads both;
    default: ``new_domain``'s read model on the same database).

    ``clock`` (monotonic seconds) and ``now`` (timestamps written) are injectable for
    tests. Safe to share between threads.
    """

    def __init__(
        self,
        db: str | Engine,
        *,
        refresh_interval: float = 1.0,
        movable: Collection[RouteKey] | None = None,
        gate: CutoverGate | None = None,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = utc_now,
        refresh_wait: float = 0.2,
        groups: Mapping[str, WriteGroup] | None = None,
        evidence: Callable[[Engine], GroupEvidence] | None = None,
    ) -> None:
        self._owns_engine = isinstance(db, str)
        self._engine = route_table_engine(db) if isinstance(db, str) else db
        self._refresh_interval = refresh_interval
        self._refresh_wait = refresh_wait
        self._tickets = itertools.count(1)
        self._refreshing: threading.Event | None = None
        self._groups = dict(WRITE_GROUPS if groups is None else groups)
        self._group_of = {key: g.name for g in self._groups.values() for key in g.routes}
        self._movable = frozenset(NEW_HANDLERS if movable is None else movable) | frozenset(
            self._group_of
        )
        self._evidence = evidence or read_group_evidence
        self._gate = gate
        self._clock = clock
        self._now = now
        self._snapshot: _Snapshot | None = None
        self._last_read: float | None = None  # clock() of the last reload that read the table
        self._refresh_lock = threading.Lock()

    @property
    def engine(self) -> Engine:
        return self._engine

    @property
    def movable(self) -> frozenset[RouteKey]:
        return self._movable

    @property
    def gate(self) -> CutoverGate | None:
        return self._gate

    @property
    def groups(self) -> Mapping[str, WriteGroup]:
        return self._groups

    def group_of(self, method: str, pattern: str) -> WriteGroup | None:
        """The write group ``METHOD pattern`` belongs to, if any."""
        name = self._group_of.get((method, pattern))
        return None if name is None else self._groups[name]

    def verdict(self, method: str, pattern: str, now: datetime | None = None) -> GateVerdict | None:
        """What the cutover gate says now about letting new answer ``METHOD pattern``'s
        clients, on the evidence a move would be judged on (a write group's route: its
        group's decision parity and unresolved problems); None without a gate. Moves
        nothing."""
        gate = self._gate
        if gate is None:
            return None
        group = self.group_of(method, pattern)
        if group is None:
            results = ShadowResults(self._engine, gate.window)
            verdict = gate.judge(results.parity(method, pattern, now=now or datetime.now(UTC)))
        else:
            evidence = self._evidence(self._engine)
            verdict = gate.judge_decisions(evidence.parity(group), group.name)
            problems = evidence.problems()
            if problems:
                verdict = GateVerdict(False, verdict.parity, f"{verdict.summary}; {problems}")
        if gate.below_floor:
            return GateVerdict(False, verdict.parity, f"{gate.describe_floor()}; {verdict.summary}")
        return verdict

    # -- reading -----------------------------------------------------------------------

    def list(self) -> builtins.list[Route]:
        """Every stored route, plus each movable route never set (as legacy), sorted."""
        with self._engine.connect() as conn:
            rows = conn.execute(select(facade_route)).mappings().all()
        routes: dict[RouteKey, Route] = {}
        for row in rows:
            state = self._stored_state(row["mode"], row["options"], row["method"], row["pattern"])
            routes[(row["method"], row["pattern"])] = Route(
                method=row["method"],
                pattern=row["pattern"],
                mode=state.mode.mode,
                updated_at=_aware(row["updated_at"]),
                updated_by=row["updated_by"],
                reason=row["reason"],
                percent=state.mode.percent,
                options=state.options,
                group=self._group_of.get((row["method"], row["pattern"])),
            )
        for method, pattern in self._movable:
            group = self._group_of.get((method, pattern))
            routes.setdefault((method, pattern), Route(method, pattern, Mode.LEGACY, group=group))
        return sorted(routes.values(), key=lambda r: (r.pattern, r.method))

    def ownership(self, group: str) -> Ownership:
        """The write group's ownership as stored now (legacy, epoch 0, when never moved)."""
        if group not in self._groups:
            raise RouteError(f"no write group {group!r}")
        with self._engine.connect() as conn:
            return read_ownership(conn, group)

    def ownerships(self) -> dict[str, Ownership]:
        """Every write group's ownership as stored now."""
        with self._engine.connect() as conn:
            return {name: read_ownership(conn, name) for name in sorted(self._groups)}

    def get(self, method: str, pattern: str) -> Route:
        """One route as stored (legacy with default options when never set)."""
        method = normalise_method(method)
        for route in self.list():
            if (route.method, route.pattern) == (method, pattern):
                return route
        return Route(
            method,
            validate_pattern(pattern),
            Mode.LEGACY,
            group=self._group_of.get((method, pattern)),
        )

    def history(
        self, method: str | None = None, pattern: str | None = None
    ) -> builtins.list[AuditEntry]:
        """Audit entries, oldest first, optionally for one route only."""
        query = select(facade_route_audit).order_by(facade_route_audit.c.id)
        if method is not None:
            query = query.where(facade_route_audit.c.method == normalise_method(method))
        if pattern is not None:
            if len(pattern) > 255 or has_control_characters(pattern):
                raise RouteError(f"invalid route pattern {printable(pattern[:40])!r}")
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
                options=_options_or_default(row["options"]),
                forced=bool(row["forced"]),
                gate=row["gate"],
            )
            for row in rows
        ]

    def require_known(self, method: str, pattern: str) -> RouteKey:
        """``(METHOD, pattern)`` when the table knows the route (stored, movable, or named by
        the audit trail), else UnknownRoute naming the known routes: a typo in a pattern
        is an error, never an empty answer."""
        method = normalise_method(method)
        known = {(r.method, r.pattern) for r in self.list()}
        if (method, pattern) in known:
            return method, pattern
        audited = select(facade_route_audit.c.id).where(
            (facade_route_audit.c.method == method) & (facade_route_audit.c.pattern == pattern)
        )
        if len(pattern) <= 255 and not has_control_characters(pattern):
            with self._engine.connect() as conn:
                if conn.execute(audited.limit(1)).first() is not None:
                    return method, pattern
        shown = ", ".join(f"{m} {p}" for m, p in sorted(known, key=lambda k: (k[1], k[0])))
        raise UnknownRoute(
            f"unknown route {method} {printable(pattern[:255])!r} (known: {shown or 'none'})"
        )

    def moves_to_legacy(self) -> dict[RouteKey, datetime]:
        """Each route's last move back to legacy from shadow, canary or new: its shadow
        results from before do not count (the gate's evidence, and the parity shown)."""
        t = facade_route_audit
        query = (
            select(t.c.method, t.c.pattern, func.max(t.c.at))
            .where(t.c.to_mode == str(Mode.LEGACY))
            .where(t.c.from_mode.is_not(None))
            .where(t.c.from_mode.not_in([str(Mode.LEGACY), str(Mode.AA)]))
            .group_by(t.c.method, t.c.pattern)
        )
        with self._engine.connect() as conn:
            return {(m, p): _aware(at) for m, p, at in conn.execute(query)}

    def last_move_to_legacy(self, method: str, pattern: str) -> datetime | None:
        """When ``METHOD pattern`` last went back to legacy from shadow, canary or new (None:
        never).
        Shadow evidence older than that does not count for the gate."""
        t = facade_route_audit
        query = (
            select(func.max(t.c.at))
            .where(t.c.method == method)
            .where(t.c.pattern == pattern)
            .where(t.c.to_mode == str(Mode.LEGACY))
            .where(t.c.from_mode.is_not(None))
            .where(t.c.from_mode.not_in([str(Mode.LEGACY), str(Mode.AA)]))
        )
        with self._engine.connect() as conn:
            at = conn.execute(query).scalar()
        return None if at is None else _aware(at)

    def staleness(self) -> float | None:
        """Seconds since the routes the facade serves by were last read from the database
        (None: never read). Starts a reload when one is due, and waits for it briefly."""
        self._current_snapshot()
        last = self._last_read
        return None if last is None else max(0.0, self._clock() - last)

    @property
    def refresh_interval(self) -> float:
        return self._refresh_interval

    def match(self, method: str, path: str) -> RouteMatch | None:
        """The known route ``METHOD path`` matches (cached), or None: then it is legacy."""
        snapshot = self._current_snapshot()
        if snapshot is None:
            return None
        found = snapshot.matcher.match(method, path)
        if found is None:
            return None
        state = snapshot.states.get((found.method, found.pattern), _LEGACY_STATE)
        group = self._group_of.get((found.method, found.pattern))
        return RouteMatch(
            found.method,
            found.pattern,
            state.mode.mode,
            found.args,
            state.mode.percent,
            state.options,
            group,
            None if group is None else snapshot.ownership.get(group),
        )

    def group_ownership(self, group: str) -> Ownership | None:
        """The group's ownership in the cached snapshot (None: never read)."""
        snapshot = self._current_snapshot()
        return None if snapshot is None else snapshot.ownership.get(group)

    def mode_for(self, method: str, path: str) -> Mode:
        """How ``METHOD path`` is served now (cached; legacy unless a route says otherwise)."""
        found = self.match(method, path)
        return Mode.LEGACY if found is None else found.mode

    # -- changing ----------------------------------------------------------------------

    def set(
        self,
        method: str,
        pattern: str,
        mode: RouteMode | Mode | str,
        by: str,
        reason: str = "",
        *,
        percent: float | None = None,
        options: Mapping[str, Any] | None = None,
        force: bool = False,
    ) -> Route:
        """Set a route's mode (and change some of its options), with an audit entry, in one
        transaction. ``options`` maps option names to new values; the others are kept. A
        route of a write group moves its whole group (see :meth:`change`).

        Raises RouteError for anything invalid, CutoverRefused when the gate says no.
        """
        change = self.change(
            method, pattern, mode, by, reason, percent=percent, options=options, force=force
        )
        key = (normalise_method(method), pattern)
        return next(r for r in change.routes if (r.method, r.pattern) == key)

    def change(
        self,
        method: str,
        pattern: str,
        mode: RouteMode | Mode | str,
        by: str,
        reason: str = "",
        *,
        percent: float | None = None,
        options: Mapping[str, Any] | None = None,
        force: bool = False,
    ) -> Change:
        """:meth:`set`, answering every route it set: for a route of a write group, every
        route of the group (and the group's ownership after the move)."""
        method = normalise_method(method)
        pattern = validate_pattern(pattern)
        target = RouteMode.parse(mode, percent)
        by = checked_text("by", by.strip(), MAX_BY)
        reason = checked_text("reason", reason, MAX_REASON)
        if not by:
            raise RouteError("who changes the route must be given (--by)")
        group = self.group_of(method, pattern)
        if group is not None:
            return self._change_group(group, target, by, reason, bool(options), force)
        if target.mode.needs_new_system and (method, pattern) not in self._movable:
            movable = ", ".join(f"{m} {p}" for m, p in sorted(self._movable)) or "none"
            raise RouteError(
                f"{method} {pattern} cannot be served by the new system "
                f"(routes that can: {movable})"
            )
        if options:
            DEFAULT_OPTIONS.changed(options)  # validate before touching the database
        try:
            change = self._write(method, pattern, target, by, reason, options or {}, force)
        except IntegrityError:
            change = self._write(method, pattern, target, by, reason, options or {}, force)
        self._reload(self._snapshot, self._clock(), next(self._tickets))
        return change

    def move_group(
        self,
        group: str,
        mode: RouteMode | Mode | str,
        by: str,
        reason: str = "",
        *,
        force: bool = False,
    ) -> Change:
        """Move write group ``group`` (every route, its audit and its ownership) to ``mode``."""
        found = self._groups.get(group)
        if found is None:
            raise RouteError(f"no write group {group!r} (known: {', '.join(sorted(self._groups))})")
        method, pattern = found.routes[0]
        return self.change(method, pattern, mode, by, reason, force=force)

    def _change_group(
        self,
        group: WriteGroup,
        target: RouteMode,
        by: str,
        reason: str,
        has_options: bool,
        force: bool,
    ) -> Change:
        routes = ", ".join(f"{m} {p}" for m, p in group.routes)
        if target.mode is Mode.AA:
            raise RouteError(
                f"write group {group.name} ({routes}) cannot be in aa: legacy would apply "
                "every write twice"
            )
        if has_options:
            raise RouteError(
                f"route options do not apply to the routes of write group {group.name} "
                "(legacy decides or the new system does; nothing is compared)"
            )
        try:
            change = self._write_group(group, target, by, reason, force)
        except IntegrityError:
            change = self._write_group(group, target, by, reason, force)
        self._reload(self._snapshot, self._clock(), next(self._tickets))
        return change

    def delete(self, method: str, pattern: str, by: str, reason: str = "") -> AuditEntry:
        """Remove a stored route (it is then served like any unknown path: from legacy, or
        as a never-set movable route), with an audit entry (``to_mode`` ``deleted``), in
        one transaction. ``pattern`` is not validated: a route stored before a rule
        tightened can still be deleted. Raises RouteError when no such route is stored."""
        method = normalise_method(method)
        by = checked_text("by", by.strip(), MAX_BY)
        reason = checked_text("reason", reason, MAX_REASON)
        if not by:
            raise RouteError("who deletes the route must be given (--by)")
        group = self._group_of.get((method, pattern))
        if group is not None:
            raise RouteError(
                f"{method} {pattern} belongs to write group {group} and moves only with it: "
                f"set the group to legacy instead of deleting one of its routes"
            )
        if len(pattern) > 255 or has_control_characters(pattern):
            raise RouteNotFound(f"no stored route {method} {printable(pattern)}")
        at = self._now()
        key = (facade_route.c.method == method) & (facade_route.c.pattern == pattern)
        with self._engine.begin() as conn:
            previous = conn.execute(
                select(facade_route.c.mode, facade_route.c.options).where(key).with_for_update()
            ).first()
            if previous is None:
                raise RouteNotFound(f"no stored route {method} {pattern}")
            conn.execute(delete(facade_route).where(key))
            entry_id = conn.execute(
                insert(facade_route_audit)
                .values(
                    at=at,
                    method=method,
                    pattern=pattern,
                    from_mode=previous.mode,
                    to_mode=DELETED,
                    by=by,
                    reason=reason,
                    options=previous.options,
                    forced=False,
                    gate=None,
                )
                .returning(facade_route_audit.c.id)
            ).scalar_one()
        self._reload(self._snapshot, self._clock(), next(self._tickets))
        return AuditEntry(
            entry_id,
            at,
            method,
            pattern,
            previous.mode,
            DELETED,
            by,
            reason,
            _options_or_default(previous.options),
        )

    def rollback(
        self, by: str, reason: str = "", routes: Iterable[RouteKey] | None = None
    ) -> builtins.list[Route]:
        """Set every route not served by legacy alone (or just ``routes``) to legacy. A
        route of a write group takes its whole group back (every route is answered)."""
        wanted = None if routes is None else {self.require_known(m, p) for m, p in routes}
        listed = self.list()
        moved_groups: set[str] = set()
        changed: builtins.list[Route] = []
        for route in listed:
            key = (route.method, route.pattern)
            if wanted is not None and key not in wanted:
                continue
            if route.group is not None:
                if route.group in moved_groups:
                    continue
                moved_groups.add(route.group)
                if wanted is None and self._group_on_legacy(route.group, listed):
                    continue
                move = self.move_group(route.group, Mode.LEGACY, by, reason)
                changed.extend(move.routes)
                continue
            if wanted is None and route.mode is Mode.LEGACY:
                continue
            changed.append(self.set(route.method, route.pattern, Mode.LEGACY, by, reason))
        return changed

    def _group_on_legacy(self, group: str, listed: Iterable[Route]) -> bool:
        """Every route of the group on legacy, and its ownership settled on legacy."""
        ownership = self.ownership(group)
        return (
            all(r.mode is Mode.LEGACY for r in listed if r.group == group)
            and str(ownership.rule) == "legacy"
            and ownership.state == "active"
        )

    def close(self) -> None:
        if self._owns_engine:
            self._engine.dispose()

    # -- internals ---------------------------------------------------------------------

    def _write(
        self,
        method: str,
        pattern: str,
        target: RouteMode,
        by: str,
        reason: str,
        option_changes: Mapping[str, Any],
        force: bool,
    ) -> Change:
        at = self._now()
        key = (facade_route.c.method == method) & (facade_route.c.pattern == pattern)
        with self._engine.begin() as conn:
            previous = conn.execute(
                select(facade_route.c.mode, facade_route.c.options).where(key).with_for_update()
            ).first()
            previous_mode = None if previous is None else previous.mode
            current = DEFAULT_OPTIONS if previous is None else _options_or_default(previous.options)
            options = current.changed(option_changes) if option_changes else current
            forced, gate_summary = self._judge(
                method, pattern, target, previous_mode, force, reason, at
            )
            values = {
                "mode": str(target),
                "updated_at": at,
                "updated_by": by,
                "reason": reason,
                "options": options.to_json(),
            }
            if previous is None:
                conn.execute(insert(facade_route).values(method=method, pattern=pattern, **values))
            else:
                conn.execute(update(facade_route).where(key).values(**values))
            conn.execute(
                insert(facade_route_audit).values(
                    at=at,
                    method=method,
                    pattern=pattern,
                    from_mode=previous_mode,
                    to_mode=str(target),
                    by=by,
                    reason=reason,
                    options=options.to_json(),
                    forced=forced,
                    gate=gate_summary,
                )
            )
        route = Route(method, pattern, target.mode, at, by, reason, target.percent, options)
        return Change((route,), gate=gate_summary, forced=forced)

    def _write_group(
        self, group: WriteGroup, target: RouteMode, by: str, reason: str, force: bool
    ) -> Change:
        """Every route of ``group`` (row and audit entry) and its ownership, one transaction.

        The routes' rows are locked first, then the ownership row (by ``move_ownership``,
        after the rows: on SQLite the first write begins the transaction it joins)."""
        at = self._now()
        keys = sorted(group.routes, key=lambda k: (k[1], k[0]))
        with self._engine.begin() as conn:
            stored = {
                (row.method, row.pattern): row
                for row in conn.execute(
                    select(facade_route.c.method, facade_route.c.pattern, facade_route.c.mode)
                    .where(_any_route(keys))
                    .with_for_update()
                )
            }
            current = read_ownership(conn, group.name)
            forced, gate_summary = self._judge_group(group, target, current, force, reason)
            values = {
                "mode": str(target),
                "updated_at": at,
                "updated_by": by,
                "reason": reason,
            }
            routes = []
            for method, pattern in keys:
                previous = stored.get((method, pattern))
                key = (facade_route.c.method == method) & (facade_route.c.pattern == pattern)
                if previous is None:
                    conn.execute(
                        insert(facade_route).values(
                            method=method,
                            pattern=pattern,
                            options=DEFAULT_OPTIONS.to_json(),
                            **values,
                        )
                    )
                else:
                    conn.execute(update(facade_route).where(key).values(**values))
                conn.execute(
                    insert(facade_route_audit).values(
                        at=at,
                        method=method,
                        pattern=pattern,
                        from_mode=None if previous is None else previous.mode,
                        to_mode=str(target),
                        by=by,
                        reason=reason,
                        options=DEFAULT_OPTIONS.to_json(),
                        forced=forced,
                        gate=gate_summary,
                    )
                )
                routes.append(
                    Route(
                        method,
                        pattern,
                        target.mode,
                        at,
                        by,
                        reason,
                        target.percent,
                        group=group.name,
                    )
                )
            ownership = move_ownership(conn, group.name, str(target), by, at)
        return Change(tuple(routes), group.name, ownership, gate_summary, forced)

    def _judge(
        self,
        method: str,
        pattern: str,
        target: RouteMode,
        previous_mode: str | None,
        force: bool,
        reason: str,
        now: datetime,
    ) -> tuple[bool, str | None]:
        """(forced, evidence) for a move that lets new answer clients; raises
        CutoverRefused when refused.

        Judged when new starts answering clients (from legacy, aa, shadow or canary 0 to
        canary above 0 or new) and when a route goes to new from any other mode. Growing a
        canary is not judged again: the route passed (or was forced past) the gate when
        the canary started.
        """
        if not _serves_clients_from_new(target) or self._gate is None:
            return False, None
        previous = None if previous_mode is None else _parse_stored(previous_mode)
        if (
            previous is not None
            and _serves_clients_from_new(previous)
            and (target.mode is Mode.CANARY or previous.mode is Mode.NEW)
        ):
            return False, None
        gate = self._gate
        results = ShadowResults(self._engine, gate.window)
        moved_back = self.last_move_to_legacy(method, pattern)
        verdict = gate.judge(
            results.parity(method, pattern, now=now, after=moved_back), since=moved_back
        )
        if verdict.passed and not gate.below_floor:
            return False, verdict.summary
        problem = gate.describe_floor() if gate.below_floor else verdict.summary
        if not force:
            hint = (
                "(raise --min-samples/--min-parity, or use --force)"
                if gate.below_floor
                else "(shadow it longer, or use --force)"
            )
            share = "" if target.mode is Mode.NEW else f" ({target})"
            raise CutoverRefused(
                f"refusing to serve {method} {pattern} from new{share}: {problem} {hint}",
                verdict,
            )
        if not reason.strip():
            raise RouteError("a forced move needs a reason (--reason)")
        if gate.below_floor:
            return True, f"forced past the gate: {problem}; {verdict.summary}"
        return True, f"forced past the gate: {verdict.summary}"

    def _judge_group(
        self,
        group: WriteGroup,
        target: RouteMode,
        current: Ownership,
        force: bool,
        reason: str,
    ) -> tuple[bool, str | None]:
        """(forced, evidence) for a move of a write group that lets new decide for clients;
        raises CutoverRefused when refused.

        Judged like a read route (new starts deciding, or the group goes to new from
        anything else; growing a canary is not judged again), on decision parity: the
        group's routes' agree and differ counts summed. Unresolved ownership violations
        or echo anomalies refuse it too. ``force`` with a ``reason`` overrides, audited.
        """
        if not _serves_clients_from_new(target) or self._gate is None:
            return False, None
        previous = _parse_stored(str(current.rule))
        if _serves_clients_from_new(previous) and (
            target.mode is Mode.CANARY or previous.mode is Mode.NEW
        ):
            return False, None
        gate = self._gate
        evidence = self._evidence(self._engine)
        parity = evidence.parity(group)
        verdict = gate.judge_decisions(parity, group.name)
        problems = evidence.problems()
        passed = verdict.passed and not problems
        summary = verdict.summary if not problems else f"{verdict.summary}; {problems}"
        if passed and not gate.below_floor:
            return False, summary
        problem = gate.describe_floor() if gate.below_floor else summary
        if not force:
            if problems:
                hint = "(resolve them: strangler status, strangler verify; or use --force)"
            elif gate.below_floor:
                hint = "(raise --min-samples/--min-parity, or use --force)"
            else:
                hint = "(keep it in shadow longer, or use --force)"
            raise CutoverRefused(
                f"refusing to move write group {group.name} to {target}: {problem} {hint}",
                GateVerdict(False, verdict.parity, summary),
            )
        if not reason.strip():
            raise RouteError("a forced move needs a reason (--reason)")
        if gate.below_floor:
            return True, f"forced past the gate: {problem}; {summary}"
        return True, f"forced past the gate: {summary}"

    def _current_snapshot(self) -> _Snapshot | None:
        snapshot = self._snapshot
        now = self._clock()
        if snapshot is not None and now - snapshot.loaded_at < self._refresh_interval:
            return snapshot
        # One reload at a time, on its own thread; the request that started it waits for
        # it briefly, the others answer from the snapshot they have (none: legacy).
        with self._refresh_lock:
            running = self._refreshing
            if running is None:
                running = self._refreshing = threading.Event()
                ticket = next(self._tickets)
                threading.Thread(
                    target=self._refresh,
                    args=(running, snapshot, now, ticket),
                    name="route-table-refresh",
                    daemon=True,
                ).start()
            elif snapshot is not None:
                return snapshot
        running.wait(self._refresh_wait)
        return self._snapshot or snapshot

    def _refresh(
        self, done: threading.Event, previous: _Snapshot | None, now: float, ticket: int
    ) -> None:
        try:
            self._reload(previous, now, ticket)
        except Exception:
            log.exception("route table reload failed")
        finally:
            with self._refresh_lock:
                self._refreshing = None
            done.set()

    def _keep(self, snapshot: _Snapshot) -> _Snapshot:
        """Store ``snapshot`` unless a reload that started later already stored one."""
        with self._refresh_lock:
            current = self._snapshot
            if current is None or current.ticket <= snapshot.ticket:
                self._snapshot = snapshot
                return snapshot
            return current

    def _reload(self, previous: _Snapshot | None, now: float, ticket: int) -> _Snapshot:
        try:
            states = self._read_states()
        except SQLAlchemyError as exc:
            log.warning(
                "route table unreadable, %s: %s",
                "keeping the last snapshot" if previous else "serving everything from legacy",
                str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
            )
            # Retry after another interval, not on every request.
            return self._keep(
                _Snapshot(
                    # never read: every movable route as legacy, so that a write group's
                    # routes still match (and wait for their ownership) and reads proxy
                    previous.states if previous else dict.fromkeys(self._movable, _LEGACY_STATE),
                    now,
                    ticket,
                    previous.ownership if previous else None,
                )
            )
        ownership = self._read_ownerships(previous)
        self._last_read = self._clock()
        return self._keep(_Snapshot(states, now, ticket, ownership))

    def _read_states(self) -> dict[RouteKey, _State]:
        """Every route's state as stored now (raises SQLAlchemyError when unreadable)."""
        with self._engine.connect() as conn:
            rows = conn.execute(
                select(
                    facade_route.c.method,
                    facade_route.c.pattern,
                    facade_route.c.mode,
                    facade_route.c.options,
                )
            ).all()
        states: dict[RouteKey, _State] = {key: _LEGACY_STATE for key in self._movable}
        for method, pattern, stored, options in rows:
            try:
                validate_pattern(pattern)
            except RouteError as exc:
                log.warning(
                    "route %s %s is skipped (served from legacy): %s",
                    printable(method),
                    printable(pattern),
                    printable(str(exc)),
                )
                continue
            states[(method, pattern)] = self._stored_state(stored, options, method, pattern)
        return states

    def read_routing(self) -> Routing:
        """How every route is served, read now from the database as a reload reads it (the
        same routes skipped, the same modes refused); raises ``SQLAlchemyError`` when the
        routes or the write groups' ownership cannot be read."""
        states = self._read_states()
        with self._engine.connect() as conn:
            ownership = {name: read_ownership(conn, name) for name in self._groups}
        return Routing(
            {key: state.mode.mode for key, state in states.items()},
            ownership,
            dict(self._group_of),
            PatternMatcher(states),
        )

    def _read_ownerships(self, previous: _Snapshot | None) -> Mapping[str, Ownership]:
        """Every write group's ownership; the last known one when it cannot be read."""
        if not self._groups:
            return {}
        try:
            with self._engine.connect() as conn:
                return {name: read_ownership(conn, name) for name in self._groups}
        except SQLAlchemyError as exc:
            log.warning(
                "write ownership unreadable, %s: %s",
                "keeping the last one" if previous and previous.ownership else "writes wait",
                str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
            )
            return previous.ownership if previous else {}

    def _stored_state(self, stored: str, options: str | None, method: str, pattern: str) -> _State:
        route_options = _options_or_default(options, f"{method} {pattern}")
        try:
            mode = RouteMode.parse(stored)
        except RouteError:
            log.warning(
                "route %s %s has unknown mode %r: serving it from legacy", method, pattern, stored
            )
            return _State(LEGACY, route_options)
        if mode.mode.needs_new_system and (method, pattern) not in self._movable:
            log.warning(
                "route %s %s is set to %s but the new system cannot serve it: "
                "serving it from legacy",
                method,
                pattern,
                mode,
            )
            return _State(LEGACY, route_options)
        return _State(mode, route_options)


_LEGACY_STATE = _State(LEGACY, DEFAULT_OPTIONS)


def _any_route(keys: Iterable[RouteKey]) -> Any:
    return or_(*((facade_route.c.method == m) & (facade_route.c.pattern == p) for m, p in keys))


class GroupEvidence(Protocol):
    """What the gate reads about write groups (``new_domain``'s read model provides it)."""

    def parity(self, group: WriteGroup) -> Parity: ...

    def problems(self) -> str:
        """Unresolved ownership violations and echo anomalies, in words; "" when none."""
        ...


class _ReadModelEvidence:
    def __init__(self, engine: Engine) -> None:
        self._model = ReadModel(engine)

    def parity(self, group: WriteGroup) -> Parity:
        counts = self._model.decision_parity()
        routes = {f"{m} {p}" for m, p in group.routes}
        agree = sum(c.agree for route, c in counts.items() if route in routes)
        differ = sum(c.differ for route, c in counts.items() if route in routes)
        return Parity(matches=agree, mismatches=differ)

    def problems(self) -> str:
        found = self._model.ownership_problems()
        return describe_problems(found)


def describe_problems(found: Mapping[str, int]) -> str:
    """``{"ownership_violations": 2, "echo_anomalies": 1}`` -> ``2 unresolved ownership
    violations, 1 unresolved echo anomaly``; "" when there are none."""
    violations = int(found.get("ownership_violations", 0))
    anomalies = int(found.get("echo_anomalies", 0))
    parts = []
    if violations:
        parts.append(f"{violations} unresolved ownership violation{'s' if violations != 1 else ''}")
    if anomalies:
        parts.append(f"{anomalies} unresolved echo anomal{'ies' if anomalies != 1 else 'y'}")
    return ", ".join(parts)


def read_group_evidence(engine: Engine) -> GroupEvidence:
    """The gate's evidence about write groups, from the new domain's read model."""
    return _ReadModelEvidence(engine)


def _serves_clients_from_new(mode: RouteMode) -> bool:
    """Whether in ``mode`` the new system answers real clients (canary above 0, new)."""
    return mode.mode is Mode.NEW or (mode.mode is Mode.CANARY and (mode.percent or 0) > 0)


def _parse_stored(stored: str) -> RouteMode:
    try:
        return RouteMode.parse(stored)
    except RouteError:
        return LEGACY


def _options_or_default(text: str | None, where: str = "") -> RouteOptions:
    try:
        return RouteOptions.from_json(text)
    except (ValueError, RouteError):
        log.warning("route %s has unreadable options %r: using the defaults", where, text)
        return DEFAULT_OPTIONS


def _aware(value: datetime) -> datetime:
    """Timestamps are written in UTC; SQLite hands them back without a zone."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
