"""The deliveries in hand, in queue order, gathered into what back-sync writes.

Each delivery joins a **unit**: the events of one decision form one unit (gathered by
decision id, duplicates of an event included), every other message is a unit of its
own. Units keep the order of their first delivery, and back-sync settles them strictly in
that order: a decision is written when its last event has arrived, and nothing after it
is written before it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from backsync.messages import (
    Block,
    Decision,
    DecisionPart,
    Event,
    LegacyFact,
    MalformedMessage,
    MoveMessage,
    Unreadable,
    parse,
)
from broker import Delivery


@dataclass
class Single:
    """A message that is a unit on its own: a move, a legacy fact, an unreadable one."""

    delivery: Delivery
    parsed: MoveMessage | LegacyFact | Unreadable
    first_seen: float

    @property
    def deliveries(self) -> list[Delivery]:
        return [self.delivery]


@dataclass
class Group:
    """The events of one decision that have arrived so far."""

    block: Block
    first_seen: float
    deliveries: list[Delivery] = field(default_factory=list)
    parts: dict[int, Event] = field(default_factory=dict)
    error: MalformedMessage | None = None
    applied: bool | None = None
    """Whether legacy already holds this decision (looked up while it waits)."""

    def add(self, delivery: Delivery, part: DecisionPart) -> None:
        self.deliveries.append(delivery)
        if not part.block.same_decision(self.block):
            self.error = MalformedMessage(
                f"the events of decision {self.block.id} disagree about the decision"
            )
        self.parts.setdefault(part.block.index, part.event)  # a repeat changes nothing

    @property
    def complete(self) -> bool:
        return self.error is None and len(self.parts) == self.block.events

    def decision(self) -> Decision:
        b = self.block
        events = tuple(self.parts[i] for i in range(b.events))
        return Decision(b.id, b.route, b.sku, b.summary, b.group, events)


Unit = Single | Group


class Pending:
    """Units in the order of their first delivery."""

    def __init__(self) -> None:
        self.units: deque[Unit] = deque()
        self._open: dict[str, Group] = {}

    def __len__(self) -> int:
        return sum(len(unit.deliveries) for unit in self.units)

    def add(self, delivery: Delivery, now: float) -> None:
        parsed = parse(delivery.message)
        if not isinstance(parsed, DecisionPart):
            self.units.append(Single(delivery, parsed, now))
            return
        group = self._open.get(parsed.block.id)
        if group is None:
            group = self._open[parsed.block.id] = Group(parsed.block, now)
            self.units.append(group)
        group.add(delivery, parsed)

    @property
    def head(self) -> Unit | None:
        return self.units[0] if self.units else None

    def pop(self) -> Unit:
        unit = self.units.popleft()
        if isinstance(unit, Group):
            self._open.pop(unit.block.id, None)
        return unit
