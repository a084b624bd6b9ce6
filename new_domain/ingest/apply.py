"""Applying legacy change events with an exactly-once effect, a batch at a time.

Delivery is at least once (the relay re-sends, the broker redelivers). Each change
carries a position (``source.seq``) that increases in the legacy database's commit
order; the position of the last change applied from each stream is stored in
``applied_change_position`` in the SAME transaction as the changes' effects (and the
translation state they taught the anti-corruption layer). A change at or below the
stored position was applied already and is skipped: a redelivery can never apply
twice, and a crash before commit leaves neither the effects nor the position.

A stream whose positions are dense (the bridge's: every position is used, in order)
must go on at the position after the last one applied: a change further ahead (a gap,
or a jump such as a forged ``source.seq``) is refused with :class:`OutOfSequence`
before anything is applied, so no message can move a position on its own word (a
replay, the operator's decision, may).

Exceptions to "at or below means applied", all recorded in the same transactions: a
position the consumer gave up on (its row in ``dead_letter`` is *dead*) is applied by a
replay, exactly once, which resolves the row; a stream reset to await a snapshot skips
everything but snapshot reads until the first one; and while a snapshot loads, a live
change to a row the snapshot has not reached yet is skipped (see
:mod:`new_domain.adapters.change_positions`).

:func:`apply_changes` applies a whole batch in one transaction with few round trips:
it reads the stream positions and the legacy keys the changes mention (one round trip),
decides which changes to apply, translates them all, reads the aggregates their
commands touch and the orders involved (one round trip), and only then runs the
commands through the message bus; the commit writes everything in one more. A
change that fails is reported as :class:`ChangeFailed` with its index, so the caller
can apply the batch without it; database failures are raised as they are.
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from new_domain import metrics
from new_domain.domain.model import TieBreak
from new_domain.ingest import debezium, journal
from new_domain.ingest.decisions import LegacyDecision, holder_of, judge
from new_domain.ingest.envelope import (
    Heartbeat,
    LegacyChange,
    Parsed,
    TransactionBoundary,
    heartbeat_sources,
)
from new_domain.ingest.guard import OwnershipGuard, Role
from new_domain.ingest.legacy_shop import LEGACY_SHOP
from new_domain.ingest.origin import is_origin
from new_domain.ingest.ports import AWAITING, DEAD, LOADING, RETRYING, UNCLASSIFIED
from new_domain.ingest.translators import Translators, UnknownLegacyRow

if TYPE_CHECKING:
    from new_domain.service_layer.messagebus import Message, MessageBus
    from new_domain.service_layer.unit_of_work import AbstractUnitOfWork

logger = logging.getLogger(__name__)


class ChangeFailed(Exception):
    """The change at ``index`` of a batch could not be applied (its own fault)."""

    def __init__(self, index: int, change: LegacyChange, error: BaseException) -> None:
        super().__init__(f"change {change.message_id or index}: {error}")
        self.index = index
        self.change = change
        self.error = error


class OutOfSequence(Exception):
    """A change of a stream with dense positions does not come right after the last one
    applied: a gap (a change lost) or a jump (a forged position). It is dead-lettered
    at once and the stream's position stays where it is."""

    def __init__(self, stream: str, last: int | None, position: int) -> None:
        super().__init__(self.describe(stream, last, position))
        self.stream = stream
        self.last = last
        self.position = position

    @staticmethod
    def describe(stream: str, last: int | None, position: int) -> str:
        return (
            f"position {position} does not follow the last applied position {last} of"
            f" stream {stream} (expected {0 if last is None else last + 1}); the stored"
            " position is kept"
        )


class PositionTooFar(OutOfSequence):
    """A change of a stream without dense positions (Debezium's) moves the stream's
    position further ahead than any real log does between two changes
    (:func:`new_domain.ingest.debezium.jumps_too_far`): a forged position. It is
    dead-lettered at once and the stream's position stays where it is."""

    @staticmethod
    def describe(stream: str, last: int | None, position: int) -> str:
        return (
            f"position {position} ({debezium.describe_position(position)}) is too far ahead"
            f" of the last applied position {last}"
            f" ({'-' if last is None else debezium.describe_position(last)}) of stream"
            f" {stream}; the stored position is kept"
        )


