"""The change table read as a log: claiming positions, reading, checkpointing.

Why publishing in ``pos`` order loses nothing and keeps commit order:

- ``change_id`` is taken when a row changes, not when its transaction commits. A reader
  that remembers "the highest id seen" skips a transaction that commits after one with
  higher ids. So ids are never used as the cursor. Instead the relay *claims* rows: it
  gives ``pos`` values (strictly increasing: next after the highest ``pos`` and the
  checkpoint) to pending rows (``pos IS NULL``) that are safe to read, in ``change_id``
  order, and publishes in ``pos`` order. A row that commits late is still pending at a
  later claim and gets a later ``pos``: it is published late, never skipped.
- Only committed rows are visible to a claim, so a claim takes every visible pending row
  in ``change_id`` order. That keeps every dependency in order: a change that depends on
  another (an allocation of a lot just created, a second update of one row) was written
  after the other one committed, so it has the higher ``change_id`` (the sequence hands
  out ids in call order; it must not be created with ``CACHE`` > 1) and it cannot be
  visible without the other one: either the other one got a position at an earlier
  claim, or both are in this claim and ``change_id`` order puts it first. Changes of
  transactions that overlapped touch no common row (a row lock would have serialised
  them), so their relative order carries no meaning. This holds on every dialect; it
  needs no transaction-id horizon, so a long transaction elsewhere on the server never
  holds publication back.
- After the broker confirmed every message up to position P, the relay stores
  ``last_confirmed_pos = P``; on restart, rows with ``pos > last_confirmed_pos`` are
  published again (same message id) before anything new is claimed. Consumers deduplicate
  by message id or ``source.seq``.

One relay runs per legacy database; claims are serialised anyway
(:meth:`~legacy_bridge.capture.CaptureDialect.lock_claims`) so positions never repeat.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, func, inspect, select, update
from sqlalchemy.engine import Connection

from legacy_bridge.capture import CaptureDialect
from legacy_bridge.errors import BridgeNotInstalled
from legacy_bridge.tables import CHANGE_TABLE, STATE_TABLE, change, relay_state


@dataclass(frozen=True)
class Change:
    """One claimed row of ``strangler_change``."""

    change_id: int
    txid: int | None
    table_name: str
    op: str
    pk: dict[str, Any]
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    captured_at: datetime
    pos: int


@dataclass(frozen=True)
class RelayState:
    """The single row of ``strangler_relay_state``."""

    install_id: str
    server_name: str
    last_confirmed_pos: int


def check_installed(conn: Connection, schema: str | None) -> None:
    """Raise :class:`BridgeNotInstalled` unless the bridge's tables exist."""
    inspector = inspect(conn)
    for table in (CHANGE_TABLE, STATE_TABLE):
        if not inspector.has_table(table, schema=schema):
            raise BridgeNotInstalled(
                f"change capture is not installed in this database (no {table}): "
                "run 'strangler bridge install' first"
            )


def read_state(conn: Connection) -> RelayState:
    """The relay's state row."""
    row = conn.execute(
        select(
            relay_state.c.install_id, relay_state.c.server_name, relay_state.c.last_confirmed_pos
        )
    ).first()
    if row is None:
        raise BridgeNotInstalled(
            "change capture is not installed in this database (no relay state): "
            "run 'strangler bridge install' first"
        )
    return RelayState(str(row.install_id), str(row.server_name), int(row.last_confirmed_pos))


def unconfirmed(conn: Connection, after_pos: int, limit: int) -> list[Change]:
    """Claimed rows with ``pos > after_pos``, in ``pos`` order."""
    rows = conn.execute(
        select(change).where(change.c.pos > after_pos).order_by(change.c.pos).limit(limit)
    )
    return [
        Change(
            change_id=int(r.change_id),
            txid=None if r.txid is None else int(r.txid),
            table_name=str(r.table_name),
            op=str(r.op),
            pk=r.pk,
            before=r.before,
            after=r.after,
            captured_at=r.captured_at,
            pos=int(r.pos),
        )
        for r in rows
    ]


def backlog(conn: Connection, last_confirmed_pos: int) -> int:
    """Changes not yet confirmed by the broker (pending or claimed)."""
    return int(
        conn.execute(
            select(func.count()).where(
                (change.c.pos.is_(None)) | (change.c.pos > last_confirmed_pos)
            )
        ).scalar_one()
    )


def claim(conn: Connection, dialect: CaptureDialect, limit: int) -> int:
    """Give positions to up to ``limit`` visible pending rows; return how many.

    Run in its own transaction; see the module docstring for why this keeps order.
    """
    pending = (
        select(change.c.change_id)
        .where(change.c.pos.is_(None))
        .order_by(change.c.change_id)
        .limit(limit)
    )
    if conn.execute(pending.limit(1)).first() is None:
        return 0  # idle: no lock taken, nothing written
    dialect.lock_claims(conn)
    safe = list(conn.execute(pending).scalars())  # again, under the lock
    if not safe:
        return 0
    highest = conn.execute(select(func.max(change.c.pos))).scalar()
    base = max(int(highest or 0), read_state(conn).last_confirmed_pos)
    conn.execute(
        update(change)
        .where(change.c.change_id == bindparam("claimed_id"), change.c.pos.is_(None))
        .values(pos=bindparam("new_pos")),
        [{"claimed_id": cid, "new_pos": base + n} for n, cid in enumerate(safe, start=1)],
    )
    return len(safe)


def confirm(conn: Connection, pos: int) -> None:
    """Record that the broker confirmed every change up to ``pos``."""
    conn.execute(
        update(relay_state)
        .where(relay_state.c.last_confirmed_pos < pos)
        .values(last_confirmed_pos=pos)
    )
