"""The ``dead_letter`` table: messages that failed, how often, why, and what became of them.

A row is *retrying* while its message keeps failing (``attempts`` counts every failed
try, across redeliveries and restarts), *dead* once it was given up and sent to the
dead-letter queue, and *resolved* when it was applied after all (a later attempt or a
replay). A dead row keeps the message's stream position: the consumer skips the
position (it is at or below the stored one), and a replay applies exactly the dead
positions, once. Dead rows are also the dead-letter exchange's outbox: they are
published from here (``published_at``), so a crash between giving up on a message and
publishing it loses nothing.
"""

from __future__ import annotations

import abc
import hashlib
import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.engine import Connection

from broker import Message
from new_domain.adapters import orm
from new_domain.adapters.bulk import fetch, member
from new_domain.adapters.chunks import chunked
from new_domain.adapters.database import describe_error

RETRYING, DEAD, RESOLVED = "retrying", "dead", "resolved"


@dataclass(frozen=True)
class FailedMessage:
    """A message that could not be applied, as it was delivered."""

    message_id: str | None
    routing_key: str
    body: bytes
    headers: Mapping[str, Any]
    message_type: str | None = None
    content_type: str | None = None
    stream: str | None = None
    position: int | None = None

    @property
    def key(self) -> str:
        """Identity of the message: its id, or a digest of its body when it has none."""
        if self.message_id:
            return self.message_id[:255]
        return "sha256:" + hashlib.sha256(self.body).hexdigest()


@dataclass(frozen=True)
class DeadLetter:
    """One row of the table."""

    id: int
    message: FailedMessage
    state: str
    attempts: int
    error: str
    error_type: str
    first_failed_at: datetime
    last_failed_at: datetime
    published: bool


class AbstractDeadLetters(abc.ABC):
    def preload(self, streams: Collection[str]) -> None:
        """Read these streams' unresolved rows ahead (an optimisation)."""
        return None  # an optional optimisation: nothing to do without a store

    @abc.abstractmethod
    def open_state(self, stream: str, position: int) -> str | None:
        """``retrying`` or ``dead`` for an unresolved row at that position, else None."""

    @abc.abstractmethod
    def resolve(self, stream: str, position: int) -> None:
        """The message at that position was applied: its row is resolved."""

    @abc.abstractmethod
    def record_failure(
        self, message: FailedMessage, error: BaseException, *, dead: bool = False,
        republish: bool = True,
    ) -> DeadLetter:
        """Count one more failed attempt (and give up with ``dead``); the row after it.

        With ``republish`` false, a row given up on before keeps its dead letter as it was
        (published or not): the message was redelivered because the consumer stopped
        between publishing the dead letter and acking the original."""

    @abc.abstractmethod
    def give_up(self, message: FailedMessage) -> DeadLetter:
        """Mark the message's row dead (it goes to the dead-letter queue)."""

    @abc.abstractmethod
    def unpublished(self, limit: int = 500) -> list[DeadLetter]:
        """Dead rows not yet published to the dead-letter exchange, oldest first."""

    @abc.abstractmethod
    def mark_published(self, ids: Collection[int]) -> None: ...


class InMemoryDeadLetters(AbstractDeadLetters):
    def __init__(self) -> None:
        self.rows: dict[str, DeadLetter] = {}

    def open_state(self, stream: str, position: int) -> str | None:
        for row in self.rows.values():
            m = row.message
            if (m.stream, m.position) == (stream, position) and row.state != RESOLVED:
                return row.state
        return None

    def resolve(self, stream: str, position: int) -> None:
        for key, row in list(self.rows.items()):
            if (row.message.stream, row.message.position) == (stream, position):
                self.rows[key] = replace(row, state=RESOLVED)

    def record_failure(
        self, message: FailedMessage, error: BaseException, *, dead: bool = False,
        republish: bool = True,
    ) -> DeadLetter:
        now = datetime.now(UTC)
        row = self.rows.get(message.key)
        kept = dead and not republish and row is not None and row.state == DEAD
        updated = DeadLetter(
            id=row.id if row else len(self.rows) + 1,
            message=message,
            state=DEAD if dead else RETRYING,
            attempts=(row.attempts if row else 0) + 1,
            error=describe_error(error),
            error_type=type(error).__name__,
            first_failed_at=row.first_failed_at if row else now,
            last_failed_at=now,
            published=row.published if kept and row else False,
        )
        self.rows[message.key] = updated
        return updated

    def give_up(self, message: FailedMessage) -> DeadLetter:
        row = replace(self.rows[message.key], state=DEAD, published=False)
        self.rows[message.key] = row
        return row

    def unpublished(self, limit: int = 500) -> list[DeadLetter]:
        rows = [r for r in self.rows.values() if r.state == DEAD and not r.published]
        return sorted(rows, key=lambda r: r.id)[:limit]

    def mark_published(self, ids: Collection[int]) -> None:
        for key, row in list(self.rows.items()):
            if row.id in ids:
                self.rows[key] = replace(row, published=True)