class AfterNewSnapshot(OutOfSequence):
    """A Debezium change that came after the connector took a new snapshot of a stream
    already applied past it (:func:`new_domain.ingest.debezium.after_new_snapshot`):
    legacy's changes between the two are only in that snapshot, without their deletes.
    It is dead-lettered at once (never skipped as a re-send) and the stream's position
    stays where it is; the way back is a rebuild of the new database."""

    @staticmethod
    def describe(stream: str, last: int | None, position: int) -> str:
        return (
            f"Debezium took a new snapshot of stream {stream} after it was applied up to"
            f" {'-' if last is None else debezium.describe_position(last)}: this change"
            f" ({debezium.describe_position(position)}) cannot be placed in the stream;"
            " rebuild the new database from a fresh snapshot (docs/debezium.md)"
        )


def _jumps(last: int | None, position: int) -> bool:
    return last is not None and position > last + 1


@dataclass(frozen=True)
class Applied:
    """What one call did: changes applied, and changes skipped as applied before."""

    applied: int
    skipped: int


def apply_change(
    bus: MessageBus, change: LegacyChange, *, translators: Translators = LEGACY_SHOP
) -> bool:
    """Apply one change in the bus's unit of work; False when it was applied before.

    Inside an enclosing ``with bus.uow:`` block it joins that transaction. The
    change's own error is raised as it is.
    """
    try:
        return apply_changes(bus, [change], translators=translators).applied == 1
    except ChangeFailed as failed:
        raise failed.error from None


def apply_changes(
    bus: MessageBus,
    items: Sequence[Parsed],
    *,
    replay: bool = False,
    translators: Translators = LEGACY_SHOP,
    tie_break: TieBreak = TieBreak.CREATED,
    journal_decisions: bool = False,
) -> Applied:
    """Apply the changes among ``items`` in order in ONE transaction (see the module
    docstring); the heartbeats among them are recorded for the lag in the same
    transaction. :class:`ChangeFailed` gives the index in ``items`` of a change that
    failed. With ``replay``, dead-lettered positions are applied too. Legacy's write
    decisions are judged with the new rules (``tie_break`` between equal etas) and, with
    ``journal_decisions``, journaled (:mod:`new_domain.ingest.journal`).
    """
    uow = bus.uow
    changes = _close_transactions(items)
    with uow:
        with uow.reading_ahead():  # one round trip
            uow.positions.preload({change.stream for _, change in changes})
            uow.dead_letters.preload({change.stream for _, change in changes})
            uow.legacy_keys.preload(translators.referenced_keys(c for _, c in changes))
        chosen, reopened, loading = _choose(uow, changes, replay)
        guard = OwnershipGuard(uow, translators)
        decisions: dict[int, LegacyDecision | None] = {}
        translated = _translate(uow, translators, chosen, loading, decisions, guard)
        _read_aggregates_ahead(uow, [m for _, _, messages in translated for m in messages])
        parity = _Parity(uow, decisions, tie_break, journal_decisions)
        for index, change, messages in translated:
            parity.before(index, change.message_id)
            uow.change_id = change.cause
            try:
                for message in messages:
                    bus.handle(message)
            except Exception as error:
                raise _failure(uow, index, change, error) from error
            if (change.stream, change.position) in reopened:
                uow.dead_letters.resolve(change.stream, change.position)
        parity.before(len(items), None)
        uow.change_id = None
        _record_heartbeats(uow, [item for item in items if isinstance(item, Heartbeat)])
        guard.count_after_commit()
        uow.commit()
    return Applied(len(chosen), len(changes) - len(chosen))


