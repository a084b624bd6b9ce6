"""The change table read as a log: claiming positions, reading, checkpointing.

Why publishing in ``pos`` order loses nothing and keeps commit order:

1. Ids are not a cursor. ``change_id`` is taken when a row changes, not when its
   transaction commits, so a reader that remembers "the highest id seen" skips a
   transaction that commits after one with higher ids. Instead the relay *claims* rows: it
   gives ``pos`` values (strictly increasing: after the highest ``pos`` and the
   checkpoint) to pending rows (``pos IS NULL``) and publishes in ``pos`` order. A row that
   commits late is still pending at a later claim: it is published late, never skipped.

2. What a claim takes. Under the claim lock, one statement reads the first ``limit``
   pending rows in ``change_id`` order. Only committed rows are visible, and a
   transaction's rows become visible together, at its commit. The claim trims this prefix
   to whole transactions: it keeps the longest prefix in which each transaction has all of
   its pending rows (when the first transaction alone is longer, the prefix is extended to
   its end). It positions the kept rows transaction by transaction, ordered by each
   transaction's last ``change_id``, a transaction's rows in ``change_id`` order, and
   marks each row's place in its transaction (``tx_order``, ``tx_table_order``,
   ``tx_last``).

3. Why dependencies keep their order. Say transaction B depends on A: B changed a row A
   changed (a row lock made B wait for A's commit), or B wrote something relying on what A
   wrote (B read it after A committed). The change id of that write of B is taken after
   A committed, so after every id of A: B's last id is higher than A's. And B commits after
   A, so B is never visible without A. Hence in one claim A comes first (lower last id);
   and when B is claimed, A is claimed at the same time or before: A was visible then, and
   every id of A is at most A's last id, below B's, inside the kept prefix. Transactions
   that overlapped in time without depending on each other touched no common row, so
   their relative order carries no meaning. This needs no transaction-id horizon (the
   ``txid < xmin`` rule): a long transaction elsewhere on the server never holds
   publication back.

4. The premise "a change written after a commit has a higher id than that transaction's
   changes" holds on each dialect:

   - PostgreSQL: ids come from a sequence, handed out in call order across sessions (it
     must not be created with ``CACHE`` > 1). Snapshot visibility is atomic per
     transaction, and a transaction's locks are released after it became visible.
   - SQLite: one writer at a time: a transaction's rows have consecutive ids and
     transactions commit in id order; every committed row is safe to claim.
   - MariaDB: InnoDB ``AUTO_INCREMENT`` on single-row (or known-count) inserts takes ids
     from one counter in call order; the relay reads in READ COMMITTED, so a claim sees
     exactly the committed rows. See :mod:`legacy_bridge.capture_mariadb` for the
     ``innodb_autoinc_lock_mode`` caveats.

5. Transaction ids only group rows; the order argument above relies on them being exact
   (a transaction whose rows carried two ids would still be ordered correctly; two
   transactions under one id could be placed together after a third that depends on the
   first). PostgreSQL's ids are exact, SQLite's commit groups are whole consecutive
   transactions (safe), MariaDB's detection has the documented limits. Rows without a
   transaction id (captured by an older install) each stand alone.

6. After the broker confirmed every message up to position P, the relay stores
   ``last_confirmed_pos = P``; on restart, rows with ``pos > last_confirmed_pos`` are
   published again (same message id) before anything new is claimed. Consumers
   deduplicate by message id or ``source.seq``.

One relay runs per legacy database; claims are serialised anyway
(:meth:`~legacy_bridge.capture.CaptureDialect.lock_claims`) so positions never repeat.
A claim holds the ids of the transactions it takes in memory: one legacy transaction of a
million rows is claimed whole (about 100 MB).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import bindparam, case, func, inspect, select, text, update
from sqlalchemy.engine import Connection

from legacy_bridge.capture import CaptureDialect
from legacy_bridge.errors import BridgeNotInstalled
from legacy_bridge.tables import (
    ADDED_CHANGE_COLUMNS,
    ADDED_STATE_COLUMNS,
    CAPTURE_TABLE,
    CHANGE_TABLE,
    STATE_TABLE,
    change,
    relay_state,
)

_IN_CHUNK = 500  # ids per IN (...) list


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
    tx_order: int | None = None
    tx_table_order: int | None = None
    tx_last: bool | None = None
    snapshot_last: bool = False


@dataclass(frozen=True)
class RelayState:
    """The single row of ``strangler_relay_state``."""

    install_id: str
    server_name: str
    last_confirmed_pos: int
    last_confirmed_at: datetime | None = None
    last_captured_at: datetime | None = None
    relay_seen_at: datetime | None = None


@dataclass(frozen=True)
class _Pending:
    change_id: int
    txid: int | None
    table_name: str


_Placed = tuple[_Pending, int | None, int | None, bool | None]
"""A pending row with its order in its transaction, in its table there, and last flag."""


def check_installed(conn: Connection, schema: str | None) -> None:
    """Raise :class:`BridgeNotInstalled` unless the bridge's current tables exist."""
    inspector = inspect(conn)
    for table in (CHANGE_TABLE, STATE_TABLE):
        if not inspector.has_table(table, schema=schema):
            raise BridgeNotInstalled(
                f"change capture is not installed in this database (no {table}): "
                "run 'strangler bridge install' first"
            )
    columns = {c["name"] for c in inspector.get_columns(CHANGE_TABLE, schema=schema)}
    columns |= {c["name"] for c in inspector.get_columns(STATE_TABLE, schema=schema)}
    missing = set(ADDED_CHANGE_COLUMNS + ADDED_STATE_COLUMNS) - columns
    if missing or not inspector.has_table(CAPTURE_TABLE, schema=schema):
        raise BridgeNotInstalled(
            "change capture was installed by an older version of the bridge: run "
            "'strangler bridge install' again to upgrade it (pending changes are kept)"
        )


