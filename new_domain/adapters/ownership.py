"""Reading and moving write ownership (table ``write_ownership``; docs/write-path.md).

A move runs inside the caller's transaction (the route table moves the write group's
routes, their audit and the ownership together): it locks the group's row ``FOR UPDATE``
(the new write path holds it ``FOR SHARE`` while it decides, so the move waits for
in-flight decisions), bumps the epoch and, when products change hands, leaves the group
``moving`` and queues ``OwnershipMoved`` in the outbox, in the same transaction.

**The gate (PostgreSQL).** A row lock alone would let a move starve: PostgreSQL grants a
``FOR SHARE`` request at once when the row is only share-locked, even while a
``FOR UPDATE`` waits, so under a steady stream of overlapping decisions the move (or the
consumer settling a fence) never gets the row and fails on its statement timeout. So every
locking read first takes the group's transaction-level advisory lock, shared for
``"share"`` and exclusive for ``"update"`` (:func:`gate`): the lock manager queues those
fairly, so a decision arriving after a waiting move waits behind it. SQLite serialises
writers anyway.

:mod:`new_domain.adapters.ownership_records` is the unit of work's view of the table: the
new write path reads the group's ownership with it, ``FOR SHARE``, in the transaction that
decides; the consumer settles fences and records violations with it.
"""

from __future__ import annotations

import json
import uuid
import zlib
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Integer, Select, bindparam, func, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from new_domain.adapters import orm
from new_domain.adapters.bulk import fetch
from new_domain.adapters.outbox import ROUTING_KEYS, event_body
from new_domain.domain import events
from new_domain.domain.ownership import Ownership, OwnershipRule, State

t = orm.write_ownership

Lock = str | None
"""``None``, ``"share"`` or ``"update"``: the row lock a read takes until the transaction ends."""


def read_ownership(connection: Connection, group: str, *, lock: Lock = None) -> Ownership:
    """The group's ownership (legacy, epoch 0, when never moved). ``lock``: ``"share"``
    or ``"update"`` locks the row until the transaction ends (PostgreSQL, MariaDB)."""
    if lock is not None:
        gate(connection, group, exclusive=lock == "update")
    row = connection.execute(_ownership_query(lock), {"group": group}).first()
    return ownership_of(group, row)


def read_ownership_ahead(
    connection: Connection, group: str, *, lock: Lock = None
) -> Callable[[], Ownership]:
    """:func:`read_ownership`, sent with the other reads of an enclosing
    :func:`~new_domain.adapters.bulk.pipelined` block (in their order, so its lock is
    taken before theirs); call the result after the block for the ownership."""
    found: list[Any] = []
    if lock is not None:
        gate(connection, group, exclusive=lock == "update")
    fetch(connection, f"ownership.{lock}", lambda: _ownership_query(lock), {"group": group},
          found.extend)  # fmt: skip

    def ownership() -> Ownership:
        return ownership_of(group, found[0] if found else None)

    return ownership


GATE_SPACE = 0x53_54_52_4F  # "STRO": the kit's advisory locks, first key
"""The first key of the gate's advisory lock; the second is the group name's CRC-32."""


def gate(connection: Connection, group: str, *, exclusive: bool) -> None:
    """Take the group's gate until the transaction ends (PostgreSQL; a no-op elsewhere):
    shared by a decision, exclusive by a move or a fence settling. Fairly queued, unlike
    a row's share lock (see the module's docstring). Inside a
    :func:`~new_domain.adapters.bulk.pipelined` block it is sent with the block's other
    statements, before them."""
    if connection.dialect.name == "postgresql":
        kind = "exclusive" if exclusive else "shared"
        fetch(connection, f"ownership.gate.{kind}", lambda: _gate_query(exclusive),
              _gate_params(group), _ignore)  # fmt: skip


def _ignore(_rows: list[Any]) -> None:
    return None


def _gate_query(exclusive: bool) -> Select[Any]:
    take = func.pg_advisory_xact_lock if exclusive else func.pg_advisory_xact_lock_shared
    return select(take(bindparam("space", type_=Integer), bindparam("key", type_=Integer)))


def _gate_params(group: str) -> dict[str, int]:
    key = zlib.crc32(group.encode())
    return {"space": GATE_SPACE, "key": key - (1 << 32) if key >= 1 << 31 else key}


