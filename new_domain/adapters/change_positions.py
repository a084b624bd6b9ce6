"""The SQL implementation of the stream-position port (``applied_change_position``).

The rules (positions written with the effects, snapshot states) are those of
:class:`new_domain.ingest.ports.AbstractChangePositions`.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Connection

from new_domain.adapters import orm
from new_domain.adapters.bulk import fetch, insert_rows, member, update_rows
from new_domain.ingest.ports import LOADING, AbstractChangePositions, stream_of

State = tuple[int | None, str | None, str | None]
"""A stream's position, snapshot state and echo (transaction id)."""


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
            self._known[stream] = self._stored[stream] = (None, None, None)

        def found(rows: list[Any]) -> None:
            for stream, position, state, echo in rows:
                self._known[stream] = self._stored[stream] = (int(position), state, echo)

        fetch(
            c,
            "positions",
            lambda: (
                select(table.c.stream, table.c.position, table.c.snapshot_state, table.c.echo_txid)
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
        self._known[stream] = (position, snapshot_state, self._known[stream][2])

    def echo(self, stream: str) -> str | None:
        if stream not in self._known:
            self.preload([stream])
        return self._known[stream][2]

    def set_echo(self, stream: str, transaction_id: str | None) -> None:
        if stream not in self._known:
            self.preload([stream])
        position, state, _ = self._known[stream]
        self._known[stream] = (position, state, transaction_id)

    def snapshot_loaded(self, source: str) -> None:
        table = orm.applied_change_position
        loading = self.connection.execute(
            select(table.c.stream)
            .where(table.c.snapshot_state == LOADING)
            .order_by(table.c.stream)
            .with_for_update()
        ).scalars()
        self.preload([stream for stream in loading if stream_of(stream, source)])
        for stream, (position, state, echo) in list(self._known.items()):
            if state == LOADING and position is not None and stream_of(stream, source):
                self._known[stream] = (position, None, echo)

    def flush(self) -> None:
        """Store the positions set since the last flush."""
        table = orm.applied_change_position
        new: list[dict[str, object]] = []
        changed: list[dict[str, object]] = []
        for stream, (position, state, echo) in self._known.items():
            stored = self._stored.get(stream)
            if position is None or (position, state, echo) == stored:
                continue
            row = {"stream": stream, "position": position, "snapshot_state": state}
            row["echo_txid"] = echo
            (new if stored is None or stored[0] is None else changed).append(row)
            self._stored[stream] = (position, state, echo)
        insert_rows(self.connection, table, new)
        update_rows(self.connection, table, changed, key=["stream"])
