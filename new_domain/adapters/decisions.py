"""Decision parity in the new database: counts per write route, and every difference.

Verdicts are kept in memory and written just before the unit of work commits: the
counts by adding to ``decision_parity`` (one ``INSERT ... ON CONFLICT`` adding the
batch's counts on PostgreSQL and SQLite), the differences as rows of
``decision_difference``. Agreements leave no row of their own, so judging every legacy
decision costs the consumer one statement per batch. With journaling on, each decision's
journal entry is a row of ``decision_journal`` (:mod:`new_domain.ingest.journal`),
inserted with the batch's other rows.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from new_domain.adapters import orm
from new_domain.adapters.bulk import insert_rows
from new_domain.ingest.ports import (
    UNCLASSIFIED,
    AbstractDecisionLog,
    DecisionCount,
    Verdict,
)


class SqlAlchemyDecisionLog(AbstractDecisionLog):
    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self._agree: Counter[str] = Counter()
        self._differ: Counter[str] = Counter()
        self._differences: list[dict[str, Any]] = []
        self._journal: list[dict[str, Any]] = []

    def record(self, verdict: Verdict, change_id: str | None, journal: str | None = None) -> None:
        if journal is not None:
            self._journal.append(
                {
                    "recorded_at": datetime.now(UTC),
                    "route": verdict.route,
                    "sku": verdict.sku,
                    "agreed": verdict.agree,
                    "entry": journal,
                    "change_id": change_id,
                }
            )
        if verdict.agree:
            self._agree[verdict.route] += 1
            return
        self._differ[verdict.route] += 1
        self._differences.append(
            {
                "recorded_at": datetime.now(UTC),
                "route": verdict.route,
                "sku": verdict.sku,
                "legacy": verdict.legacy,
                "new": verdict.new,
                "state": verdict.state,
                "change_id": change_id,
            }
        )

    def unclassified(self) -> None:
        self._differ[UNCLASSIFIED] += 1

    def flush(self) -> None:
        routes = sorted(set(self._agree) | set(self._differ))
        if routes:
            rows = [
                {"route": r, "agree": self._agree[r], "differ": self._differ[r]} for r in routes
            ]
            _add_counts(self.connection, rows)
        insert_rows(self.connection, orm.decision_difference, self._differences)
        insert_rows(self.connection, orm.decision_journal, self._journal)
        self._journal.clear()
        self._agree.clear()
        self._differ.clear()
        self._differences.clear()


def _add_counts(connection: Connection, rows: list[dict[str, Any]]) -> None:
    t = orm.decision_parity
    dialect = connection.dialect.name
    if dialect in ("postgresql", "sqlite"):
        insert = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(t)
        statement = insert.on_conflict_do_update(
            index_elements=["route"],
            set_={
                "agree": t.c.agree + insert.excluded.agree,
                "differ": t.c.differ + insert.excluded.differ,
            },
        )
        connection.execute(statement, rows)
        return
    for row in rows:  # another engine: update, else insert
        done = connection.execute(
            update(t)
            .where(t.c.route == row["route"])
            .values(agree=t.c.agree + row["agree"], differ=t.c.differ + row["differ"])
        )
        if not done.rowcount:
            connection.execute(t.insert().values(**row))


@dataclass(frozen=True)
class Difference:
    id: int
    recorded_at: datetime
    route: str
    sku: str
    legacy: str
    new: str
    state: str
    change_id: str | None


def decision_counts(connection: Connection) -> list[DecisionCount]:
    """Every route's counts (``unclassified`` counts transactions under ``differ``)."""
    t = orm.decision_parity
    rows = connection.execute(select(t.c.route, t.c.agree, t.c.differ).order_by(t.c.route))
    return [DecisionCount(route, int(agree), int(differ)) for route, agree, differ in rows]


def latest_differences(
    connection: Connection, limit: int, route: str | None = None
) -> list[Difference]:
    """The newest ``limit`` differences (of ``route``), newest first."""
    t = orm.decision_difference
    statement = select(t).order_by(t.c.id.desc()).limit(limit)
    if route is not None:
        statement = statement.where(t.c.route == route)
    return [
        Difference(
            row.id,
            row.recorded_at,
            row.route,
            row.sku,
            row.legacy,
            row.new,
            row.state,
            row.change_id,
        )
        for row in connection.execute(statement)
    ]


@dataclass(frozen=True)
class JournalRow:
    id: int
    recorded_at: datetime
    route: str
    sku: str
    agreed: bool
    entry: str
    change_id: str | None


def journal_size(connection: Connection, route: str | None = None) -> int:
    """How many decisions the journal holds (of ``route``)."""
    t = orm.decision_journal
    statement = select(func.count()).select_from(t)
    if route is not None:
        statement = statement.where(t.c.route == route)
    return int(connection.scalar(statement) or 0)


def journal_rows(
    connection: Connection, after: int, limit: int, route: str | None = None
) -> list[JournalRow]:
    """The next ``limit`` journaled decisions (of ``route``) after id ``after``, oldest
    first (read them chunk by chunk: the journal can be large)."""
    t = orm.decision_journal
    statement = select(t).where(t.c.id > after).order_by(t.c.id).limit(limit)
    if route is not None:
        statement = statement.where(t.c.route == route)
    return [
        JournalRow(
            row.id, row.recorded_at, row.route, row.sku, bool(row.agreed), row.entry, row.change_id
        )
        for row in connection.execute(statement)
    ]


def prune_journal(engine: Engine, before: datetime, chunk: int = 10_000) -> int:
    """Delete the journaled decisions recorded before ``before``, oldest first, in
    transactions of at most ``chunk`` ids (the consumer goes on writing); how many went.
    Ids grow with the time of recording, so the range up to the last old one is read
    once and then deleted by key."""
    t = orm.decision_journal
    with engine.connect() as connection:
        last = connection.scalar(select(func.max(t.c.id)).where(t.c.recorded_at < before))
        first = connection.scalar(select(func.min(t.c.id)))
    if last is None or first is None:
        return 0
    deleted = 0
    for low in range(int(first), int(last) + 1, chunk):
        high = min(low + chunk - 1, int(last))
        with engine.begin() as connection:
            in_range = t.c.id.between(low, high) & (t.c.recorded_at < before)
            deleted += int(connection.execute(delete(t).where(in_range)).rowcount or 0)
    return deleted