def read_state(conn: Connection) -> RelayState:
    """The relay's state row."""
    row = conn.execute(select(relay_state)).first()
    if row is None:
        raise BridgeNotInstalled(
            "change capture is not installed in this database (no relay state): "
            "run 'strangler bridge install' first"
        )
    return RelayState(
        install_id=str(row.install_id),
        server_name=str(row.server_name),
        last_confirmed_pos=int(row.last_confirmed_pos),
        last_confirmed_at=row.last_confirmed_at,
        last_captured_at=row.last_captured_at,
        relay_seen_at=row.relay_seen_at,
    )


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
            tx_order=r.tx_order,
            tx_table_order=r.tx_table_order,
            tx_last=None if r.tx_last is None else bool(r.tx_last),
            snapshot_last=bool(r.snapshot_last),
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


def claim(
    conn: Connection, dialect: CaptureDialect, limit: int, now: datetime | None = None
) -> int:
    """Give positions to about ``limit`` visible pending rows, whole transactions only;
    return how many. Run in its own transaction; see the module docstring."""
    first = select(change.c.change_id).where(change.c.pos.is_(None)).limit(1)
    if conn.execute(first).first() is None:
        return 0  # idle: no lock taken, nothing written
    dialect.lock_claims(conn)
    rows = _read_pending(conn, limit=limit)  # again, under the lock
    if not rows:
        return 0
    ordered = _in_commit_order(_whole_transactions(conn, rows))
    highest = conn.execute(select(func.max(change.c.pos))).scalar()
    base = max(int(highest or 0), read_state(conn).last_confirmed_pos)
    claimed_at = now or datetime.now(UTC)
    _assign(conn, ordered, base, claimed_at)
    return len(ordered)


_ASSIGN_POSTGRES = f"""
UPDATE {CHANGE_TABLE} AS c
SET pos = u.pos, tx_order = u.tx_order, tx_table_order = u.tx_table_order,
    tx_last = u.tx_last, claimed_at = :claimed_at
FROM unnest(
    CAST(:ids AS bigint[]), CAST(:positions AS bigint[]), CAST(:orders AS integer[]),
    CAST(:table_orders AS integer[]), CAST(:lasts AS boolean[])
) AS u(change_id, pos, tx_order, tx_table_order, tx_last)
WHERE c.change_id = u.change_id AND c.pos IS NULL
"""