def _close_transactions(items: Sequence[Parsed]) -> list[tuple[int, LegacyChange]]:
    """The changes among ``items`` (with their index), the last change of each legacy
    transaction whose END event (Debezium's transaction metadata) follows it in
    ``items`` marked as its last when END counts exactly the changes seen: the
    transaction is whole here."""
    changes = [(i, item) for i, item in enumerate(items) if isinstance(item, LegacyChange)]
    at = {index: n for n, (index, _) in enumerate(changes)}
    for index, item in enumerate(items):
        if not isinstance(item, TransactionBoundary) or item.status != "END":
            continue
        members = [
            n
            for n, (i, change) in enumerate(changes)
            if i < index and change.debezium and change.transaction_id == item.transaction_id
        ]
        if not members:
            continue
        last_index, last = changes[members[-1]]
        whole = item.event_count is None or item.event_count == len(members)
        if whole and not last.ends_transaction:
            changes[at[last_index]] = (last_index, replace(last, ends_transaction=True))
        elif not whole:
            logger.info(
                "transaction %s: END counts %s events, %d seen in this batch",
                item.transaction_id,
                item.event_count,
                len(members),
            )
    return changes


def _translate(
    uow: AbstractUnitOfWork,
    translators: Translators,
    chosen: Sequence[tuple[int, LegacyChange]],
    loading: set[int],
    decisions: dict[int, LegacyDecision | None],
    guard: OwnershipGuard,
) -> list[tuple[int, LegacyChange, list[Message]]]:
    """Each change's messages, in order (none for the kit's own changes, echoes and
    ownership violations: see :mod:`new_domain.ingest.guard`); and, keyed by the index
    of its first change, the write decision each legacy transaction took (None: not one
    decision), read before its changes teach the key maps anything. The kit's own
    transactions and those that break ownership are no legacy decision to judge."""
    translated: list[tuple[int, LegacyChange, list[Message]]] = []
    starts = _transactions([change for _, change in chosen])
    opened: tuple[int, str | None] | None = None  # the transaction read: first index, id
    for at, (index, change) in enumerate(chosen):
        change = translators.complete(change, uow.legacy_keys)
        if at in starts:
            opened = (index, change.transaction_id)
            whole = [
                translators.complete(c, uow.legacy_keys) for _, c in chosen[at : at + starts[at]]
            ]
            if is_origin(change):  # the kit's own transaction: compared, not judged
                if whole:
                    guard.compare_echo(whole)
            else:
                decisions[index] = translators.recognize(whole, uow.legacy_keys) if whole else None
        elif change.transaction_id is None or opened is None or change.transaction_id != opened[1]:
            opened = None  # not a change of the transaction read last
        try:
            role = guard.role(change)
        except Exception as error:
            raise _failure(uow, index, change, error) from error
        if role is Role.VIOLATION and opened is not None:
            decisions.pop(opened[0], None)
        messages = _messages(uow, translators, index, change, loading, role)
        if messages is not None:
            translated.append((index, change, messages if role is Role.LEGACY else []))
    return translated


def _messages(
    uow: AbstractUnitOfWork,
    translators: Translators,
    index: int,
    change: LegacyChange,
    loading: set[int],
    role: Role,
) -> list[Message] | None:
    """The change translated (its messages, which only a legacy change's role runs);
    None when it is skipped while its stream loads a snapshot. A violation teaches the
    key maps what it can and is recorded whatever its translation says."""
    if role is Role.ORIGIN:
        return []
    try:
        return translators.translate(change, uow.legacy_keys)
    except Exception as error:
        if uow.is_transient(error):
            raise
        if role is Role.VIOLATION:
            logger.info("violating change %s taught no key: %s", change.message_id, error)
            return []
        if isinstance(error, UnknownLegacyRow) and index in loading:
            # the row's snapshot read comes later in the stream, showing this change
            logger.info("change %s skipped, snapshot loading: %s", change.message_id, error)
            return None
        raise ChangeFailed(index, change, error) from error


