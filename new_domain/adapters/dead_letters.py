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

import json
from collections.abc import Collection, Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.engine import Connection

from new_domain.adapters import orm
from new_domain.adapters.bulk import fetch, member
from new_domain.adapters.chunks import chunked
from new_domain.ingest.ports import (
    DEAD,
    RESOLVED,
    RETRYING,
    AbstractDeadLetters,
    DeadLetter,
    FailedMessage,
    describe_error,
)


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
        self,
        message: FailedMessage,
        error: BaseException,
        *,
        dead: bool = False,
        republish: bool = True,
    ) -> DeadLetter:
        t = orm.dead_letter
        now = datetime.now(UTC)
        values: dict[str, Any] = {
            "state": DEAD if dead else RETRYING,
            "error": _fit(describe_error(error)),
            "error_type": _fit(type(error).__name__, 255),
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
                    message_id=_fit(message.message_id, 255),
                    stream=_fit(message.stream),
                    position=message.position,
                    routing_key=_fit(message.routing_key, 255) or "",
                    message_type=_fit(message.message_type, 64),
                    content_type=_fit(message.content_type, 128),
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


def _fit(text: str | None, limit: int | None = None) -> str | None:
    """``text`` as the table can hold it, whatever a message carried: NUL and lone
    surrogates escaped, cut to ``limit`` characters (the raw body is kept whole)."""
    if text is None:
        return None
    text = text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")
    return text if limit is None or len(text) <= limit else text[: limit - 3] + "..."


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
