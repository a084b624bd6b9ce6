"""The ports ingestion needs, and the types that cross them.

Ingestion reads and writes three kinds of bookkeeping in the unit of work's
transaction, each behind a port whose implementations live in ``new_domain.adapters``
(SQL) and ``tests/fakes.py`` (in memory):

- :class:`AbstractLegacyKeys`: what the anti-corruption layer remembers about legacy
  rows it has seen (legacy integer keys -> our names), by key kind;
- :class:`AbstractChangePositions`: the position of the last change applied per
  stream, the stream's snapshot state (:data:`AWAITING`, :data:`LOADING`) and the
  echo its last change belongs to;
- :class:`AbstractDeadLetters`: messages that failed, in state :data:`RETRYING`,
  :data:`DEAD` or :data:`RESOLVED`.

This module imports nothing of the new domain: the adapters and the unit of work
depend on it, never the reverse.
"""

from __future__ import annotations

import abc
import hashlib
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

# -- legacy keys --------------------------------------------------------------------------

PRODUCT, LOT, LINE, ALLOCATION = "product", "lot", "line", "allocation"
"""Key kinds: the legacy rows other rows refer to by integer key."""

KeyIds = Mapping[str, Collection[int]]
"""Legacy ids by key kind."""


@dataclass(frozen=True)
class LegacyLot:
    batchref: str
    sku: str


@dataclass(frozen=True)
class LegacyLine:
    orderid: str
    sku: str
    qty: int


@dataclass(frozen=True)
class LegacyAllocation:
    """Which order line an allocation row allocates to which lot (legacy ids)."""

    line_id: int
    lot_id: int


class AbstractLegacyKeys(abc.ABC):
    """What the ACL remembers about legacy rows it has seen."""

    def preload(self, ids: KeyIds) -> None:
        """Read these keys (by kind) ahead in bulk (an optimisation; lookups work
        without it)."""
        return None  # an optional optimisation: nothing to do without a store

    @abc.abstractmethod
    def product_sku(self, prod_id: int) -> str | None: ...

    @abc.abstractmethod
    def remember_product(self, prod_id: int, sku: str) -> None: ...

    @abc.abstractmethod
    def lot(self, lot_id: int) -> LegacyLot | None: ...

    @abc.abstractmethod
    def remember_lot(self, lot_id: int, lot: LegacyLot) -> None: ...

    @abc.abstractmethod
    def line(self, line_id: int) -> LegacyLine | None: ...

    @abc.abstractmethod
    def remember_line(self, line_id: int, line: LegacyLine) -> None: ...

    @abc.abstractmethod
    def forget_line(self, line_id: int) -> None: ...

    @abc.abstractmethod
    def allocation(self, alloc_id: int) -> LegacyAllocation | None: ...

    @abc.abstractmethod
    def remember_allocation(self, alloc_id: int, allocation: LegacyAllocation) -> None: ...

    @abc.abstractmethod
    def forget_allocation(self, alloc_id: int) -> None: ...


# -- the shard router's open transactions ---------------------------------------------


@dataclass
class OpenTransaction:
    """A legacy transaction the router has routed part of: how many of its changes each
    shard got so far, per shard and per (shard, table)."""

    id: str | None
    parts: dict[int, int] = field(default_factory=dict)
    tables: dict[str, int] = field(default_factory=dict)  # "<shard>:<table>" -> count

    def add(self, shard: int, table: str) -> tuple[int, int]:
        """Count one more change of ``table`` for ``shard``: its order in the shard's part
        and among the part's changes of its table (both from 1)."""
        self.parts[shard] = self.parts.get(shard, 0) + 1
        key = f"{shard}:{table}"
        self.tables[key] = self.tables.get(key, 0) + 1
        return self.parts[shard], self.tables[key]

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "parts": self.parts, "tables": self.tables}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> OpenTransaction:
        parts = {int(k): int(v) for k, v in dict(data.get("parts") or {}).items()}
        tables = {str(k): int(v) for k, v in dict(data.get("tables") or {}).items()}
        found = data.get("id")
        return cls(None if found is None else str(found), parts, tables)


# -- stream positions ---------------------------------------------------------------------

AWAITING, LOADING = "awaiting", "loading"
"""Snapshot states of a stream (see :class:`AbstractChangePositions`)."""