def _transactions(changes: Sequence[LegacyChange]) -> dict[int, int]:
    """Where each legacy transaction starts among ``changes`` -> how many changes it has
    there when it is whole (0 when it is not: it began in another batch, or ends in the
    next, or names no transaction). Snapshot reads are no decision and not counted."""
    starts: dict[int, int] = {}
    at = 0
    while at < len(changes):
        first = changes[at]
        end = at + 1
        if first.transaction_id is not None:
            while end < len(changes) and changes[end].transaction_id == first.transaction_id:
                end += 1
        group = changes[at:end]
        if first.op != "r" and first.transaction_order in (None, 1):
            whole = (
                first.transaction_id is not None
                and group[-1].ends_transaction
                and [c.transaction_order for c in group] == list(range(1, len(group) + 1))
                and all(c.op != "r" for c in group)
            )
            starts[at] = len(group) if whole else 0
        at = end
    return starts


class _Parity:
    """Judges each legacy decision just before its transaction's first change is applied
    (on exactly the state legacy decided on) and records the verdict in the same unit of
    work. A failure to judge is logged and counted as unclassified: decision parity
    never holds a legacy change back."""

    def __init__(
        self,
        uow: AbstractUnitOfWork,
        decisions: dict[int, LegacyDecision | None],
        tie_break: TieBreak,
        journal: bool = False,
    ) -> None:
        self.uow = uow
        self.pending = deque(sorted(decisions.items()))
        self.tie_break = tie_break
        self.journal = journal
        self.counted: Counter[tuple[str, str]] = Counter()
        if self.pending:  # the metric moves once per batch, after its commit
            uow.after_commit(self._publish_counts)

    def before(self, index: int, change_id: str | None) -> None:
        while self.pending and self.pending[0][0] <= index:
            start, decision = self.pending.popleft()
            if decision is None or start < index:  # its changes were not applied here
                self._unclassified()
                continue
            try:
                verdict = judge(decision, self.uow, self.tie_break)
            except Exception as error:
                if self.uow.is_transient(error):
                    raise
                logger.warning("decision parity could not judge %s: %s", decision, error)
                self._unclassified()
                continue
            self.uow.decisions.record(verdict, change_id, self._entry(decision))
            self._count(verdict.route, "agree" if verdict.agree else "differ")

    def _entry(self, decision: LegacyDecision) -> str | None:
        """The decision's journal entry, when journaling (the state as judged)."""
        if not self.journal:
            return None
        product = self.uow.products.get(decision.sku)
        return journal.entry(decision, product, holder_of(decision, self.uow))

    def _unclassified(self) -> None:
        self.uow.decisions.unclassified()
        self._count(UNCLASSIFIED, "differ")

    def _count(self, route: str, verdict: str) -> None:
        self.counted[route, verdict] += 1

    def _publish_counts(self) -> None:
        for (route, verdict), count in self.counted.items():
            metrics.DECISIONS.labels(route, verdict).inc(count)


def _record_heartbeats(uow: AbstractUnitOfWork, heartbeats: Iterable[Heartbeat]) -> None:
    for heartbeat in heartbeats:
        uow.positions.snapshot_loaded(heartbeat.source)
        if heartbeat.ts_ms is None and heartbeat.last_commit_ts_ms is None:
            continue  # nothing said about time
        for source in heartbeat_sources(heartbeat, uow.progress.sources):
            uow.progress.observe(
                source,
                commit_ms=heartbeat.last_commit_ts_ms,
                heartbeat_ms=heartbeat.ts_ms,
            )


Chosen = tuple[list[tuple[int, LegacyChange]], set[tuple[str, int]], set[int]]


