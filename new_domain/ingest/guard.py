"""The ownership guard: which legacy changes are the kit's own, and which break ownership.

Each change of a batch gets a :class:`Role`, in stream order, before it is translated
(docs/write-path.md, "Echoes and the ownership guard"):

- ``ORIGIN``: a row of the kit's own ``strangler_origin`` table
  (:mod:`~new_domain.ingest.origin`). A fence marker settles its write group's move, in
  the batch's transaction; a decision marker opens an **echo**: the rest of its legacy
  transaction is the new system's own decision, written back by back-sync.
- ``ECHO``: a change of the echo the stream is in. It is translated, so it teaches the
  key maps legacy's new integer ids, but none of its commands runs: nothing is applied
  twice and no second domain event is raised. A whole echo's rows are recognised like
  any legacy decision (marker excluded, key maps as before it) and compared with the
  marker's ``route`` and ``summary``; a difference is an **echo anomaly**.
- ``VIOLATION``: any other live change to a product the write group's ownership gives
  the new system (``Ownership.guarded_by_new``, read once per batch): legacy wrote on its
  own. It is recorded, one row per change, teaches the key maps what it can, and is not
  applied: the owner's state stays the truth.
- ``LEGACY``: everything else (snapshot reads too: they are legacy's rows as they are,
  not a write, and a rebuild from a snapshot needs them) is applied as legacy's.

The echo a stream's last applied change belongs to is stored with the stream's position
(:meth:`~new_domain.ingest.ports.AbstractChangePositions.echo`), in the same transaction:
when an echo is split across batches (a transaction applied unfinished, a batch split
around a failing change) or redelivered after a crash, the changes after its marker are
still known as the echo's and never become violations. Such a split echo is not
compared: only a whole transaction shows a decision.
"""

from __future__ import annotations

import enum
import logging
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING

from new_domain import metrics
from new_domain.adapters.ownership_records import EchoAnomaly, OwnershipViolation
from new_domain.domain.ownership import Ownership, State
from new_domain.ingest.decisions import decision_words
from new_domain.ingest.envelope import LegacyChange, MalformedChange
from new_domain.ingest.origin import (
    DECISION,
    FENCE,
    OriginMarker,
    as_marked,
    is_origin,
    marker_of,
)
from new_domain.ingest.translators import Translators

if TYPE_CHECKING:
    from new_domain.service_layer.unit_of_work import AbstractUnitOfWork

logger = logging.getLogger(__name__)

UNRECOGNISED = "unrecognised"
"""What an echo anomaly says was found when legacy's rows are no one decision."""

_WROTE = {"c": "inserted", "u": "updated", "d": "deleted"}


class Role(enum.Enum):
    LEGACY = "legacy"
    ORIGIN = "origin"
    ECHO = "echo"
    VIOLATION = "violation"


