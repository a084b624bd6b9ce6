"""Positions of the last legacy change applied, per change stream, and its snapshot state.

Written in the same transaction as the change's effect: a change at or below the
stored position has had its effect already and is skipped.

A stream's snapshot state is ``None`` normally, or:

- ``awaiting``: after a reset; every change but a snapshot read is skipped (the coming
  snapshot contains its effect) until the first snapshot read arrives;
- ``loading``: from the first snapshot read of an empty (reset or new) stream until a
  heartbeat of its source. Rows are arriving as snapshot reads interleaved with live
  changes; a live change that refers to a row whose snapshot read has not come yet is
  skipped (that read, later in the stream, shows the row as the change left it). The
  relay only sends a heartbeat when it has published everything captured, snapshot
  rows included, so after one every row has arrived.
"""

from __future__ import annotations

import abc
from collections.abc import Collection
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Connection

from new_domain.adapters import orm
from new_domain.adapters.bulk import fetch, insert_rows, member, update_rows

AWAITING, LOADING = "awaiting", "loading"

State = tuple[int | None, str | None]
"""A stream's position and snapshot state."""


class AbstractChangePositions(abc.ABC):
    def preload(self, streams: Collection[str]) -> None:
        """Read (and lock) these streams' positions ahead (an optimisation)."""
        return None  # an optional optimisation: nothing to do without a store

    @abc.abstractmethod
    def get(self, stream: str) -> int | None:
        """Position of the last change applied from ``stream`` (None: nothing yet)."""

    @abc.abstractmethod
    def snapshot_state(self, stream: str) -> str | None: ...

    @abc.abstractmethod
    def set(self, stream: str, position: int, snapshot_state: str | None = None) -> None:
        """Store ``position`` as the last applied, and the stream's snapshot state."""

    @abc.abstractmethod
    def snapshot_loaded(self, source: str) -> None:
        """A heartbeat of ``source`` came: its streams are done loading a snapshot."""


class SqlAlchemyChangePositions(AbstractChangePositions):
    """``applied_change_position`` rows; each row is locked when first read (PostgreSQL),
    so two consumers of one stream cannot both apply the same change.

    New positions are kept in memory and written by :meth:`flush`, which the unit of
    work calls just before it commits: one statement per kind of write.
    """

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self._known: dict[str, State] = {}
        self._stored: dict[str, State] = {}

    def preload(self, streams: Collection[str]) -> None:
        table = orm.applied_change_position
        c = self.connection
        wanted = sorted({s for s in streams if s not in self._known})
        if not wanted:
            return
        for stream in wanted:  # until the rows arrive (pipelined reads come later)
            self._known[stream] = self._stored[stream] = (None, None)

        def found(rows: list[Any]) -> None:
            for stream, position, state in rows:
                self._known[stream] = self._stored[stream] = (int(position), state)

        fetch(
            c,
            "positions",
            lambda: (
                select(table.c.stream, table.c.position, table.c.snapshot_state)
                .where(member(table.c.stream, "streams", c))
                .order_by(table.c.stream)
                .with_for_update()
            ),
            {"streams": wanted},
            found,
        )

    def get(self, stream: str) -> int | None:
        if stream not in self._known:
            self.preload([stream])
        return self._known[stream][0]

    def snapshot_state(self, stream: str) -> str | None:
        if stream not in self._known:
            self.preload([stream])
        return self._known[stream][1]

    def set(self, stream: str, position: int, snapshot_state: str | None = None) -> None:
        if stream not in self._known:
            self.preload([stream])
        self._known[stream] = (position, snapshot_state)

    def snapshot_loaded(self, source: str) -> None:
        table = orm.applied_change_position
        loading = self.connection.execute(
            select(table.c.stream)
            .where(table.c.snapshot_state == LOADING)
            .order_by(table.c.stream)
            .with_for_update()
        ).scalars()
        self.preload([stream for stream in loading if _of(stream, source)])
        for stream, (position, state) in list(self._known.items()):
            if state == LOADING and position is not None and _of(stream, source):
                self._known[stream] = (position, None)

    def flush(self) -> None:
        """Store the positions set since the last flush."""
        table = orm.applied_change_position
        new: list[dict[str, object]] = []
        changed: list[dict[str, object]] = []
        for stream, (position, state) in self._known.items():
            stored = self._stored.get(stream)
            if position is None or (position, state) == stored:
                continue
            row = {"stream": stream, "position": position, "snapshot_state": state}
            (new if stored is None or stored[0] is None else changed).append(row)
            self._stored[stream] = (position, state)
        insert_rows(self.connection, table, new)
        update_rows(self.connection, table, changed, key=["stream"])


class InMemoryChangePositions(AbstractChangePositions):
    def __init__(self) -> None:
        self.positions: dict[str, int] = {}
        self.states: dict[str, str] = {}

    def get(self, stream: str) -> int | None:
        return self.positions.get(stream)

    def snapshot_state(self, stream: str) -> str | None:
        return self.states.get(stream)

    def set(self, stream: str, position: int, snapshot_state: str | None = None) -> None:
        self.positions[stream] = position
        if snapshot_state is None:
            self.states.pop(stream, None)
        else:
            self.states[stream] = snapshot_state

    def snapshot_loaded(self, source: str) -> None:
        for stream, state in list(self.states.items()):
            if state == LOADING and _of(stream, source):
                del self.states[stream]


def _of(stream: str, source: str) -> bool:
    """Is ``stream`` (``<name>/<db>[/<install>]``) one of ``source``'s (``<name>/<db>``)?"""
    return stream == source or stream.startswith(source + "/")