def _assign(conn: Connection, rows: Sequence[_Placed], base: int, claimed_at: datetime) -> None:
    """Store positions ``base + 1...`` and transaction places. PostgreSQL: one UPDATE
    joined to the arrays of values (one statement for the batch); elsewhere one UPDATE
    per row, sent as one executemany (PyMySQL makes one round trip per row)."""
    if conn.dialect.name == "postgresql":
        conn.execute(
            text(_ASSIGN_POSTGRES),
            {
                "ids": [row.change_id for row, _, _, _ in rows],
                "positions": list(range(base + 1, base + 1 + len(rows))),
                "orders": [order for _, order, _, _ in rows],
                "table_orders": [table_order for _, _, table_order, _ in rows],
                "lasts": [last for _, _, _, last in rows],
                "claimed_at": claimed_at,
            },
        )
        return
    conn.execute(
        update(change)
        .where(change.c.change_id == bindparam("b_id"), change.c.pos.is_(None))
        .values(
            pos=bindparam("b_pos"),
            tx_order=bindparam("b_order"),
            tx_table_order=bindparam("b_table_order"),
            tx_last=bindparam("b_last"),
            claimed_at=bindparam("b_at"),
        ),
        [
            {
                "b_id": row.change_id,
                "b_pos": base + n,
                "b_order": order,
                "b_table_order": table_order,
                "b_last": last,
                "b_at": claimed_at,
            }
            for n, (row, order, table_order, last) in enumerate(rows, start=1)
        ],
    )


def _read_pending(
    conn: Connection, *, limit: int | None = None, up_to: int | None = None
) -> list[_Pending]:
    query = (
        select(change.c.change_id, change.c.txid, change.c.table_name)
        .where(change.c.pos.is_(None))
        .order_by(change.c.change_id)
    )
    if up_to is not None:
        query = query.where(change.c.change_id <= up_to)
    if limit is not None:
        query = query.limit(limit)
    return [
        _Pending(int(r.change_id), None if r.txid is None else int(r.txid), str(r.table_name))
        for r in conn.execute(query)
    ]


def _transaction_ends(conn: Connection, txids: Iterable[int]) -> dict[int, int]:
    """The highest pending change id of each transaction (all its rows are committed)."""
    ends: dict[int, int] = {}
    ids = sorted(txids)
    for start in range(0, len(ids), _IN_CHUNK):
        rows = conn.execute(
            select(change.c.txid, func.max(change.c.change_id))
            .where(change.c.pos.is_(None), change.c.txid.in_(ids[start : start + _IN_CHUNK]))
            .group_by(change.c.txid)
        )
        ends.update((int(txid), int(last)) for txid, last in rows)
    return ends


def _whole_transactions(conn: Connection, rows: list[_Pending]) -> list[_Pending]:
    """The longest prefix of ``rows`` that holds whole transactions; if even the first
    transaction goes past ``rows``, the pending rows up to its end (and so on)."""
    while True:
        ends = _transaction_ends(conn, {r.txid for r in rows if r.txid is not None})
        reach = cut = 0
        for index, row in enumerate(rows, start=1):
            end = row.change_id if row.txid is None else ends.get(row.txid, row.change_id)
            reach = max(reach, end)
            if reach == row.change_id:
                cut = index
        if cut:
            return rows[:cut]
        rows = _read_pending(conn, up_to=reach)  # one snapshot: a prefix again


def _in_commit_order(rows: Sequence[_Pending]) -> list[_Placed]:
    """Rows grouped by transaction, transactions ordered by their last change id, each
    with its 1-based order in the transaction, in its table there, and the last flag."""
    groups: dict[object, list[_Pending]] = defaultdict(list)
    for row in rows:  # already in change_id order
        groups[row.txid if row.txid is not None else ("row", row.change_id)].append(row)
    ordered: list[_Placed] = []
    for members in sorted(groups.values(), key=lambda m: m[-1].change_id):
        if members[0].txid is None:
            ordered.append((members[0], None, None, None))
            continue
        per_table: dict[str, int] = defaultdict(int)
        for order, row in enumerate(members, start=1):
            per_table[row.table_name] += 1
            ordered.append((row, order, per_table[row.table_name], order == len(members)))
    return ordered


def mark_seen(conn: Connection, now: datetime) -> None:
    """Record that a relay is running now (``bridge status`` shows how long ago)."""
    conn.execute(update(relay_state).values(relay_seen_at=now))


def confirm(conn: Connection, pos: int, captured_at: datetime, now: datetime) -> None:
    """Record that the broker confirmed every change up to ``pos``; ``captured_at`` is
    the newest capture time among them."""
    conn.execute(
        update(relay_state)
        .where(relay_state.c.last_confirmed_pos < pos)
        .values(
            last_confirmed_pos=pos,
            last_confirmed_at=now,
            relay_seen_at=now,
            last_captured_at=case(
                (relay_state.c.last_captured_at.is_(None), captured_at),
                (relay_state.c.last_captured_at < captured_at, captured_at),
                else_=relay_state.c.last_captured_at,
            ),
        )
    )