class OwnershipGuard:
    """One batch's guard (see the module docstring); its counts move the metrics once
    the batch's transaction has committed."""

    def __init__(self, uow: AbstractUnitOfWork, translators: Translators) -> None:
        self.uow = uow
        self.translators = translators
        self.group = translators.write_group
        self._ownership: Ownership | None = None
        self.violations: Counter[str] = Counter()
        self.anomalies = 0

    def role(self, change: LegacyChange) -> Role:
        """The change's role, recording what it means (a fence settled, an echo opened,
        a violation); raises :class:`MalformedChange` for a broken origin marker."""
        if is_origin(change):
            marker = marker_of(change)
            if marker is not None:
                self._open(change, marker)
            return Role.ORIGIN
        positions = self.uow.positions
        echo = positions.echo(change.stream)
        if echo is not None:
            if change.transaction_id == echo:
                return Role.ECHO
            positions.set_echo(change.stream, None)
        sku = None if change.op == "r" else self._owned_sku(change)
        if sku is None:
            return Role.LEGACY
        self._violation(change, sku)
        return Role.VIOLATION

    def compare_echo(self, transaction: Sequence[LegacyChange]) -> None:
        """``transaction`` is a whole legacy transaction opened by an origin marker, and
        the key maps are as they were before it: when it is an echo, record an anomaly
        unless its rows show the decision the marker names."""
        try:
            marker = marker_of(transaction[0])
        except MalformedChange:
            return  # the marker's own change reports it
        if marker is None or marker.kind != DECISION:
            return
        decision = self.translators.recognize(transaction[1:], self.uow.legacy_keys)
        expected = f"{marker.route or '-'}: {marker.summary or '-'}"
        words = None if decision is None else decision_words(decision)
        found = UNRECOGNISED if words is None else ": ".join(words)
        if words is not None and f"{words[0]}: {as_marked(words[1])}" == expected:
            return  # the marker holds a long summary cut: compared as cut
        self.uow.ownership.record_echo_anomaly(
            EchoAnomaly(
                marker.decision_id,
                marker.route,
                marker.sku,
                expected,
                found,
                transaction[0].message_id,
            )
        )
        self.anomalies += 1
        logger.warning(
            "echo of decision %s: expected %s, found %s", marker.decision_id, expected, found
        )

    def count_after_commit(self) -> None:
        """Move the metrics once the transaction committed (never if it does not)."""
        if self.violations or self.anomalies:
            violations, anomalies = dict(self.violations), self.anomalies
            self.uow.after_commit(lambda: _count(violations, anomalies))

    def _open(self, change: LegacyChange, marker: OriginMarker) -> None:
        opened = change.transaction_id if marker.kind == DECISION else None
        if marker.kind == DECISION and opened is None:
            logger.warning("echo marker %s names no legacy transaction", change.message_id)
        self.uow.positions.set_echo(change.stream, opened)
        if marker.kind != FENCE or marker.epoch is None:
            return
        shard = None if change.shard is None else (change.stream, change.shard[1])
        if self.uow.ownership.settle(marker.group, marker.epoch, shard):
            logger.info("write group %s: epoch %d settled", marker.group, marker.epoch)
            if marker.group == self.group:
                self._ownership = None  # read it again: the move is done

    def _ownership_now(self) -> Ownership | None:
        if self.group is not None and self._ownership is None:
            self._ownership = self.uow.ownership.read(self.group)
        return self._ownership

    def _owned_sku(self, change: LegacyChange) -> str | None:
        ownership = self._ownership_now()
        if ownership is None or not _guards_any(ownership):
            return None
        skus = self.translators.skus(change, self.uow.legacy_keys)
        return next((sku for sku in skus if ownership.guarded_by_new(sku)), None)

    def _violation(self, change: LegacyChange, sku: str) -> None:
        ownership = self._ownership_now()
        assert ownership is not None and self.group is not None
        moving = ""
        if ownership.state is State.MOVING:
            moving = f", moving from {ownership.previous_rule}"
        detail = (
            f"legacy {_WROTE.get(change.op, change.op)} a {change.table} row of {sku} in"
            f" transaction {change.transaction_id or '-'}, but the new system owns it"
            f" ({ownership.rule}, epoch {ownership.epoch}{moving}); not applied"
        )
        self.uow.ownership.record_violation(
            OwnershipViolation(
                self.group,
                sku,
                change.message_id,
                change.stream,
                change.position,
                " ".join(detail.split()),
            )
        )
        self.violations[self.group] += 1


def _guards_any(ownership: Ownership) -> bool:
    """Can the ownership make any legacy change a violation?"""
    if ownership.state is State.MOVING and ownership.previous_rule is not None:
        return ownership.previous_rule.owns_any
    return ownership.rule.owns_any


def _count(violations: dict[str, int], anomalies: int) -> None:
    for group, count in violations.items():
        metrics.OWNERSHIP_VIOLATIONS.labels(group).inc(count)
    if anomalies:
        metrics.ECHO_ANOMALIES.inc(anomalies)
