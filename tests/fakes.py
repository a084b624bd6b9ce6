"""In-memory fakes of the new domain's ports, for specs of the handlers and of ingestion.

As in *Architecture Patterns with Python*: the service layer is tested through the
real message bus with these fakes, which only the tests use. Each keeps what was
written in plain dicts and lists that the tests read.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from new_domain.adapters.allocations_view import AbstractAllocationsView, Row
from new_domain.adapters.anomalies import AbstractAnomalyLog, Anomaly
from new_domain.adapters.database import describe_error
from new_domain.adapters.lag import AbstractProgress
from new_domain.adapters.outbox import AbstractOutbox
from new_domain.adapters.ownership import Lock
from new_domain.adapters.ownership_records import (
    AbstractWriteOwnership,
    EchoAnomaly,
    OwnershipViolation,
)
from new_domain.adapters.repository import AbstractRepository
from new_domain.domain.model import Product
from new_domain.domain.ownership import Ownership, OwnershipRule, State
from new_domain.ingest.ports import (
    DEAD,
    LOADING,
    RESOLVED,
    RETRYING,
    AbstractChangePositions,
    AbstractDeadLetters,
    AbstractDecisionLog,
    AbstractLegacyKeys,
    DeadLetter,
    FailedMessage,
    LegacyAllocation,
    LegacyLine,
    LegacyLot,
    Verdict,
    stream_of,
)
from new_domain.service_layer.unit_of_work import AbstractUnitOfWork


class InMemoryRepository(AbstractRepository):
    """Products in a dict."""

    def __init__(self, products: dict[str, Product] | None = None) -> None:
        super().__init__()
        self.products = products if products is not None else {}

    def _add(self, product: Product) -> None:
        self.products[product.sku] = product

    def _get(self, sku: str) -> Product | None:
        return self.products.get(sku)

    def _get_by_batchref(self, batchref: str) -> Product | None:
        return next((p for p in self.products.values() if p.batch(batchref) is not None), None)


class InMemoryAllocationsView(AbstractAllocationsView):
    def __init__(self) -> None:
        self.rows: set[tuple[str, str, str]] = set()

    def add(self, orderid: str, sku: str, batchref: str) -> None:
        self.rows.add((orderid, sku, batchref))

    def remove(self, orderid: str, sku: str, batchref: str) -> None:
        self.rows.discard((orderid, sku, batchref))

    def rows_for(self, orderid: str) -> list[Row]:
        return sorted((sku, ref) for order, sku, ref in self.rows if order == orderid)


class InMemoryAnomalyLog(AbstractAnomalyLog):
    def __init__(self) -> None:
        self.anomalies: list[Anomaly] = []

    def _add(self, anomaly: Anomaly) -> None:
        self.anomalies.append(anomaly)

    def recorded(self) -> list[Anomaly]:
        return list(self.anomalies)


class InMemoryOutbox(AbstractOutbox):
    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def _add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)


class InMemoryProgress(AbstractProgress):
    """Observations stay in ``seen``."""


class InMemoryLegacyKeys(AbstractLegacyKeys):
    def __init__(self) -> None:
        self.products: dict[int, str] = {}
        self.lots: dict[int, LegacyLot] = {}
        self.lines: dict[int, LegacyLine] = {}
        self.allocations: dict[int, LegacyAllocation] = {}

    def product_sku(self, prod_id: int) -> str | None:
        return self.products.get(prod_id)

    def remember_product(self, prod_id: int, sku: str) -> None:
        self.products[prod_id] = sku

    def lot(self, lot_id: int) -> LegacyLot | None:
        return self.lots.get(lot_id)

    def remember_lot(self, lot_id: int, lot: LegacyLot) -> None:
        self.lots[lot_id] = lot

    def line(self, line_id: int) -> LegacyLine | None:
        return self.lines.get(line_id)

    def remember_line(self, line_id: int, line: LegacyLine) -> None:
        self.lines[line_id] = line

    def forget_line(self, line_id: int) -> None:
        self.lines.pop(line_id, None)

    def allocation(self, alloc_id: int) -> LegacyAllocation | None:
        return self.allocations.get(alloc_id)

    def remember_allocation(self, alloc_id: int, allocation: LegacyAllocation) -> None:
        self.allocations[alloc_id] = allocation

    def forget_allocation(self, alloc_id: int) -> None:
        self.allocations.pop(alloc_id, None)


class InMemoryChangePositions(AbstractChangePositions):
    def __init__(self) -> None:
        self.positions: dict[str, int] = {}
        self.states: dict[str, str] = {}
        self.echoes: dict[str, str] = {}

    def echo(self, stream: str) -> str | None:
        return self.echoes.get(stream)

    def set_echo(self, stream: str, transaction_id: str | None) -> None:
        if transaction_id is None:
            self.echoes.pop(stream, None)
        else:
            self.echoes[stream] = transaction_id

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
            if state == LOADING and stream_of(stream, source):
                del self.states[stream]


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
        self,
        message: FailedMessage,
        error: BaseException,
        *,
        dead: bool = False,
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


class InMemoryDecisionLog(AbstractDecisionLog):
    def __init__(self) -> None:
        self.verdicts: list[Verdict] = []
        self.journal: list[tuple[Verdict, str]] = []
        self.unclassified_count = 0

    def record(self, verdict: Verdict, change_id: str | None, journal: str | None = None) -> None:
        self.verdicts.append(verdict)
        if journal is not None:
            self.journal.append((verdict, journal))

    def unclassified(self) -> None:
        self.unclassified_count += 1


class InMemoryOwnership(AbstractWriteOwnership):
    """Each group's ownership in ``ownerships`` (a group never moved is legacy's; set an
    entry to move a group); every read, with the lock it asked for, goes to the unit of
    work's ``log``; what was recorded in ``violations`` and ``echo_anomalies``."""

    def __init__(self, log: list[str]) -> None:
        self.ownerships: dict[str, Ownership] = {}
        self.violations: list[OwnershipViolation] = []
        self.echo_anomalies: list[EchoAnomaly] = []
        self.fences: dict[tuple[str, int], set[str]] = {}  # (group, epoch) -> shard streams
        self.log = log

    def read(self, group: str, *, lock: Lock = None) -> Ownership:
        self.log.append(f"read ownership of {group}" + (f" for {lock}" if lock else ""))
        return self.ownerships.get(group, Ownership(group))

    def set(self, ownership: Ownership) -> None:
        self.ownerships[ownership.group] = ownership

    def give(self, group: str, rule: str) -> None:
        """``group`` settled (active) under ``rule``."""
        self.set(Ownership(group, OwnershipRule.parse(rule), epoch=1))

    def settle(self, group: str, epoch: int, shard: tuple[str, int] | None = None) -> bool:
        if shard is not None:
            self.fences.setdefault((group, epoch), set()).add(shard[0])
            if len(self.fences[(group, epoch)]) < shard[1]:
                return False
        current = self.ownerships.get(group, Ownership(group))
        if current.epoch != epoch or current.state is not State.MOVING:
            return False
        self.ownerships[group] = replace(current, state=State.ACTIVE, previous_rule=None)
        return True

    def record_violation(self, violation: OwnershipViolation) -> None:
        self.violations.append(violation)

    def record_echo_anomaly(self, anomaly: EchoAnomaly) -> None:
        self.echo_anomalies.append(anomaly)


