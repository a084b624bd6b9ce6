"""Reading ``new_domain.events`` messages: decisions, ownership moves, the rest.

Every event the new write path raises carries a ``decision`` block (docs/write-path.md,
*Decisions in new_domain.events*): ``id``, ``route``, ``sku``, ``summary``, ``events``
(how many events the decision has) and ``index`` (this event's place among them). Events
mirrored from legacy carry ``"decision": null``: they are legacy's own facts, already in
legacy. ``OwnershipMoved`` (routing key ``ownership.moved``) carries a move, whose fence
back-sync writes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from backsync.ownership import InvalidMove, Move, buckets_owned
from broker import Message

OWNERSHIP_MOVED = "OwnershipMoved"
MOVE_ROUTING_KEY = "ownership.moved"
MAX_ID = 64
MAX_ROUTE = 64
MAX_SKU = 255
MAX_GROUP = 64


class MalformedMessage(ValueError):
    """Not an event back-sync can read; it goes to the dead-letter queue."""


@dataclass(frozen=True)
class Event:
    """One domain event of a decision."""

    type: str
    message_id: str
    occurred_at: datetime
    data: Mapping[str, Any]


@dataclass(frozen=True)
class Block:
    """An event's ``decision`` block."""

    id: str
    route: str
    sku: str
    summary: str
    events: int
    index: int
    group: str | None = None

    def same_decision(self, other: Block) -> bool:
        return (self.id, self.route, self.sku, self.summary, self.events, self.group) == (
            other.id,
            other.route,
            other.sku,
            other.summary,
            other.events,
            other.group,
        )


@dataclass(frozen=True)
class DecisionPart:
    block: Block
    event: Event


@dataclass(frozen=True)
class Decision:
    """Every event of one decision of the new system, in ``index`` order."""

    id: str
    route: str
    sku: str
    summary: str
    group: str | None
    events: tuple[Event, ...]

    @property
    def occurred_at(self) -> datetime:
        """When the new system took it (its newest event's time)."""
        return max(event.occurred_at for event in self.events)


@dataclass(frozen=True)
class MoveMessage:
    """An ``OwnershipMoved`` event."""

    move: Move
    message_id: str
    occurred_at: datetime


@dataclass(frozen=True)
class LegacyFact:
    """An event mirrored from legacy (``"decision": null``): nothing to write."""


@dataclass(frozen=True)
class Unreadable:
    """A message that can never be written."""

    error: MalformedMessage


Parsed = DecisionPart | MoveMessage | LegacyFact | Unreadable


def parse(message: Message) -> Parsed:
    """What ``message`` is to back-sync (never raises)."""
    try:
        body = json.loads(message.body)
        if not isinstance(body, dict):
            raise MalformedMessage("the body is not a JSON object")
        if body.get("type") == OWNERSHIP_MOVED or message.routing_key == MOVE_ROUTING_KEY:
            return _move(body, message)
        block = body.get("decision")
        if block is None:
            return LegacyFact()
        return DecisionPart(_block(block), _event(body, message))
    except MalformedMessage as error:
        return Unreadable(error)
    except (ValueError, UnicodeDecodeError) as error:
        return Unreadable(MalformedMessage(f"not JSON: {error}"))


def _move(body: Mapping[str, Any], message: Message) -> MoveMessage:
    data = _mapping(body, "data")
    move = Move(
        group=text(data, "group", MAX_GROUP),
        epoch=integer(data, "epoch"),
        rule=text(data, "rule", 64),
        previous_rule=text(data, "previous_rule", 64),
    )
    try:
        buckets_owned(move.rule), buckets_owned(move.previous_rule)
    except InvalidMove as error:
        raise MalformedMessage(str(error)) from None
    return MoveMessage(move, _message_id(body, message), _time(body))


def _block(block: Any) -> Block:
    if not isinstance(block, dict):
        raise MalformedMessage("decision is neither an object nor null")
    events = integer(block, "events")
    index = integer(block, "index")
    if events < 1 or not 0 <= index < events:
        raise MalformedMessage(f"decision index {index} of {events} events")
    group = block.get("group")
    return Block(
        id=text(block, "id", MAX_ID),
        route=text(block, "route", MAX_ROUTE),
        sku=text(block, "sku", MAX_SKU),
        summary=_summary(block),
        events=events,
        index=index,
        group=None if group is None else text(block, "group", MAX_GROUP),
    )


def _event(body: Mapping[str, Any], message: Message) -> Event:
    return Event(
        type=text(body, "type", 64),
        message_id=_message_id(body, message),
        occurred_at=_time(body),
        data=_mapping(body, "data"),
    )


def _summary(block: Mapping[str, Any]) -> str:
    value = block.get("summary")
    if not isinstance(value, str):
        raise MalformedMessage("decision.summary is not a string")
    return value


def _message_id(body: Mapping[str, Any], message: Message) -> str:
    value = body.get("message_id") or message.message_id
    if not isinstance(value, str) or not value or len(value) > MAX_ID:
        raise MalformedMessage("no message_id")
    return value


def _time(body: Mapping[str, Any]) -> datetime:
    value = body.get("occurred_at")
    if not isinstance(value, str):
        raise MalformedMessage("occurred_at is not a string")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise MalformedMessage(f"occurred_at {value[:40]!r} is not an ISO 8601 time") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _mapping(body: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = body.get(key)
    if not isinstance(value, dict):
        raise MalformedMessage(f"{key} is not an object")
    return value


def text(data: Mapping[str, Any], key: str, max_length: int) -> str:
    """``data[key]``: a non-empty string of at most ``max_length`` characters."""
    value = data.get(key)
    if not isinstance(value, str) or not value or "\x00" in value:
        raise MalformedMessage(f"{key} is not a non-empty string")
    if len(value) > max_length:
        raise MalformedMessage(f"{key} is longer than {max_length} characters")
    return value


def integer(data: Mapping[str, Any], key: str) -> int:
    """``data[key]``: an integer that fits a signed 32-bit column."""
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not -(2**31) <= value < 2**31:
        raise MalformedMessage(f"{key} is not an integer")
    return value
