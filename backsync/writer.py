"""One legacy transaction per decision or fence: the origin marker first, then legacy's
rows (the mimic's), then back-sync's position.

A decision or fence already recorded in ``strangler_backsync_applied`` (a redelivery,
or a re-send by the outbox relay) is not written again: the transaction is rolled back
untouched and the caller acknowledges the messages.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from backsync.database import is_locking, set_lock_timeout, write_transaction
from backsync.messages import Decision, MoveMessage
from backsync.mimic import Mimic, Refused
from backsync.tables import DECISION, FENCE, applied, lane_position, origin, position

MAX_SUMMARY = 1000

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Written:
    """What a write did: ``written`` False when legacy held it already."""

    written: bool
    at: datetime | None = None


@dataclass
class Writer:
    """Writes decisions and fences into the legacy database for the queue ``queue``."""

    engine: Engine
    mimic: Mimic
    queue: str
    lock_timeout: float = 10.0
    clock: Clock = utc_now
    _lane: threading.local = field(default_factory=threading.local, init=False, repr=False)

    def use_lane(self, lane: int) -> None:
        """The decisions this thread writes count in lane ``lane``'s row of
        ``strangler_backsync_lane`` (a thread of back-sync's lane pool); a thread that
        never called it counts in the queue's ``strangler_backsync_position`` row."""
        self._lane.number = lane

    def is_applied(self, key: str) -> bool:
        with self.engine.connect() as connection:
            return _applied(connection, key)

    def write_decision(self, decision: Decision) -> Written:
        group = decision.group or self.mimic.group(decision.route)
        if group is None:
            raise Refused(f"no write group for route {decision.route!r}")
        with write_transaction(self.engine) as connection:
            if _applied(connection, decision.id):
                connection.rollback()
                return Written(False)
            connection.execute(
                _INSERT_ORIGIN,
                {
                    "kind": DECISION,
                    "group_name": group,
                    "decision_id": decision.id,
                    "route": decision.route,
                    "sku": decision.sku,
                    "summary": _cut(decision.summary),
                },
            )
            self.mimic.write(connection, decision)
            at = self.clock()
            lane = getattr(self._lane, "number", None)
            _record(connection, self.queue, decision.id, DECISION, at, decision.occurred_at, lane)
        return Written(True, at)

    def write_fence(self, message: MoveMessage) -> Written:
        """The fence of a move; for a takeover, after locking the rows of the products
        changing hands (legacy writes in flight to them commit first)."""
        move = message.move
        with write_transaction(self.engine) as connection:
            if _applied(connection, message.message_id):
                connection.rollback()
                return Written(False)
            if move.takeover and is_locking(connection):
                set_lock_timeout(connection, self.lock_timeout)
                self.mimic.lock_products(connection, move.changes_hands)
            connection.execute(
                insert(origin).values(kind=FENCE, group_name=move.group, epoch=move.epoch)
            )
            at = self.clock()
            _record(connection, self.queue, message.message_id, FENCE, at, None)
        return Written(True, at)


_APPLIED = select(applied.c.decision_id).where(applied.c.decision_id == bindparam("key"))
_INSERT_APPLIED = insert(applied)
_INSERT_ORIGIN = insert(origin)
_DECISION_WRITTEN = (
    update(position)
    .where(position.c.queue == bindparam("for_queue"))
    .values(
        decisions=position.c.decisions + 1,
        last_decision_id=bindparam("decision_key"),
        last_occurred_at=bindparam("occurred"),
        last_written_at=bindparam("written"),
    )
)
_LANE_DECISION_WRITTEN = (
    update(lane_position)
    .where(lane_position.c.queue == bindparam("for_queue"), lane_position.c.lane == bindparam("n"))
    .values(
        decisions=lane_position.c.decisions + 1,
        last_decision_id=bindparam("decision_key"),
        last_occurred_at=bindparam("occurred"),
        last_written_at=bindparam("written"),
    )
)
_FENCE_WRITTEN = (
    update(position)
    .where(position.c.queue == bindparam("for_queue"))
    .values(fences=position.c.fences + 1)
)
"""The statements of every decision, built once (building them again for each decision
cost back-sync a good part of its CPU)."""


def _applied(connection: Connection, key: str) -> bool:
    return connection.scalar(_APPLIED, {"key": key}) is not None


def _record(
    connection: Connection,
    queue: str,
    key: str,
    kind: str,
    at: datetime,
    occurred_at: datetime | None,
    lane: int | None = None,
) -> None:
    connection.execute(_INSERT_APPLIED, {"decision_id": key, "kind": kind, "applied_at": at})
    if kind == DECISION:
        written: dict[str, object] = {"decision_key": key, "occurred": occurred_at, "written": at}
        if lane is not None:
            _record_in_lane(connection, {"for_queue": queue, "n": lane, **written})
            return
        statement = _DECISION_WRITTEN
    else:
        written, statement = {}, _FENCE_WRITTEN
    params = {"for_queue": queue, **written}
    done = connection.execute(statement, params)
    if not done.rowcount:
        connection.execute(insert(position).values(start_position(queue)))
        connection.execute(statement, params)


def _record_in_lane(connection: Connection, params: dict[str, object]) -> None:
    """Count the decision in its lane's row, created (under a savepoint: another
    back-sync process may create it at the same moment) the first time."""
    if connection.execute(_LANE_DECISION_WRITTEN, params).rowcount:
        return
    try:
        with connection.begin_nested():
            row = {"queue": params["for_queue"], "lane": params["n"], "decisions": 0}
            connection.execute(insert(lane_position).values(row))
    except IntegrityError:
        pass  # created meanwhile: the update below waits for it
    connection.execute(_LANE_DECISION_WRITTEN, params)


def start_position(queue: str) -> dict[str, object]:
    return {"queue": queue, "decisions": 0, "fences": 0}


def _cut(summary: str) -> str:
    return summary if len(summary) <= MAX_SUMMARY else summary[: MAX_SUMMARY - 1] + "…"
