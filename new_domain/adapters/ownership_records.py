"""What the consumer reads and records about write ownership (docs/write-path.md).

In the unit of work's transaction, :class:`AbstractWriteOwnership` reads a write
group's ownership, settles a move when its fence comes back, and records **ownership
violations** (legacy changed a product the new system owns, on its own) and **echo
anomalies** (legacy's rows of an echo show another decision than the new system took).
Both are kept until an operator resolves them, saying who and why; the functions at the
bottom list, count and resolve them for ``strangler status`` and ``strangler ownership``.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.engine import Connection

from new_domain.adapters import orm
from new_domain.adapters.bulk import insert_rows
from new_domain.adapters.ownership import (
    Lock,
    read_ownership,
    read_ownership_ahead,
    settle_ownership,
)
from new_domain.domain.ownership import Ownership

VIOLATION, ECHO_ANOMALY = "violation", "anomaly"
"""The two kinds of ownership problem an operator resolves."""


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class OwnershipViolation:
    """A legacy change, not an echo, to a product the new system owns; not applied."""

    group_name: str
    sku: str
    change_id: str | None
    stream: str | None
    position: int | None
    detail: str
    recorded_at: datetime = field(default_factory=_now)
    id: int | None = None
    resolved_at: datetime | None = None
    resolved_by: str | None = None
    resolution: str | None = None


@dataclass(frozen=True)
class EchoAnomaly:
    """An echo whose legacy rows show another decision than the new system's: what it
    decided (``expected``, from the origin marker) and what the rows show (``found``)."""

    decision_id: str | None
    route: str | None
    sku: str | None
    expected: str
    found: str
    change_id: str | None
    recorded_at: datetime = field(default_factory=_now)
    id: int | None = None
    resolved_at: datetime | None = None
    resolved_by: str | None = None
    resolution: str | None = None


_RECORDED = ("id", "resolved_at", "resolved_by", "resolution")


class AbstractWriteOwnership(abc.ABC):
    """Write ownership in the unit of work's transaction: the new write path reads it
    (``FOR SHARE``) where it decides; the consumer settles fences and records what broke
    ownership."""

    @abc.abstractmethod
    def read(self, group: str, *, lock: Lock = None) -> Ownership:
        """The group's ownership (legacy, epoch 0, when it never moved); ``lock``
        ``"share"`` or ``"update"`` locks its row until the transaction ends."""

    def read_ahead(self, group: str, *, lock: Lock = None) -> Callable[[], Ownership]:
        """:meth:`read`, sent with the reads of an enclosing ``reading_ahead`` block (in
        their order: its lock is taken first); call the result after the block."""
        ownership = self.read(group, lock=lock)
        return lambda: ownership

    @abc.abstractmethod
    def settle(self, group: str, epoch: int, shard: tuple[str, int] | None = None) -> bool:
        """The fence of ``epoch`` came back: the group goes active if that is still its
        epoch and it is moving (True); otherwise nothing changes. With ``shard`` (the
        shard stream that applied it, and how many shards there are), only once the
        fence came back through every shard."""

    @abc.abstractmethod
    def record_violation(self, violation: OwnershipViolation) -> None: ...

    @abc.abstractmethod
    def record_echo_anomaly(self, anomaly: EchoAnomaly) -> None: ...


class SqlAlchemyWriteOwnership(AbstractWriteOwnership):
    """Reads and settles at once; violations and anomalies are inserted together just
    before the commit."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self._violations: list[dict[str, Any]] = []
        self._anomalies: list[dict[str, Any]] = []

    def read(self, group: str, *, lock: Lock = None) -> Ownership:
        return read_ownership(self.connection, group, lock=lock)

    def read_ahead(self, group: str, *, lock: Lock = None) -> Callable[[], Ownership]:
        return read_ownership_ahead(self.connection, group, lock=lock)

    def settle(self, group: str, epoch: int, shard: tuple[str, int] | None = None) -> bool:
        if shard is not None:
            # the shards apply the fence in concurrent transactions: each takes the
            # group's row first, so the last one counts every other one's fence
            read_ownership(self.connection, group, lock="update")  # its gate, then its row
            stream, count = shard
            fences = orm.shard_fence
            row = {"group_name": group, "epoch": epoch, "stream": stream, "shard_count": count}
            insert_rows(
                self.connection,
                fences,
                [row],
                key=["group_name", "epoch", "stream"],
                on_conflict="nothing",
            )
            through = self.connection.scalar(
                select(func.count()).where(
                    fences.c.group_name == group,
                    fences.c.epoch == epoch,
                    fences.c.shard_count == count,
                )
            )
            if int(through or 0) < count:
                return False
        return settle_ownership(self.connection, group, epoch)

    def record_violation(self, violation: OwnershipViolation) -> None:
        self._violations.append(_row(violation))

    def record_echo_anomaly(self, anomaly: EchoAnomaly) -> None:
        self._anomalies.append(_row(anomaly))

    def flush(self) -> None:
        insert_rows(self.connection, orm.ownership_violation, self._violations)
        insert_rows(self.connection, orm.echo_anomaly, self._anomalies)
        self._violations.clear()
        self._anomalies.clear()


