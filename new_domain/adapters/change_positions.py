"""Positions of the last legacy change applied, per change stream.

Written in the same transaction as the change's effect: a change at or below the
stored position has had its effect already and is skipped.
"""

from __future__ import annotations

import abc

from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

from new_domain.adapters import orm


class AbstractChangePositions(abc.ABC):
    @abc.abstractmethod
    def get(self, stream: str) -> int | None:
        """Position of the last change applied from ``stream`` (None: nothing yet)."""

    @abc.abstractmethod
    def set(self, stream: str, position: int) -> None: ...


class SqlAlchemyChangePositions(AbstractChangePositions):
    """``applied_change_position`` rows; the row is locked on first read (PostgreSQL),
    so two consumers of one stream cannot both apply the same change.

    New positions are kept in memory and written by :meth:`write`, which the unit of
    work calls just before it commits: one statement per stream and transaction.
    """

    def __init__(self, session: Session) -> None:
        self.session = session
        self._known: dict[str, int | None] = {}
        self._stored: dict[str, int | None] = {}

    def get(self, stream: str) -> int | None:
        if stream not in self._known:
            table = orm.applied_change_position
            stored = self.session.connection().scalar(
                select(table.c.position).where(table.c.stream == stream).with_for_update()
            )
            self._known[stream] = self._stored[stream] = stored
        return self._known[stream]

    def set(self, stream: str, position: int) -> None:
        self.get(stream)
        self._known[stream] = position

    def write(self) -> None:
        """Store the positions set since the last write."""
        table = orm.applied_change_position
        for stream, position in self._known.items():
            stored = self._stored.get(stream)
            if position is None or position == stored:
                continue
            if stored is None:
                self.session.connection().execute(
                    insert(table).values(stream=stream, position=position)
                )
            else:
                self.session.connection().execute(
                    update(table).where(table.c.stream == stream).values(position=position)
                )
            self._stored[stream] = position


class InMemoryChangePositions(AbstractChangePositions):
    def __init__(self) -> None:
        self.positions: dict[str, int] = {}

    def get(self, stream: str) -> int | None:
        return self.positions.get(stream)

    def set(self, stream: str, position: int) -> None:
        self.positions[stream] = position