def _ownership_query(lock: Lock) -> Select[Any]:
    query = select(*(t.c[name] for name in _COLUMNS)).where(t.c.group_name == bindparam("group"))
    if lock == "share":
        return query.with_for_update(read=True)
    if lock == "update":
        return query.with_for_update()
    return query


_COLUMNS = ("rule", "previous_rule", "epoch", "state", "changed_at", "changed_by")


def ownership_of(group: str, row: Any) -> Ownership:
    """The ownership a ``write_ownership`` row (its ``_COLUMNS`` in order) says."""
    if row is None:
        return Ownership(group)
    rule, previous, epoch, state, changed_at, changed_by = tuple(row)
    return Ownership(
        group=group,
        rule=OwnershipRule.parse(rule),
        previous_rule=None if previous is None else OwnershipRule.parse(previous),
        epoch=int(epoch),
        state=State(state),
        changed_at=_aware(changed_at),
        changed_by=changed_by,
    )


def move_ownership(
    connection: Connection,
    group: str,
    rule: OwnershipRule | str,
    by: str,
    at: datetime | None = None,
) -> Ownership:
    """Give the group ``rule`` in the caller's transaction; returns the new ownership.

    When no product changes hands (``legacy`` <-> ``shadow``, or the same share) the
    group stays (or goes) ``active`` and no fence is needed. Otherwise it is ``moving``
    from the rule its products were last settled under (for a group still moving: its
    previous rule, so a superseded move's fence settles nothing) and ``OwnershipMoved``
    goes to the outbox.
    """
    target = OwnershipRule.parse(rule) if isinstance(rule, str) else rule
    at = at or datetime.now(UTC)
    _ensure_row(connection, group, at)
    current = read_ownership(connection, group, lock="update")
    settled = current
    if current.state is State.MOVING and current.previous_rule is not None:
        settled = Ownership(group, current.previous_rule)
    moving = settled.hands_change(target)
    moved = Ownership(
        group=group,
        rule=target,
        previous_rule=settled.rule if moving else None,
        epoch=current.epoch + 1,
        state=State.MOVING if moving else State.ACTIVE,
        changed_at=at,
        changed_by=by,
    )
    connection.execute(
        update(t)
        .where(t.c.group_name == group)
        .values(
            rule=str(moved.rule),
            previous_rule=None if moved.previous_rule is None else str(moved.previous_rule),
            epoch=moved.epoch,
            state=moved.state.value,
            changed_at=at,
            changed_by=by,
        )
    )
    if moving:
        previous = str(moved.previous_rule)
        _queue(connection, events.OwnershipMoved(group, moved.epoch, str(target), previous), at)
    return moved


def settle_ownership(connection: Connection, group: str, epoch: int) -> bool:
    """The fence of ``epoch`` came back: the group goes ``active`` if that is still its
    epoch (True), else nothing changes (a superseded move's fence)."""
    gate(connection, group, exclusive=True)
    result = connection.execute(
        update(t)
        .where(t.c.group_name == group, t.c.epoch == epoch, t.c.state == State.MOVING.value)
        .values(state=State.ACTIVE.value, previous_rule=None)
    )
    return bool(result.rowcount)


def _ensure_row(connection: Connection, group: str, at: datetime) -> None:
    exists = connection.scalar(select(t.c.epoch).where(t.c.group_name == group))
    if exists is None:
        try:
            with connection.begin_nested():
                connection.execute(
                    insert(t).values(
                        group_name=group,
                        rule="legacy",
                        previous_rule=None,
                        epoch=0,
                        state=State.ACTIVE.value,
                        changed_at=at,
                        changed_by=None,
                    )
                )
        except IntegrityError:
            pass  # a concurrent move created it; the lock below serialises us


def _queue(connection: Connection, event: events.Event, at: datetime) -> None:
    message_id = str(uuid.uuid4())
    connection.execute(
        insert(orm.outbox).values(
            message_id=message_id,
            event_type=type(event).__name__,
            routing_key=ROUTING_KEYS[type(event)],
            body=json.dumps(event_body(event, message_id, at, None), sort_keys=True),
            created_at=at,
        )
    )


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