def _row(record: OwnershipViolation | EchoAnomaly) -> dict[str, Any]:
    return {k: v for k, v in asdict(record).items() if k not in _RECORDED}


# -- for operators --------------------------------------------------------------------------


class UnknownProblem(LookupError):
    """No ownership violation or echo anomaly with that id."""


class AlreadyResolved(ValueError):
    """The ownership violation or echo anomaly was resolved before."""


def write_ownerships(connection: Connection) -> list[Ownership]:
    """Every write group's ownership that was ever moved, by group name."""
    t = orm.write_ownership
    groups = connection.scalars(select(t.c.group_name).order_by(t.c.group_name)).all()
    return [read_ownership(connection, group) for group in groups]


def unresolved_counts(connection: Connection) -> dict[str, int]:
    """How many ownership violations and echo anomalies nobody resolved yet."""
    counts = {}
    for kind, table in ((VIOLATION, orm.ownership_violation), (ECHO_ANOMALY, orm.echo_anomaly)):
        query = select(func.count()).select_from(table).where(table.c.resolved_at.is_(None))
        counts[kind] = int(connection.scalar(query) or 0)
    return counts


def list_violations(
    connection: Connection, limit: int, *, resolved: bool = False
) -> list[OwnershipViolation]:
    """The oldest ``limit`` unresolved violations (with ``resolved``: every one), oldest
    first."""
    t = orm.ownership_violation
    query = select(t).order_by(t.c.id).limit(limit)
    if not resolved:
        query = query.where(t.c.resolved_at.is_(None))
    return [OwnershipViolation(**row) for row in connection.execute(query).mappings()]


def list_echo_anomalies(
    connection: Connection, limit: int, *, resolved: bool = False
) -> list[EchoAnomaly]:
    """The oldest ``limit`` unresolved echo anomalies (with ``resolved``: every one),
    oldest first."""
    t = orm.echo_anomaly
    query = select(t).order_by(t.c.id).limit(limit)
    if not resolved:
        query = query.where(t.c.resolved_at.is_(None))
    return [EchoAnomaly(**row) for row in connection.execute(query).mappings()]


def resolve_problem(
    connection: Connection, kind: str, problem_id: int, by: str, reason: str
) -> datetime:
    """Mark one violation or echo anomaly resolved, by whom and why, in the caller's
    transaction; raises :class:`UnknownProblem` or :class:`AlreadyResolved`."""
    table = orm.ownership_violation if kind == VIOLATION else orm.echo_anomaly
    found = connection.execute(
        select(table.c.resolved_at, table.c.resolved_by)
        .where(table.c.id == problem_id)
        .with_for_update()
    ).first()
    if found is None:
        raise UnknownProblem(f"no {_name(kind)} {problem_id}")
    if found.resolved_at is not None:
        raise AlreadyResolved(
            f"{_name(kind)} {problem_id} was resolved at"
            f" {found.resolved_at.isoformat(timespec='seconds')} by {found.resolved_by or '-'}"
        )
    at = _now()
    connection.execute(
        update(table)
        .where(table.c.id == problem_id)
        .values(resolved_at=at, resolved_by=by, resolution=reason)
    )
    return at


def _name(kind: str) -> str:
    return "ownership violation" if kind == VIOLATION else "echo anomaly"