class SqlAlchemyDeadLetters(AbstractDeadLetters):
    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self._open: dict[tuple[str, int], str] = {}
        self._streams: set[str] = set()

    def preload(self, streams: Collection[str]) -> None:
        t = orm.dead_letter
        c = self.connection
        wanted = sorted(set(streams) - self._streams)
        if not wanted:
            return
        self._streams.update(wanted)

        def found(rows: list[Any]) -> None:
            self._open.update({(stream, int(pos)): state for stream, pos, state in rows})

        fetch(
            c,
            "dead_letters.open",
            lambda: select(t.c.stream, t.c.position, t.c.state).where(
                member(t.c.stream, "streams", c), t.c.state != RESOLVED, t.c.position.is_not(None)
            ),
            {"streams": wanted},
            found,
        )

    def open_state(self, stream: str, position: int) -> str | None:
        self.preload([stream])
        return self._open.get((stream, position))

    def resolve(self, stream: str, position: int) -> None:
        t = orm.dead_letter
        self.connection.execute(
            update(t)
            .where(t.c.stream == stream, t.c.position == position, t.c.state != RESOLVED)
            .values(state=RESOLVED, resolved_at=datetime.now(UTC))
        )
        self._open.pop((stream, position), None)

    def record_failure(
        self, message: FailedMessage, error: BaseException, *, dead: bool = False,
        republish: bool = True,
    ) -> DeadLetter:
        t = orm.dead_letter
        now = datetime.now(UTC)
        values: dict[str, Any] = {
            "state": DEAD if dead else RETRYING,
            "error": describe_error(error),
            "error_type": type(error).__name__,
            "last_failed_at": now,
            "dead_at": now if dead else None,
            "published_at": None,
            "resolved_at": None,
        }
        existing = self.connection.execute(
            select(t.c.id, t.c.state, t.c.dead_at, t.c.published_at)
            .where(t.c.message_key == message.key)
            .with_for_update()
        ).one_or_none()
        found = None if existing is None else existing.id
        if dead and not republish and existing is not None and existing.state == DEAD:
            values.update(dead_at=existing.dead_at, published_at=existing.published_at)
        if found is None:
            self.connection.execute(
                insert(t).values(
                    message_key=message.key,
                    message_id=message.message_id,
                    stream=message.stream,
                    position=message.position,
                    routing_key=message.routing_key,
                    message_type=message.message_type,
                    content_type=message.content_type,
                    headers=_json(message.headers),
                    body=message.body,
                    attempts=1,
                    first_failed_at=now,
                    **values,
                )
            )
        else:
            self.connection.execute(
                update(t).where(t.c.id == found).values(attempts=t.c.attempts + 1, **values)
            )
        return self._row(message.key)

    def give_up(self, message: FailedMessage) -> DeadLetter:
        t = orm.dead_letter
        self.connection.execute(
            update(t)
            .where(t.c.message_key == message.key)
            .values(state=DEAD, dead_at=datetime.now(UTC), published_at=None)
        )
        return self._row(message.key)

    def unpublished(self, limit: int = 500) -> list[DeadLetter]:
        t = orm.dead_letter
        rows = self.connection.execute(
            _select_rows()
            .where(t.c.state == DEAD, t.c.published_at.is_(None))
            .order_by(t.c.id)
            .limit(limit)
        )
        return [_dead_letter(row) for row in rows]

    def mark_published(self, ids: Collection[int]) -> None:
        t = orm.dead_letter
        for chunk in chunked(sorted(ids)):
            self.connection.execute(
                update(t).where(t.c.id.in_(chunk)).values(published_at=datetime.now(UTC))
            )

    def count(self, state: str = DEAD) -> int:
        t = orm.dead_letter
        return int(
            self.connection.scalar(select(func.count()).select_from(t).where(t.c.state == state))
            or 0
        )

    def _row(self, key: str) -> DeadLetter:
        t = orm.dead_letter
        row = self.connection.execute(_select_rows().where(t.c.message_key == key)).one()
        dead_letter = _dead_letter(row)
        m = dead_letter.message
        if m.stream is not None and m.position is not None:
            if dead_letter.state == RESOLVED:
                self._open.pop((m.stream, m.position), None)
            else:
                self._open[(m.stream, m.position)] = dead_letter.state
        return dead_letter


def dead_letter_message(row: DeadLetter) -> Message:
    """The message to publish to the dead-letter exchange: the original, with the
    reason in its headers."""
    m = row.message
    return Message(
        routing_key=m.routing_key,
        body=m.body,
        message_id=m.message_id or "",
        type=m.message_type or "change",
        content_type=m.content_type or "application/json",
        headers=dead_letter_headers(row),
    )


def dead_letter_headers(row: DeadLetter) -> dict[str, Any]:
    """The message's own headers plus why it is dead (the contract's ``x-`` headers)."""
    headers = dict(row.message.headers)
    headers.update(
        {
            "x-error": row.error,
            "x-error-type": row.error_type,
            "x-first-failed-at": row.first_failed_at.replace(
                tzinfo=row.first_failed_at.tzinfo or UTC
            ).isoformat(),
            "x-attempts": row.attempts,
        }
    )
    return headers


def _select_rows() -> Any:
    t = orm.dead_letter
    return select(
        t.c.id,
        t.c.message_id,
        t.c.routing_key,
        t.c.body,
        t.c.headers,
        t.c.message_type,
        t.c.content_type,
        t.c.stream,
        t.c.position,
        t.c.state,
        t.c.attempts,
        t.c.error,
        t.c.error_type,
        t.c.first_failed_at,
        t.c.last_failed_at,
        t.c.published_at,
    )


def _dead_letter(row: Any) -> DeadLetter:
    message = FailedMessage(
        message_id=row.message_id,
        routing_key=row.routing_key,
        body=bytes(row.body),
        headers=json.loads(row.headers),
        message_type=row.message_type,
        content_type=row.content_type,
        stream=row.stream,
        position=None if row.position is None else int(row.position),
    )
    return DeadLetter(
        id=row.id,
        message=message,
        state=row.state,
        attempts=row.attempts,
        error=row.error,
        error_type=row.error_type,
        first_failed_at=_aware(row.first_failed_at),
        last_failed_at=_aware(row.last_failed_at),
        published=row.published_at is not None,
    )


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _json(headers: Mapping[str, Any]) -> str:
    return json.dumps(dict(headers), default=_plain, sort_keys=True)


def _plain(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)