class AbstractChangePositions(abc.ABC):
    """Positions of the last legacy change applied, per stream, and its snapshot state.

    Written in the same transaction as the change's effect: a change at or below the
    stored position has had its effect already and is skipped. A stream's snapshot
    state is ``None`` normally, or:

    - ``awaiting``: after a reset; every change but a snapshot read is skipped (the
      coming snapshot contains its effect) until the first snapshot read arrives;
    - ``loading``: from the first snapshot read of an empty (reset or new) stream until
      a heartbeat of its source. Rows are arriving as snapshot reads interleaved with
      live changes; a live change that refers to a row whose snapshot read has not come
      yet is skipped (that read, later in the stream, shows the row as the change left
      it). The relay only sends a heartbeat when it has published everything captured,
      snapshot rows included, so after one every row has arrived.
    """

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

    @abc.abstractmethod
    def echo(self, stream: str) -> str | None:
        """The legacy transaction id of the echo (a transaction the kit wrote itself,
        opened by its origin marker) that the stream's last applied change belongs to;
        None when it belongs to none. Stored with the position, so the rest of an echo
        split across batches, or redelivered after a crash, is still known as one."""

    @abc.abstractmethod
    def set_echo(self, stream: str, transaction_id: str | None) -> None:
        """The stream's last applied change opened (or continues) the echo
        ``transaction_id``; None: it belongs to no echo."""


def stream_of(stream: str, source: str) -> bool:
    """Is ``stream`` (``<name>/<db>[/<install>]``) one of ``source``'s (``<name>/<db>``)?"""
    return stream == source or stream.startswith(source + "/")


# -- dead letters -------------------------------------------------------------------------

RETRYING, DEAD, RESOLVED = "retrying", "dead", "resolved"
"""States of a failed message: still retried, given up (dead-lettered), applied after all."""


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
        if self.message_id and len(self.message_id) <= 255 and "\x00" not in self.message_id:
            return self.message_id
        if self.message_id:  # too long to be a key: its digest (two ids never share one)
            return (
                "sha256:" + hashlib.sha256(self.message_id.encode("utf-8", "replace")).hexdigest()
            )
        return "sha256:" + hashlib.sha256(self.body).hexdigest()


@dataclass(frozen=True)
class DeadLetter:
    """One failed message and what became of it."""

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
    """Messages that failed, how often, why, and what became of them.

    A row is *retrying* while its message keeps failing (``attempts`` counts every
    failed try, across redeliveries and restarts), *dead* once it was given up and sent
    to the dead-letter queue, and *resolved* when it was applied after all (a later
    attempt or a replay). Dead rows are also the dead-letter exchange's outbox: they are
    published from here, so a crash between giving up on a message and publishing it
    loses nothing.
    """

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
        self,
        message: FailedMessage,
        error: BaseException,
        *,
        dead: bool = False,
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


# -- decision parity ----------------------------------------------------------------------

UNCLASSIFIED = "unclassified"
"""The route of a legacy transaction that is not one recognisable write decision."""


@dataclass(frozen=True)
class Verdict:
    """Legacy's decision next to the one the new rules take on the same state."""

    route: str
    sku: str
    agree: bool
    legacy: str
    new: str
    state: str = ""  # the product as the new rules saw it (kept for differences)


@dataclass(frozen=True)
class DecisionCount:
    route: str
    agree: int
    differ: int

    @property
    def samples(self) -> int:
        return self.agree + self.differ


class AbstractDecisionLog(abc.ABC):
    """Decision parity per write route: counts, and every difference with both decisions.
    Written in the same transaction as the effect of the legacy change judged."""

    @abc.abstractmethod
    def record(self, verdict: Verdict, change_id: str | None, journal: str | None = None) -> None:
        """One verdict; ``journal``: the decision's journal entry, kept when given
        (:mod:`new_domain.ingest.journal`)."""

    @abc.abstractmethod
    def unclassified(self) -> None:
        """One more legacy transaction that is no recognisable decision."""


MAX_ERROR_LENGTH = 500


def describe_error(error: BaseException) -> str:
    """The error's message on one line (a database error without its SQL)."""
    orig = getattr(error, "orig", None)
    if isinstance(orig, BaseException):
        error = orig
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= MAX_ERROR_LENGTH else text[: MAX_ERROR_LENGTH - 3] + "..."