def _choose(
    uow: AbstractUnitOfWork, changes: Sequence[tuple[int, LegacyChange]], replay: bool
) -> Chosen:
    """The changes to apply (with their index), advancing positions and snapshot states
    in memory as it goes; the positions of failed messages applied after all; and the
    indexes of live changes that came while their stream was loading a snapshot.

    A failed message's row (retrying or dead) means its effect is not in the database:
    a retrying one is applied wherever its position is, a dead one only by a replay.
    """
    chosen: list[tuple[int, LegacyChange]] = []
    reopened: set[tuple[str, int]] = set()
    loading: set[int] = set()
    for index, change in changes:
        stream, position = change.stream, change.position
        if change.committed_at_ms is not None:
            uow.progress.observe(change.source, commit_ms=change.committed_at_ms)
        last = uow.positions.get(stream)
        snapshot = uow.positions.snapshot_state(stream)
        failed = uow.dead_letters.open_state(stream, position)
        if snapshot == AWAITING and change.op != "r":
            logger.debug("skipping change %s: awaiting a snapshot", change.message_id)
            continue
        if change.dense and not replay and snapshot != AWAITING and _jumps(last, position):
            raise ChangeFailed(index, change, OutOfSequence(stream, last, position))
        if change.debezium:
            if not replay and snapshot != AWAITING:
                _refuse_misplaced(index, change, last)
            if _debezium_snapshot_read(uow, change, last, snapshot):
                chosen.append((index, change))
                continue
        if last is None or position > last or snapshot == AWAITING:
            state = LOADING if change.op == "r" else snapshot
            if change.debezium:  # Debezium streams nothing else while its snapshot runs
                state = LOADING if change.op == "r" and change.snapshot_mark != "last" else None
            uow.positions.set(stream, max(position, last or 0), state)
        elif (stream, position) in reopened or not (
            failed == RETRYING or (replay and failed == DEAD)
        ):
            logger.debug(
                "skipping change %s: position %d <= %d already applied in %s",
                change.message_id,
                position,
                last,
                stream,
            )
            continue
        if failed is not None:
            reopened.add((stream, position))
        if (
            change.op != "r"
            and not change.debezium
            and uow.positions.snapshot_state(stream) == LOADING
        ):
            loading.add(index)
        chosen.append((index, change))
    return chosen, reopened, loading


def _refuse_misplaced(index: int, change: LegacyChange, last: int | None) -> None:
    """Raise :class:`ChangeFailed` for a Debezium change its position cannot place: a
    forged far-future one, or one after a new snapshot."""
    stream, position = change.stream, change.position
    if debezium.jumps_too_far(last, position):
        raise ChangeFailed(index, change, PositionTooFar(stream, last, position))
    if debezium.after_new_snapshot(last, position, change.op == "r"):
        raise ChangeFailed(index, change, AfterNewSnapshot(stream, last, position))


def _debezium_snapshot_read(
    uow: AbstractUnitOfWork, change: LegacyChange, last: int | None, snapshot: str | None
) -> bool:
    """Is ``change`` a row of a Debezium snapshot to apply (its position stored)?

    Every row of one Debezium snapshot has the same position (docs/debezium.md): the
    first row (of a new stream, or of one reset to await a snapshot) stores it and
    starts loading; while loading, a read at exactly that position is the next row and
    is applied (snapshot reads are upserts, and Debezium sends nothing else while its
    snapshot runs); the row marked ``last`` ends the loading. Afterwards the snapshot's
    position is below the stream's: its rows, redelivered, are skipped."""
    if change.op != "r":
        return False
    state = None if change.snapshot_mark == "last" else LOADING
    if last is None or snapshot == AWAITING:
        uow.positions.set(change.stream, change.position, state)
        return True
    if snapshot == LOADING and change.position == last:
        if state is None:
            uow.positions.set(change.stream, change.position, None)
        return True
    return False


def _read_aggregates_ahead(uow: AbstractUnitOfWork, messages: Iterable[Message]) -> None:
    """Load every aggregate the messages name (by ``sku`` or batch ``ref``) and the
    lines of every order they name (``orderid``), in bulk."""
    skus: set[str] = set()
    refs: set[str] = set()
    orders: set[str] = set()
    for message in messages:
        for name, into in (("sku", skus), ("ref", refs), ("orderid", orders)):
            value = getattr(message, name, None)
            if isinstance(value, str):
                into.add(value)
    if skus or refs:
        with uow.reading_ahead():  # one round trip
            uow.products.preload(skus, refs, orders)


def _failure(
    uow: AbstractUnitOfWork, index: int, change: LegacyChange, error: Exception
) -> Exception:
    """The change's fault, or the database's (raised as it is, to be retried)."""
    return error if uow.is_transient(error) else ChangeFailed(index, change, error)