class InMemoryUnitOfWork(AbstractUnitOfWork):
    """Dict-backed repositories; not transactional. ``commits`` counts real (outermost)
    commits; ``log`` records each transaction's begin, commit and end, and the
    ownership reads between them."""

    def __init__(self) -> None:
        self.log: list[str] = []
        self.ownership = InMemoryOwnership(self.log)
        self.stored_products: dict[str, Product] = {}
        self.allocations_view = InMemoryAllocationsView()
        self.legacy_keys = InMemoryLegacyKeys()
        self.positions = InMemoryChangePositions()
        self.anomalies = InMemoryAnomalyLog()
        self.dead_letters = InMemoryDeadLetters()
        self.outbox = InMemoryOutbox()
        self.progress = InMemoryProgress()
        self.decisions = InMemoryDecisionLog()
        self.products = InMemoryRepository(self.stored_products)
        self.commits = 0

    def _begin(self) -> None:
        self.log.append("begin")
        self.products = InMemoryRepository(self.stored_products)

    def _commit(self) -> None:
        self.log.append("commit")
        self.commits += 1

    def _rollback(self) -> None:
        pass  # __exit__ rolls back after every transaction; nothing to undo here

    def _end(self) -> None:
        self.log.append("end")

    def close(self) -> None:
        pass
